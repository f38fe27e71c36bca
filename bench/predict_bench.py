"""predict.py's machinery against a naive loop: photos per second on a folder of real photos, end to end.

    .venv/bin/python bench/predict_bench.py                          # 500 shared photos, a quick model trained here
    .venv/bin/python bench/predict_bench.py --model current          # models/current (or --model RUN)

The photos are copied (round robin over the places of ../shared/datasets/indian_monuments) into a folder under
/tmp, never into the repo. The model is --model if given, else a small compact net trained here for a couple of
epochs on other photos of the same places: this measures speed, not accuracy, but the net has the real
architecture and input size, so a call costs what it costs in use.
Naive: load the model, then for each photo open it, convert, resize to the input size and model.predict() it
alone. Ours: scan.predict_photos (threads decode the next batch while the model predicts this one, JPEG
draft decoding, whole batches per model call) with every place answer built. predict.py end to end adds reading
the table, loading the model and writing the table, CSV, JSON and the contact sheet. Both loops get one warm-up
call first, so the first call's tracing counts for neither.
"""
import argparse
import contextlib
import io
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from locator.core import config, images, places  # noqa: E402
from locator.core.tables import format_table  # noqa: E402
from locator.runs import runs

SHARED = REPO.parent / "shared" / "datasets" / "indian_monuments"


def pick(photos: Path, table, count: int, skip: int = 0) -> list:
    """`count` photos taken round robin over the places (after each place's first `skip`): (path, place)."""
    lists = [[(p, place) for p in sorted((photos / place.folder).iterdir())[skip:]]
             for place in table if (photos / place.folder).is_dir()]
    out = []
    while len(out) < count and any(lists):
        for lst in lists:
            if lst and len(out) < count:
                out.append(lst.pop(0))
    return out


def copy_photos(chosen, folder: Path) -> list:
    if folder.exists():
        shutil.rmtree(folder)
    files = []
    for path, place in chosen:
        dest = folder / place.folder / path.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)
        files.append(dest)
    return sorted(files)


def quick_model(photos: Path, table, work: Path, per_place: int, epochs: int) -> Path:
    """A compact net at the real input size, trained briefly on the first photos of each place."""
    from locator.train import fit, quickrun

    x, y = [], []
    for place in table:
        for path in sorted((photos / place.folder).iterdir())[:per_place]:
            try:
                x.append(images.normalise(path, size=config.SIZE))
                y.append(place.cls)
            except images.ImageRejected:
                continue
    data = quickrun.data_from_arrays(np.stack(x), np.array(y), table.classes())
    s = fit.Settings(epochs=epochs, augment=0.0, jit=False)  # the default architecture and precision
    return quickrun.quick_run(work / "models", data, s)


def naive(model, files, size: int) -> list:
    """What a first script would do: one photo at a time, full decode, default resize, one model call each."""
    out = []
    for path in files:
        try:
            x = np.asarray(Image.open(path).convert("RGB").resize((size, size)), np.uint8)
        except OSError:
            out.append(None)
            continue
        out.append(int(model.predict(x[None], verbose=0)[0].argmax()))
    return out


def cpu() -> float:
    t = os.times()
    return t.user + t.system


def timed(fn):
    t0, c0 = time.perf_counter(), cpu()
    value = fn()
    return value, time.perf_counter() - t0, cpu() - c0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=Path, default=SHARED / "photos")
    ap.add_argument("--places", type=Path, default=SHARED / "places.xlsx")
    ap.add_argument("--count", type=int, default=500)
    ap.add_argument("--model", help="a model run, or 'current' (default: train a quick one here)")
    ap.add_argument("--epochs", type=int, default=2, help="epochs of the quick model")
    ap.add_argument("--batch", type=int, default=config.PREDICT_BATCH)
    ap.add_argument("--workers", type=int, default=config.PREDICT_WORKERS)
    ap.add_argument("--work", type=Path, default=Path("/tmp/predict_bench"))
    args = ap.parse_args()
    runs.env_threads()
    import logging

    logging.basicConfig(level=logging.WARNING)
    table = places.load(args.places)
    files = copy_photos(pick(args.photos, table, args.count, skip=10), args.work / "photos")
    if args.model:
        run = runs.resolve(config.MODELS, None if args.model == "current" else args.model)
        origin = f"model {run} (given)"
    elif (earlier := sorted((args.work / "models" / "runs").glob("*/metadata.json"))):
        run = earlier[-1].parent  # trained by an earlier run of this bench: no need to spend the CPU again
        origin = f"quick model {run.name} trained by an earlier run of this bench; speed only, not accuracy"
    else:
        t0 = time.perf_counter()
        run = quick_model(args.photos, table, args.work, per_place=10, epochs=args.epochs)
        origin = (f"model trained here: compact, {args.epochs} epochs on 10 other photos a place, "
                  f"{time.perf_counter() - t0:.0f} s; speed only, not accuracy")

    import keras

    import predict  # the script itself, for the end-to-end row
    from locator.predict import scan
    from locator.predict.predictor import Predictor

    predictor = Predictor.load(run, table, threshold=0.0)
    size = predictor.size
    model = keras.models.load_model(run / "model.h5", compile=False)  # the naive loop's own copy
    naive(model, files[:1], size)                                      # warm-up: first call traces
    predictor.probabilities(np.stack([predictor.pixels(files[0])] * 2))

    naive_pred, t_naive, c_naive = timed(lambda: naive(model, files, size))
    photos = scan.find_photos(args.work / "photos")  # the same files, in the same (sorted) order
    assert [p.path for p in photos] == files
    ours, t_ours, c_ours = timed(lambda: list(scan.predict_photos(
        predictor, photos, args.batch, args.workers, progress=False, nearby=config.NEARBY)))
    out = args.work / "results"
    argv = [str(args.work / "photos"), "--model", str(run), "--places", str(args.places), "--no-progress",
            "--threshold", "0", "--csv", str(out / "r.csv"), "--json", str(out / "r.json"),
            "--batch", str(args.batch), "--workers", str(args.workers)]
    with contextlib.redirect_stdout(io.StringIO()):
        _, t_e2e, c_e2e = timed(lambda: predict.main(argv))

    n = len(files)
    agree = np.mean([a == (r.answer and int(r.answer["top3"][0]["index"], 16)) for a, r in zip(naive_pred, ours)])
    rows = [["naive loop (model.predict one photo at a time)", n, round(t_naive, 2), round(n / t_naive), 1.0,
             round(1000 * c_naive / n, 1)],
            [f"predict machinery (batch {args.batch}, {args.workers or os.cpu_count()} decode threads)", n,
             round(t_ours, 2), round(n / t_ours), round(t_naive / t_ours, 2), round(1000 * c_ours / n, 1)],
            ["predict.py end to end (+model load, table, CSV, JSON, sheet)", n, round(t_e2e, 2), round(n / t_e2e),
             round(t_naive / t_e2e, 2), round(1000 * c_e2e / n, 1)]]
    print(f"{n} photos, {size}x{size}; {origin}; {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")
    print(format_table(["method", "photos", "seconds", "photos/s", "x naive", "CPU ms/photo"],
                       [[r[0], r[1], f"{r[2]:.2f}", r[3], f"{r[4]:.2f}", f"{r[5]:.1f}"] for r in rows]))
    print(f"same top-1 place as the naive loop for {agree:.1%} of the photos (it resizes from the full decode)")


if __name__ == "__main__":
    main()
