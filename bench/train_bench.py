"""Training speed of cnn.py's loop: img/s for paper and compact, float32 beside mixed_bfloat16, with and without XLA.

    .venv/bin/python bench/train_bench.py                  # all 8 combinations, the longest
    .venv/bin/python bench/train_bench.py --arch compact --jit off --epochs 1   # the compact net, both precisions
    .venv/bin/python bench/train_bench.py --arch compact --augment 0   # compact as XLA can compile it

Each combination runs fit.train() exactly as cnn.py does (tf.data pipeline, in-model augmentation, validation,
checkpoints, TensorBoard logs) on synthetic uint8 photos the size of the real dataset (1800 train and 225
validation photos of 64x64, 23 places; speed does not depend on what the pixels show). The first epoch (tracing,
XLA compilation, the cache filling) is timed apart as warm-up; img/s = training photos per second over the
following epochs, validation included. The naive baseline is the study's set-up: paper net, float32, no XLA.
"XLA" says whether XLA really compiled the step: Keras silently turns jit_compile off for a model with a layer that
XLA cannot compile (the random zoom/translation/rotation of the augmentation).
Each row runs float32 and mixed_bfloat16 one after the other, so "bf16 / f32" compares them under the same load;
above the table: the CPU, the flags that decide bf16's speed (config.default_precision picks bf16 only with native
bf16) and the load average at the start and the end. On a shared machine, read only large ratios.
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

from locator.core import config, cpu  # noqa: E402
from locator.core.tables import format_table  # noqa: E402
from locator.train import fit  # noqa: E402

PRECISIONS = ("float32", "mixed_bfloat16")


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
    ap.add_argument("--arch", choices=[a for a in config.ARCHS if a != "embedding"], action="append",
                    help="default: paper and compact (the embedding model trains no epochs: bench/embedding_eval.py)")
    ap.add_argument("--train", type=int, default=1800, help="training photos (default %(default)s)")
    ap.add_argument("--val", type=int, default=225)
    ap.add_argument("--classes", type=int, default=23)
    ap.add_argument("--size", type=int, default=config.SIZE)
    ap.add_argument("--epochs", type=int, default=2, help="timed epochs after the warm-up one (default %(default)s)")
    ap.add_argument("--batch", type=int, default=config.TRAIN_BATCH)
    ap.add_argument("--augment", type=float, help="augmentation strength for both nets (default: cnn.py's, "
                    f"{config.AUGMENT:g} for compact, 0 for paper); 0 shows what XLA does for compact")
    ap.add_argument("--jit", choices=("off", "on", "both"), default="both", help="XLA (default %(default)s)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # retracing notices: each combination builds anew
    import warnings

    warnings.filterwarnings("ignore")  # Keras' jit and shuffle notices: the XLA column says what happened
    here = cpu.detect()
    load_before = os.getloadavg()[0]
    data = synthetic(args.train, args.val, args.classes, args.size)
    jits = {"off": (False,), "on": (True,), "both": (False, True)}[args.jit]
    combos = [(arch, jit) for arch in (args.arch or ["paper", "compact"]) for jit in jits]
    tmp = Path(tempfile.mkdtemp(prefix="train-bench-"))
    rows = []
    bar = tqdm(total=len(combos) * len(PRECISIONS), unit="run")
    try:
        for i, (arch, jit) in enumerate(combos):
            row = {}
            for prec in PRECISIONS:
                s = fit.Settings(arch=arch, epochs=1 + args.epochs, batch=args.batch, precision=prec, jit=jit,
                                 augment=args.augment if args.augment is not None  # else cnn.py's per-arch default
                                 else config.augment_for(arch))
                bar.set_description(f"{arch} {prec} jit {'on' if jit else 'off'}")
                t = timer()
                fit.train(data, tmp / f"run{i}-{prec}", s, progress=False, callbacks=[t])
                row[prec] = (t.seconds[0], args.train * args.epochs / sum(t.seconds[1:]), t.xla)
                bar.update()
            rows.append((arch, jit, row))
    finally:
        bar.close()
        shutil.rmtree(tmp, ignore_errors=True)
    base = next((r["float32"][1] for a, j, r in rows if (a, j) == ("paper", False)), None)  # the study's set-up
    print(f"CPU: {here.model}; {here.shown_flags()}")
    print(f"{args.train} training photos of {args.size}x{args.size}, {args.classes} places, batch {args.batch}; "
          f"warm-up epoch + {args.epochs} timed; {len(os.sched_getaffinity(0))} cores, "
          f"load average {load_before:.2f} at the start, {os.getloadavg()[0]:.2f} at the end")
    table = []
    for arch, jit, r in rows:
        f32, bf16 = r["float32"], r["mixed_bfloat16"]
        xla = "/".join(sorted({"yes" if v[2] else "no" for v in (f32, bf16)}))
        table.append([arch, "on" if jit else "off", xla, f"{f32[0]:.1f} / {bf16[0]:.1f}", f"{f32[1]:.0f}",
                      f"{bf16[1]:.0f}", f"{bf16[1] / f32[1]:.2f}"]
                     + ([f"{f32[1] / base:.2f}", f"{bf16[1] / base:.2f}"] if base else []))
    print(format_table(["arch", "jit asked", "XLA", "warm-up s f32 / bf16", "f32 img/s", "bf16 img/s", "bf16 / f32"]
                       + (["f32 x paper f32", "bf16 x paper f32"] if base else []), table))
    for arch in dict.fromkeys(a for a, _, _ in rows):
        prec, why = config.precision_choice(arch, here)
        print(f"cnn.py's default for {arch} here: {prec} ({why})")


if __name__ == "__main__":
    main()
