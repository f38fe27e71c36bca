"""preprocess.py's machinery against a naive loop, side by side on the real photos of ../shared/datasets.

    .venv/bin/python bench/preprocess_bench.py                       # indian_monuments, 2 rounds
    .venv/bin/python bench/preprocess_bench.py --per-place 20 --rounds 1   # a quick look

The photos are copied into a temporary data/raw/<index>/ layout under /tmp (in the order of the shared
places.xlsx; never into the repo). Naive: open, convert to RGB, resize to 64x64, save a PNG, one process.
Ours: preprocess.run (process pool, JPEG draft decoding, hashing, duplicate groups, manifest), from an empty
data/processed each round. The rounds alternate so that a busy machine slows both alike; the best round counts.
"CPU ms/photo" (this process and its workers) shows the work done whatever else the machine is running; the
wall-clock ratio also depends on how many cores are free.
"""
import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from PIL import Image  # noqa: E402

from locator.core import config, images, places  # noqa: E402
from locator.core.tables import format_table  # noqa: E402
from locator.crawl.rawstore import RawFolder  # noqa: E402
from locator.data import preprocess

SHARED = REPO.parent / "shared" / "datasets" / "indian_monuments"


def build_raw(photos: Path, table, data: Path, per_place: int | None) -> list:
    """Copy each place's photos into data/raw/<index>/ through RawFolder (manifests as crawl.py writes them)."""
    files = []
    for place in table:
        src = photos / place.folder
        for path in sorted(src.iterdir())[:per_place] if src.is_dir() else []:
            blob = path.read_bytes()
            ext = images.sniff(blob[:16])
            if ext is None:
                continue
            with Image.open(path) as im:
                w, h = im.size
            rec = RawFolder(data / "raw" / place.index).add(blob, ext, w, h, source="folder", url=path.as_uri())
            if rec:
                files.append(data / "raw" / place.index / rec["file"])
    return files


def naive(files, out: Path, size: int) -> int:
    """What a first script would do: one process, full decode, default resize and PNG settings."""
    done = 0
    for path in files:
        dest = out / path.parent.name / (path.stem + ".png")
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            Image.open(path).convert("RGB").resize((size, size)).save(dest)
            done += 1
        except OSError:
            pass
    return done


def cpu() -> float:
    """CPU seconds of this process and of its reaped children (the pool's workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=Path, default=SHARED / "photos")
    ap.add_argument("--places", type=Path, default=SHARED / "places.xlsx")
    ap.add_argument("--per-place", type=int, help="only the first N photos of each place")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workers", type=int, default=config.PREPROCESS_WORKERS)
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args()
    table = places.load(args.places)
    tmp = Path(tempfile.mkdtemp(prefix="preprocess-bench-"))
    try:
        data = tmp / "data"
        files = build_raw(args.photos, table, data, args.per_place)
        for f in files:  # warm the page cache: both sides read from memory
            f.read_bytes()
        n = len(files)
        opt = preprocess.Options(workers=args.workers, progress=False)
        best = {"naive": float("inf"), "ours": float("inf")}
        cpus = {"naive": float("inf"), "ours": float("inf")}
        for _ in range(args.rounds):
            shutil.rmtree(tmp / "naive", ignore_errors=True)
            t, c = time.perf_counter(), cpu()
            naive(files, tmp / "naive", config.SIZE)
            best["naive"] = min(best["naive"], time.perf_counter() - t)
            cpus["naive"] = min(cpus["naive"], cpu() - c)
            for p in (config.processed_dir(data), data / "rejected", data / "rejected.csv"):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            t, c = time.perf_counter(), cpu()
            s = preprocess.run(data, table, opt)
            best["ours"] = min(best["ours"], time.perf_counter() - t)
            cpus["ours"] = min(cpus["ours"], cpu() - c)
            assert sum(s.new.values()) == n, "every photo must be processed in a cold run"
        t, c = time.perf_counter(), cpu()
        s = preprocess.run(data, table, opt)
        rerun = time.perf_counter() - t
        cpus["rerun"] = cpu() - c
        assert sum(s.new.values()) == 0
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    workers = args.workers or len(os.sched_getaffinity(0))
    rows = [["naive loop (1 process, full decode)", n, best["naive"], cpus["naive"], 1.0],
            [f"preprocess.py ({workers} workers, draft)", n, best["ours"], cpus["ours"], best["naive"] / best["ours"]],
            ["preprocess.py re-run, nothing new", n, rerun, cpus["rerun"], best["naive"] / rerun]]
    print(f"{n} photos, {config.SIZE}x{config.SIZE}, best of {args.rounds} round(s); "
          f"{len(os.sched_getaffinity(0))} cores, load average {os.getloadavg()[0]:.2f}")
    print(format_table(["method", "photos", "seconds", "photos/s", "x naive", "CPU ms/photo"],
                       [[m, k, f"{sec:.2f}", f"{k / sec:.0f}", f"{x:.2f}", f"{c / k * 1000:.2f}"]
                        for m, k, sec, c, x in rows]))


if __name__ == "__main__":
    main()
