"""Step 5: tell where the photos in test_image/ were taken: place, confidence, top 3, location, nearby attractions.

    python predict.py                                # test_image/ (recursively) with models/current
    python predict.py photos/ --model models/runs/20261126-203211 --csv out.csv --json out.json
    python predict.py --format tfserving             # {"predictions": [[p0, p1, ...], ...]} on stdout
    python predict.py --learn                        # keep accepted photos for re-training, others for review
    python predict.py labelled/ --eval               # subfolders named 00, 0a or n_seoul_tower: accuracy, P/R
"""
import json
import logging
import sys
from pathlib import Path

from locator.core import config, places
from locator.core.cli import ArgumentParser, add_data_flags, add_models_flag, run, setup_logging
from locator.core.errors import UserError
from locator.core.fsio import now_iso
from locator.predict import learn, outputs, scan
from locator.runs import runs

log = logging.getLogger("predict")


def parse_args(argv=None):
    ap = ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", nargs="?", type=Path, default=config.TEST_IMAGE,
                    help="photos to predict, searched recursively (default %(default)s)")
    ap.add_argument("--model", help="a model run folder (or its model.h5); default: models/current")
    add_models_flag(ap)
    add_data_flags(ap)
    ap.add_argument("--threshold", type=float, help="accept a place from this confidence on, else 'unknown' "
                    "(default: the threshold calibrated into the model's metadata.json)")
    ap.add_argument("--format", choices=("table", "tfserving"), default="table",
                    help="stdout: a readable table, or TensorFlow Serving's {\"predictions\": [...]} JSON")
    ap.add_argument("--csv", type=Path, metavar="FILE", help="write one CSV row a photo")
    ap.add_argument("--json", type=Path, metavar="FILE", help="write every answer as JSON")
    ap.add_argument("--sheet", type=Path, metavar="FILE.png",
                    help="contact sheet (default: beside --json/--csv, else <folder>_results.png beside the folder)")
    ap.add_argument("--no-sheet", action="store_true", help="no contact sheet")
    ap.add_argument("--eval", action="store_true", help="insist on evaluation mode (it is on by itself when photos "
                    "sit in subfolders named by a place index, its first query term or 'unknown')")
    ap.add_argument("--learn", action="store_true", help="copy accepted photos into data/raw/<index>/, the others "
                    "into data/review/; pick up photos a person filed under data/review/<index>/")
    ap.add_argument("--learn-min-confidence", type=float, default=config.LEARN_MIN_CONFIDENCE,
                    help="--learn: an accepted photo goes into data/raw/ only from this confidence on, else to "
                         "data/review/ (default %(default)g)")
    ap.add_argument("--nearby", type=int, default=config.NEARBY, help="attractions per place (default %(default)s)")
    ap.add_argument("--nearby-km", type=float, default=config.NEARBY_KM,
                    help="only attractions within this many km are nearby (default %(default)s)")
    ap.add_argument("--batch", type=int, default=config.PREDICT_BATCH, help="photos per model call")
    ap.add_argument("--workers", type=int, default=config.PREDICT_WORKERS, help="decoding threads (0 = per core)")
    a = ap.parse_args(argv)
    if a.threshold is not None and not 0 <= a.threshold <= 1:
        ap.error(f"--threshold {a.threshold:g}: a confidence between 0 and 1")
    if a.batch < 1 or a.workers < 0 or a.nearby < 0 or a.nearby_km <= 0:
        ap.error("--batch must be at least 1, --workers and --nearby at least 0, --nearby-km positive")
    if a.sheet and a.sheet.suffix.lower() != ".png":
        ap.error(f"--sheet {a.sheet}: the contact sheet is a PNG; name it *.png")
    return a


def output_base(a) -> Path:
    """Where the pictures go by default: beside the JSON/CSV results, else beside the photo folder (never inside
    it: the next run would take them for photos)."""
    if a.json or a.csv:
        return (a.json or a.csv).with_suffix("")
    folder = a.folder if a.folder.name else a.folder.resolve()
    return folder.parent / (folder.name + config.RESULTS_SUFFIX)


def empty_folder(a, table):
    """The folder to predict is empty (test_image/ of a fresh clone): (test-split photos to show what predict.py
    does, what to put where), or None once it has said what to put where (no dataset or no model yet)."""
    where = (f"put the photos to locate into {a.folder}/ (JPEG, PNG, WebP, ...; subfolders are searched too, and "
             f"one named by a place index, e.g. {a.folder}/{table.places[0].index}/, scores the answers), then run "
             "predict.py again")
    photos = scan.demo_photos(a.data, table)
    try:
        runs.resolve(a.models, a.model)
        missing = "" if photos else f"no test split in {config.dataset_dir(a.data)} to show predict.py on"
    except UserError as e:
        missing = str(e)
    if missing:
        log.info("nothing to do: %s holds no photos; %s (%s)", a.folder, where, missing)
        return None
    return photos, where


