"""Model runs (models/runs/<YYYYmmdd-HHMMSS>/, UTC) and which one is current (models/current): the model contract.

A run folder holds model.h5 (architecture + weights, no optimizer), metadata.json (what every consumer reads),
metrics.json, plots/, logs/ (TensorBoard) and checkpoints/ (for --resume). `models/current` is a one-line file
naming the run folder, replaced atomically, so a reader never sees a half-switched model.
"""
import json
import os
import platform
from pathlib import Path

from locator.core.errors import UserError
from locator.core.fsio import stamped_dir

CURRENT = "current"
METADATA_KEYS = ("name", "created", "arch", "precision", "epochs", "input_size", "resize_mode", "classes",
                 "background", "dataset_fingerprint", "unknown", "metrics", "software")


def runs_dir(models) -> Path:
    return Path(models) / "runs"


def new_run(models) -> Path:
    """A fresh, empty run folder named by the UTC time (fsio.stamped_dir)."""
    return stamped_dir(runs_dir(models))


def unfinished_run(models):
    """The newest run that has checkpoints but no model.h5 (an interrupted training), or None."""
    runs = sorted(runs_dir(models).glob("*/checkpoints"), reverse=True)
    for ck in runs:
        if not (ck.parent / "model.h5").exists():
            return ck.parent
    return None


def current(models):
    """The current run folder, or None when no model has been promoted yet."""
    f = Path(models) / CURRENT
    if not f.exists():
        return None
    name = f.read_text().strip()
    run = runs_dir(models) / name
    return run if (run / "model.h5").exists() else None


def resolve(models, model_arg=None) -> Path:
    """The run to use: --model (a run folder or its model.h5) if given, else models/current. UserError if none."""
    if model_arg:
        p = Path(model_arg)
        run = p.parent if p.suffix == ".h5" else p
        if not (run / "model.h5").exists() or not (run / "metadata.json").exists():
            raise UserError(f"--model {model_arg}: not a model run (needs model.h5 and metadata.json)")
        return run
    run = current(models)
    if run is None:
        raise UserError(f"no current model in {models}/ (train one with `python cnn.py`, or pass --model RUN)")
    return run


def read_metadata(run) -> dict:
    path = Path(run) / "metadata.json"
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: unreadable model metadata ({e})")
    missing = [k for k in METADATA_KEYS if k not in meta]
    if missing:
        raise UserError(f"{path}: metadata lacks {', '.join(missing)}; retrain with this version of cnn.py")
    return meta


def load(run):
    """(keras model, metadata) of a run, for predict.py and serve.py."""
    import keras

    meta = read_metadata(run)
    model = keras.models.load_model(Path(run) / "model.h5", compile=False)
    return model, meta


def software() -> dict:
    import keras
    import tensorflow as tf

    return {"python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__}


def class_difference(meta: dict, have):
    """The first class at which a model's classes differ from `have` ((index, name) pairs in class order), or None
    when they are the same: a model only answers for the places it was trained on, in the same order."""
    want = [(c["index"], c["name"]) for c in meta["classes"]]
    have = list(have)
    if want == have:
        return None
    return next((i for i, (a, b) in enumerate(zip(want, have)) if a != b), min(len(want), len(have)))


def check_classes(meta: dict, table) -> None:
    """A model may only be used with the table it was trained on (class_difference); else a UserError."""
    want, have = meta["classes"], table.places
    diff = class_difference(meta, [(p.index, p.name) for p in have])
    if diff is not None:
        raise UserError(f"the model's classes do not match {table.path}: {len(want)} classes in the model, "
                        f"{len(have)} places in the table, first difference at class {diff}; "
                        "use the table the model was trained with, or retrain")


def env_threads() -> None:
    """Quiet TensorFlow's start-up chatter (set before importing it)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
