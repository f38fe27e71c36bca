"""Step 3: pack data/processed/ into data/dataset/ (x/y/files per split, classes.json, summary.json).

    python dataset.py                                     # 80/10/10 by a hash of each near-duplicate group
    python dataset.py --data /tmp/real/data --places ../shared/datasets/indian_monuments/places.xlsx
    python dataset.py --min-per-class 20                  # leave out (with a warning) places under 20 photos

The folder is written beside data/dataset and swapped in whole. Splits are stable as photos are added and no
near-duplicate group is in two splits (docs/dataset.md). The background sheet's photos (data/processed/background/)
and data/negatives/ are packed as xneg_<split>.npy ("none of our places") with each row's kind; photos labelled by
a model (--learn) go to train only. Prints photos per place per split. Exit 2 for bad input, such as a place too
small to appear in every split.
"""
import logging
from pathlib import Path

from tqdm.contrib.logging import logging_redirect_tqdm

from locator.core import config, places
from locator.core.cli import ArgumentParser, add_data_flags, at_least, run, setup_logging
from locator.core.errors import UserError
from locator.core.tables import format_table
from locator.data import dataset

log = logging.getLogger("dataset")


def parse_args(argv=None):
    ap = ArgumentParser(description="Pack data/processed/ into data/dataset/ with stable train/val/test splits.")
    ap.add_argument("--split", default="/".join(f"{round(s * 100):g}" for s in config.SPLIT),
                    help="train/val/test shares (default %(default)s)")
    ap.add_argument("--min-per-class", type=int, metavar="N",
                    help="leave out, with a warning, places with fewer than N photos or too few for every split "
                         "(default: such a place is an error)")
    ap.add_argument("--seed", type=int, default=config.SPLIT_SEED,
                    help="salt of the split hash; another seed gives other splits (default %(default)s)")
    ap.add_argument("--negatives", type=Path, default=None,
                    help="folder of everyday photos showing none of the places, for the model's background class "
                         "(default: DATA/negatives if it exists)")
    add_data_flags(ap)
    a = ap.parse_args(argv)
    try:
        a.split = dataset.parse_split(a.split)  # the shares (train, val, test)
    except UserError as e:
        ap.error(str(e))
    at_least(ap, a, 1, "min_per_class")
    return a


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    table = places.load(args.places)
    negatives = args.negatives
    if negatives is None and config.negatives_dir(args.data).is_dir():
        negatives = config.negatives_dir(args.data)
    with logging_redirect_tqdm():
        plan = dataset.build(args.data, table, args.split, args.seed, args.min_per_class, progress=not args.no_progress,
                             negatives=negatives)
    print(format_table(*dataset.count_rows(plan, table)))
    for kind, n in dataset.background_counts(plan).items():
        if sum(n.values()):
            print(f"none of our places, {kind}: " + ", ".join(f"{s} {n[s]}" for s in dataset.SPLITS))
    if plan.model_labelled:
        print(f"{plan.model_labelled} photo(s) labelled by a model (--learn) are in train only")
    dest = config.dataset_dir(args.data)
    if plan.up_to_date:
        log.info("nothing to do: %s is up to date (fingerprint %s)", dest, plan.fingerprint)
    else:
        log.info("wrote %s (%dx%d, %s; fingerprint %s)", dest, plan.size, plan.size, plan.mode, plan.fingerprint)
    return 0


if __name__ == "__main__":
    run(main)