def report_evaluation(metrics, res, predictor, path, out) -> None:
    from locator.core.metrics import summary_table
    from locator.train.evaluate import plot_confusion

    if "per_place" in metrics:
        print("\n" + summary_table(metrics), file=out)
        print(f"at threshold {predictor.threshold:.3f}: {metrics['true_accept']:.1%} of these photos accepted, "
              f"{metrics['accepted_correct']:.1%} accepted as the right place", file=out)
        plot_confusion(metrics["confusion"]["matrix"], metrics["confusion"]["labels"], path,
                       title=f"Confusion matrix ({len(res)} photos, top 1)")
        log.info("confusion matrix: %s", path)
    if metrics["false_accept"] is not None:
        print(f"{config.UNKNOWN_FOLDER}/: {metrics['unknown_photos']} photos of none of our places, "
              f"{metrics['false_accept']:.1%} accepted as a place (false accept)", file=out)


def main(argv=None):
    a = parse_args(argv)
    setup_logging(a.verbose)
    table = places.load(a.places)
    photos = scan.find_photos(a.folder)
    labelled = scan.label_photos(photos, table)
    if a.eval and not labelled:
        raise UserError(f"--eval: no photo of {a.folder} is in a subfolder named by a place index (e.g. "
                        f"{table.places[0].index}) or first query term (e.g. {table.places[0].folder}) or "
                        f"{config.UNKNOWN_FOLDER}")
    if labelled:
        log.info("evaluation mode: %d of %d photos labelled by their subfolder (the others are predicted, not "
                 "scored)", labelled, len(photos))
    review = learn.reviewed(a.data, table) if a.learn else []
    out = sys.stderr if a.format == "tfserving" else sys.stdout
    demo = None
    if not photos and not review:
        shown = empty_folder(a, table)
        if shown is None:
            return 0
        photos, demo = shown
        print(f"DEMO: {a.folder} is empty, so here is what predict.py does on {len(photos)} photos of the test "
              f"split ({config.DEMO_PER_PLACE} a place, from {config.dataset_dir(a.data)}): photos the model was "
              f"tested on, not yours.\n", file=out)
    run_dir = runs.resolve(a.models, a.model)
    runs.env_threads()
    from locator.predict.predictor import Predictor  # TensorFlow loads here, once the cheap checks have passed

    predictor = Predictor.load(run_dir, table, a.threshold)
    predictor.nearby_km = a.nearby_km
    log.info("model %s (%d places%s), threshold %.3f; %d photos in %s", run_dir, predictor.classes,
             " + background" if predictor.meta.get("background") else "", predictor.threshold, len(photos), a.folder)
    base = output_base(a)
    if demo:  # its own name: a demonstration's sheet is never taken for results of the user's photos
        base = base.with_name(base.name.replace(config.RESULTS_SUFFIX, "") + config.DEMO_SUFFIX)
    sheet = None if a.no_sheet else (a.sheet or base.with_suffix(".png"))

    def predict(items):
        return list(scan.predict_photos(predictor, items, a.batch, a.workers, not a.no_progress,
                                             config.SHEET_MAX if sheet else 0, a.nearby))

    res = predict(photos)
    if a.format == "tfserving":
        print(json.dumps(outputs.tfserving(res)))
        for r in res:
            if not r.ok:
                log.warning("%s: unreadable (%s: %s)", r.photo.name, r.reason, r.detail)
    elif res:
        print(outputs.table_text(res))
        where = outputs.places_text(res, a.nearby_km if a.nearby else None)
        print("\n" + where if where else "")
    if res:
        print(outputs.summary_line(res, predictor.threshold, run_dir.name), file=out)
    if demo:
        right = sum(r.ok and r.answer["index"] == r.photo.label for r in res)
        print(f"DEMO: {right} of {len(res)} test-split photos placed at the place they show; now {demo}", file=out)

    metrics = scan.evaluate(res, table) if labelled else None
    if metrics:
        report_evaluation(metrics, res, predictor, Path(str(output_base(a)) + "_confusion.png"), out)
    header = {"folder": str(a.folder), "model": run_dir.name, "threshold": predictor.threshold,
              "background": bool(predictor.meta.get("background")), "created": now_iso(),
              **({"demo": "test-split photos: the folder was empty"} if demo else {})}
    if a.json:
        outputs.write_json(a.json, res, header, metrics)
    if a.csv:
        outputs.write_csv(a.csv, res)
    if sheet and res:
        title = f"{a.folder}: model {run_dir.name}, threshold {predictor.threshold:.3f}"
        n = outputs.contact_sheet(res, sheet, f"DEMO on test-split photos ({a.folder} is empty): {title}"
                                  if demo else title)
        log.info("contact sheet (%d photos): %s", n, sheet)

    if a.learn and not demo:  # test-split photos are in data/raw already
        outcomes = learn.learn_results(a.data, res, a.learn_min_confidence)
        if review:  # a person's labels: predicted only to record what the model said about them
            outcomes += learn.learn_results(a.data, predict(review), a.learn_min_confidence)
        print(learn.summary(outcomes, len(review)), file=out)
    return 1 if res and not any(r.ok for r in res) else 0


if __name__ == "__main__":
    run(main)
