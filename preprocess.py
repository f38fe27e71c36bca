"""Step 2: normalise every collected photo into data/processed/<index>/ (64x64 RGB PNG) and its manifest.

    python preprocess.py                                  # data/raw -> data/processed, 64x64, squash
    python preprocess.py --data /tmp/real/data --places ../shared/datasets/indian_monuments/places.xlsx
    python preprocess.py --resize-mode crop --keep-rejected

Only new or changed photos are decoded; a new --size or --resize-mode redoes them all. Bad files are moved to
data/rejected/<reason>/ and listed in data/rejected.csv; exact and near-duplicates are kept once per place; a
photo found under two places is rejected as `conflict`. Prints a table per place. Exit 2 for bad input.
"""
import logging

from tqdm.contrib.logging import logging_redirect_tqdm

from locator.core import config, places
from locator.core.cli import ArgumentParser, add_data_flags, run, setup_logging
from locator.core.tables import format_table
from locator.data import preprocess

log = logging.getLogger("preprocess")


def parse_args(argv=None):
    ap = ArgumentParser(description="Normalise data/raw/<index>/ photos into data/processed/<index>/*.png.")
    ap.add_argument("--size", type=int, default=config.SIZE, help="output side in pixels (default %(default)s)")
    ap.add_argument("--resize-mode", choices=config.RESIZE_MODES, default=config.RESIZE_MODE,
                    help="squash: plain resize; crop: centre square; pad: fit and pad (default %(default)s)")
    ap.add_argument("--min-side", type=int, default=config.MIN_SIDE,
                    help="reject photos whose shortest side is under this (default %(default)s)")
    ap.add_argument("--max-pixels", type=int, default=config.MAX_PIXELS,
                    help="reject photos over this many pixels: decompression bombs (default %(default)s)")
    ap.add_argument("--near-dup-distance", type=int, default=config.NEAR_DUP_DISTANCE,
                    help="perceptual-hash bits within which two photos are the same (default %(default)s)")
    ap.add_argument("--keep-rejected", action="store_true",
                    help="only list rejected files in data/rejected.csv; leave them where they are")
    ap.add_argument("--workers", type=int, default=config.PREPROCESS_WORKERS,
                    help="decoding processes; 0 = one per core (default %(default)s)")
    add_data_flags(ap)
    a = ap.parse_args(argv)
    if not 8 <= a.size <= 1024:
        ap.error("--size must be between 8 and 1024")
    if a.min_side < 1 or a.max_pixels < 1 or a.workers < 0:
        ap.error("--min-side and --max-pixels must be at least 1, --workers at least 0")
    if not 0 <= a.near_dup_distance <= 32:
        ap.error("--near-dup-distance must be between 0 and 32 (of 64 bits)")
    return a


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    table = places.load(args.places)
    opt = preprocess.Options(size=args.size, mode=args.resize_mode, min_side=args.min_side,
                                max_pixels=args.max_pixels, near=args.near_dup_distance,
                                keep_rejected=args.keep_rejected, workers=args.workers,
                                progress=not args.no_progress)
    with logging_redirect_tqdm():
        summary = preprocess.run(args.data, table, opt)
    print(format_table(*preprocess.table_rows(summary, table)))
    if not summary.changed:
        log.info("nothing to do: %s is up to date", config.processed_dir(args.data))
    return 0


if __name__ == "__main__":
    run(main)
