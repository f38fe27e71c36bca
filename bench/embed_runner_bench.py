"""The embedding step's two runners on the same photos: photos/s of the local runner (threads, cnn.py's default) and
of Ray's local cluster on this machine (cnn.py --runner ray), side by side as a ratio: Ray's overhead on one machine.

    python bench/embed_runner_bench.py                                   # 300 generated 640x480 photos
    python bench/embed_runner_bench.py --photos /work/real/data/raw      # 300 real photos (every k-th, sorted)
    python bench/embed_runner_bench.py --backbone efficientnet_lite0 --limit 100

Each run decodes + embeds every photo (and its mirror image) into an empty cache, as a first cnn.py does: the
runner's whole wall time, Ray's workers starting (each loads TensorFlow and the TF Lite file) included; the TF Lite
conversion is done once before and copied in, and `ray.init` (a cluster is started once, not per step) is timed on
its own line. The last row takes out Ray's fixed cost, measured by a run of one photo a worker before (workers
starting, one batch each): what a long run on a warm cluster approaches. "per worker" is photos/s divided by the
runner's workers: what each CPU of a cluster adds.
Needs the Ray extra (pip install -r requirements-ray.txt). The CPU and the load average are printed above the
table: on a shared machine, read only large ratios.
"""
import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from locator.core import config, cpu  # noqa: E402
from locator.core.tables import format_table  # noqa: E402
from locator.train import embed  # noqa: E402

SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


def generated(folder: Path, n: int) -> list:
    """n photo-sized JPEGs (640x480): smooth random colour fields with some noise, a different one per seed."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        rng = np.random.default_rng(i)
        grid = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8), "RGB")
        img = np.asarray(grid.resize((640, 480), Image.Resampling.BICUBIC), np.int16)
        img = np.clip(img + rng.integers(-12, 13, img.shape), 0, 255).astype(np.uint8)
        path = folder / f"{i:04d}.jpg"
        Image.fromarray(img).save(path, quality=90)
        out.append(path)
    return out


def real(folder: Path, n: int) -> list:
    """n photo files under folder, spread over it: every k-th of the sorted list."""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file())
    if not files:
        sys.exit(f"error: --photos {folder}: no photo files there")
    return files[::max(1, len(files) // n)][:n]


def fresh(root: Path, name: str, tflite: Path, embedder) -> Path:
    """An empty data root holding only the backbone's TF Lite file (converted once, before any timing)."""
    data = root / name
    target = embedder.folder(data) / "backbone.tflite"
    target.parent.mkdir(parents=True)
    shutil.copy(tflite, target)
    return data


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=Path, help="a folder of photos (searched recursively); default: generated")
    ap.add_argument("--limit", type=int, default=300, help="photos to embed (default %(default)s)")
    ap.add_argument("--backbone", default=config.EMBED_BACKBONES[0], help="default %(default)s (cnn.py's)")
    ap.add_argument("--size", type=int, help="input side (default: the backbone's)")
    ap.add_argument("--workers", type=int, help="Ray workers (default: one per CPU, as cnn.py --runner ray)")
    a = ap.parse_args(argv)
    import ray

    from locator.train import raydist

    with tempfile.TemporaryDirectory(prefix="embed-runner-bench-") as tmp:
        tmp = Path(tmp)
        files = real(a.photos, a.limit) if a.photos else generated(tmp / "photos", a.limit)
        what = f"{len(files)} photos from {a.photos}" if a.photos else f"{len(files)} generated 640x480 photos"
        embedder = embed.Embedder(a.backbone, size=a.size)
        tflite = embedder.tflite(tmp / "convert")
        load = [os.getloadavg()[0]]
        rows = []

        data = fresh(tmp, "local", tflite, embedder)
        started = time.perf_counter()
        embed.embed(files, data, embed.Embedder(a.backbone, size=a.size), batch=config.EMBED_BATCH, progress=False)
        local = time.perf_counter() - started
        rows.append(["local (threads)", os.cpu_count(), round(local, 1), round(len(files) / local, 1)])

        started = time.perf_counter()
        raydist.loopback()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="WARNING")
        ray_init = time.perf_counter() - started
        workers = raydist.workers_for(len(files), config.EMBED_BATCH, a.workers)
        data = fresh(tmp, "ray-start", tflite, embedder)
        started = time.perf_counter()
        raydist.fill(files[:workers], data, embed.Embedder(a.backbone, size=a.size), workers, batch=1,
                     progress=False)
        fixed = time.perf_counter() - started
        data = fresh(tmp, "ray", tflite, embedder)
        started = time.perf_counter()
        raydist.fill(files, data, embed.Embedder(a.backbone, size=a.size), workers, progress=False)
        seconds = time.perf_counter() - started
        ray.shutdown()
        rows.append(["ray local cluster", workers, round(seconds, 1), round(len(files) / seconds, 1)])
        rows.append([f"ray, less its {fixed:.1f} s start-up", workers, round(seconds - fixed, 1),
                     round(len(files) / max(seconds - fixed, 1e-9), 1)])
        load.append(os.getloadavg()[0])

    print(f"CPU: {cpu.cpu_model()} ({os.cpu_count()} cores); load average {load[0]:.2f} at the start, "
          f"{load[1]:.2f} at the end")
    print(f"{what}, {embedder.name} at {embedder.size} px, 2 views a photo, batches of {config.EMBED_BATCH}; "
          f"ray.init took {ray_init:.1f} s (not in the table)")
    print(format_table(["runner", "workers", "seconds", "photos/s", "per worker", "/ local"],
                       [r + [round(r[3] / r[1], 1), f"{r[3] / rows[0][3]:.2f}"] for r in rows]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
