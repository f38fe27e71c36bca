"""A small model run from in-memory arrays, saved exactly as cnn.py saves one (model.h5 + metadata.json), so that
predict.py and serve.py load it like any other. For tests and benchmarks, where the point is a real model of the
right shape in seconds, not accuracy: no plots, and the test split may be the training photos themselves."""
from pathlib import Path

import numpy as np

from locator.data.dataset import SPLITS
from locator.runs import runs
from locator.train import finish, fit


def data_from_arrays(x, y, classes, negatives=None, resize_mode: str = "squash", val=None) -> "fit.Data":
    """fit.Data with every split = (x, y) unless `val` = (x_val, y_val) is given; `negatives` (everyday
    photos) train the background output ("none of our places") and calibrate the unknown threshold."""
    x, y = np.asarray(x, np.uint8), np.asarray(y, np.int32)
    xv, yv = (np.asarray(val[0], np.uint8), np.asarray(val[1], np.int32)) if val is not None else (x, y)
    xs, ys = {"train": x, "val": xv, "test": xv}, {"train": y, "val": yv, "test": yv}
    neg = {s: np.asarray(negatives, np.uint8) for s in SPLITS} if negatives is not None else {}
    return fit.Data(xs, ys, {s: [""] * len(ys[s]) for s in SPLITS}, list(classes), "quick", resize_mode,
                      neg)


def quick_run(models, data, settings) -> Path:
    """Train `settings` on `data` into a new run under `models`/runs/ (not made current); returns the run."""
    run = runs.new_run(models)
    net, seconds, _ = fit.train(data, run, settings, progress=False)
    finish.write_run(net, data, run, settings, seconds, plots=False)
    return run
