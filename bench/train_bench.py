"""Training speed of cnn.py's loop: img/s for paper and compact, float32 and mixed_bfloat16, with and without XLA.

    .venv/bin/python bench/train_bench.py                  # all 8 combinations: 23 minutes on 2 busy cores
    .venv/bin/python bench/train_bench.py --arch compact --epochs 1
    .venv/bin/python bench/train_bench.py --arch compact --augment 0   # compact as XLA can compile it

Each combination runs fit.train() exactly as cnn.py does (tf.data pipeline, in-model augmentation, validation,
checkpoints, TensorBoard logs) on synthetic uint8 photos the size of the real dataset (1800 train and 225
validation photos of 64x64, 23 places; speed does not depend on what the pixels show). The first epoch (tracing,
XLA compilation, the cache filling) is timed apart as warm-up; img/s = training photos per second over the
following epochs, validation included. The naive baseline is the study's set-up: paper net, float32, no XLA.
"XLA" says whether XLA really compiled the step: Keras silently turns jit_compile off for a model with a layer that
XLA cannot compile (the random zoom/translation/rotation of the augmentation).
One round, combinations in a row: on a shared machine, read the ratios with the load average printed above them.
"""
import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from locator.core import config  # noqa: E402
from locator.core.tables import format_table  # noqa: E402
from locator.train import fit


def synthetic(n_train: int, n_val: int, classes: int, size: int, seed: int = 0) -> fit.Data:
    rng = np.random.default_rng(seed)
    x = {s: rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8) for s, n in
         (("train", n_train), ("val", n_val), ("test", n_val))}
    y = {s: rng.integers(0, classes, len(x[s])).astype(np.int32) for s in x}
    names = [{"class": i, "index": f"{i:02x}", "name": f"Place {i}"} for i in range(classes)]
    return fit.Data(x, y, {s: [""] * len(x[s]) for s in x}, names, "synthetic", config.RESIZE_MODE)


def timer():
    import keras

    class EpochTimer(keras.callbacks.Callback):
        """Wall time of each epoch, and whether the compiled train step really uses XLA."""

        def on_train_begin(self, logs=None):
            self.seconds, self.xla = [], bool(self.model.jit_compile)

        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self.t0)

    return EpochTimer()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", choices=config.ARCHS, action="append", help="default: paper and compact")
    ap.add_argument("--train", type=int, default=1800, help="training photos (default %(default)s)")
    ap.add_argument("--val", type=int, default=225)
    ap.add_argument("--classes", type=int, default=23)
    ap.add_argument("--size", type=int, default=config.SIZE)
    ap.add_argument("--epochs", type=int, default=2, help="timed epochs after the warm-up one (default %(default)s)")
    ap.add_argument("--batch", type=int, default=config.TRAIN_BATCH)
    ap.add_argument("--augment", type=float, help="augmentation strength for both nets (default: cnn.py's, "
                    f"{config.AUGMENT:g} for compact, 0 for paper); 0 shows what XLA does for compact")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # retracing notices: each combination builds anew
    import warnings

    warnings.filterwarnings("ignore")  # Keras' jit and shuffle notices: the XLA column says what happened
    data = synthetic(args.train, args.val, args.classes, args.size)
    combos = [(arch, prec, jit) for arch in (args.arch or ["paper", "compact"])
              for prec in ("float32", "mixed_bfloat16") for jit in (False, True)]
    tmp = Path(tempfile.mkdtemp(prefix="train-bench-"))
    rows = []
    bar = tqdm(total=len(combos), unit="run")
    try:
        for i, (arch, prec, jit) in enumerate(combos):
            s = fit.Settings(arch=arch, epochs=1 + args.epochs, batch=args.batch, precision=prec, jit=jit,
                               augment=args.augment if args.augment is not None  # else cnn.py's per-arch default
                               else config.augment_for(arch))
            bar.set_description(f"{arch} {prec} jit {'on' if jit else 'off'}")
            t = timer()
            fit.train(data, tmp / f"run{i}", s, progress=False, callbacks=[t])
            timed = sum(t.seconds[1:])
            rows.append([arch, prec, "on" if jit else "off", "yes" if t.xla else "no", t.seconds[0],
                         timed / args.epochs, args.train * args.epochs / timed])
            bar.update()
    finally:
        bar.close()
        shutil.rmtree(tmp, ignore_errors=True)
    base = next((r[-1] for r in rows if r[:3] == ["paper", "float32", "off"]), rows[0][-1])
    print(f"{args.train} training photos of {args.size}x{args.size}, {args.classes} places, batch {args.batch}; "
          f"warm-up epoch + {args.epochs} timed; {len(os.sched_getaffinity(0))} cores, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(format_table(["arch", "precision", "jit asked", "XLA", "warm-up s", "s/epoch", "img/s", "x paper f32"],
                       [r[:4] + [f"{r[4]:.1f}", f"{r[5]:.2f}", f"{r[6]:.0f}", f"{r[6] / base:.2f}"] for r in rows]))


if __name__ == "__main__":
    main()
