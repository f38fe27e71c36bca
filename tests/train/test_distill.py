"""Training levers on a tiny generated dataset: distillation from a teacher run (the student sees the same
augmented batch as the teacher), the distillation loss itself, and an EMA of the weights; and the compact
net distilled from an embedding model, whose answers are computed once per training photo at its own size."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from genphotos import add, encode, photo, write_table
from PIL import Image

from locator.core import images
from locator.core.errors import UserError
from locator.data import dataset, preprocess
from locator.runs import runs
from locator.train import distill, fit, quickrun

TINY = dict(widths=(8, 16), stem=8)


def tinted(n, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 120, (n, 32, 32, 3)).astype(np.uint8)
    y = np.arange(n) % 3
    for c in range(3):
        x[y == c, :, :, c] += 120  # each class has its own colour cast
    return x, y


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    x, y = tinted(96, 0)
    classes = [{"class": i, "index": f"{i:02x}", "name": f"Place {i}"} for i in range(3)]
    # each photo 4 times an epoch: enough steps for batch norm's statistics to settle in 3 short epochs
    data = quickrun.data_from_arrays(np.tile(x, (4, 1, 1, 1)), np.tile(y, 4), classes, val=tinted(30, 1))
    s = fit.Settings(arch="compact", epochs=3, batch=16, precision="float32", augment=0.3, jit=False, extra=TINY,
                     lr=1e-2)
    return {"root": root, "data": data, "teacher": quickrun.quick_run(root / "models", data, s), "settings": s}


def test_a_student_learns_from_its_teacher(world):
    s = fit.Settings(**{**world["settings"].__dict__, "teacher": str(world["teacher"]), "cutmix": 0.5})
    run = world["root"] / "student"
    run.mkdir()
    net, _, epochs = fit.train(world["data"], run, s, progress=False)
    assert epochs == 3
    assert "augment" not in [la.name for la in net.layers]  # augmentation ran in tf.data, shared with the teacher
    history = (run / "logs" / "history.csv").read_text().splitlines()
    assert history[0].split(",")[1:] and "val_accuracy" in history[0]
    acc = (net.predict(world["data"].x["val"], verbose=0).argmax(1) == world["data"].y["val"]).mean()
    assert acc > 0.6  # chance is 1/3: the student learnt the colours through the teacher's answers


def test_a_teacher_with_other_outputs_is_one_clear_error(world, tmp_path):
    with pytest.raises(UserError, match="answers for 3 outputs, the student has 4"):
        distill.teacher_model(world["teacher"], 4)
    (tmp_path / "model.h5").write_bytes(b"not a model")
    with pytest.raises(UserError, match="metadata"):
        distill.teacher_model(tmp_path, 3)


def test_the_loss_is_cross_entropy_without_the_teacher_and_kl_with_it():
    import tensorflow as tf

    label = tf.constant([[0.0, 1.0, 0.0]])
    student = tf.constant([[0.2, 0.7, 0.1]])
    teacher = tf.constant([[0.1, 0.8, 0.1]])
    y = tf.concat([label, teacher], -1)
    ce = float(distill.loss(3, 0.0, 4.0, 0.0)(y, student)[0])
    assert ce == pytest.approx(-np.log(0.7), rel=1e-4)
    same = float(distill.loss(3, 1.0, 4.0, 0.0)(tf.concat([label, student], -1), student)[0])
    assert same == pytest.approx(0.0, abs=1e-4)  # a student that answers as its teacher has nothing to learn
    assert float(distill.loss(3, 1.0, 4.0, 0.0)(y, student)[0]) > 0


def test_ema_weights_are_what_the_run_keeps(world, tmp_path):
    s = fit.Settings(**{**world["settings"].__dict__, "ema": 0.9})
    net, _, _ = fit.train(world["data"], tmp_path, s, progress=False)
    acc = (net.predict(world["data"].x["val"], verbose=0).argmax(1) == world["data"].y["val"]).mean()
    assert acc > 0.6


# ------------------------------------------------- an embedding teacher, answers once per photo

REPO = Path(__file__).resolve().parents[2]
TEACHER_SIZE = 96   # the teacher's own input size: not the student's 64x64 arrays


def embedding_teacher(run: Path, outputs: int, data: Path) -> Path:
    """An embedding run as cnn.py writes one (model.h5: uint8 photos at its size in, probabilities out), with
    EfficientNet-Lite0 and a random head: the mechanics, not the accuracy, are under test."""
    from locator.train import frozen

    rng = np.random.default_rng(0)
    head = (rng.normal(0, 3, (1280, outputs)).astype(np.float32), np.zeros(outputs, np.float32))
    run.mkdir(parents=True)
    frozen.assemble(["efficientnet_lite0"], head, size=TEACHER_SIZE).save(run / "model.h5")
    classes = dataset.load_classes(data / "dataset")
    meta = {"name": "teacher", "created": "2026-12-05T00:00:00+00:00", "arch": "embedding", "precision": "float32",
            "epochs": 0, "input_size": [TEACHER_SIZE] * 2, "resize_mode": "crop", "classes": classes,
            "background": True, "dataset_fingerprint": "", "unknown": {}, "metrics": {}, "software": {}}
    (run / "metadata.json").write_text(json.dumps(meta))
    return run


@pytest.fixture(scope="module")
def photo_world(tmp_path_factory):
    """3 places x 10 tinted photos + 6 everyday photos -> preprocess -> dataset; a teacher of 4 outputs (3 places
    and the background) and one of 5."""
    root = tmp_path_factory.mktemp("distill_photos")
    table = write_table(root / "places.xlsx", 3)
    data = root / "data"
    tints = np.eye(3) * 0.7 + 0.3
    for place in range(3):
        for seed in range(10):
            a = np.asarray(photo(1000 * place + seed, 80, 60), np.float32) * tints[place]
            add(data, f"{place:02x}", encode(Image.fromarray(a.clip(0, 255).astype(np.uint8))))
    (data / "negatives").mkdir(parents=True)
    for i in range(6):
        grey = np.random.default_rng(i).integers(100, 150, (48, 64, 3)).astype(np.uint8)
        Image.fromarray(grey).save(data / "negatives" / f"grey{i}.png")
    preprocess.run(data, table, preprocess.Options(size=32, workers=1, progress=False))
    dataset.build(data, table, progress=False, negatives=data / "negatives")
    return {"data": data, "models": root / "models", "teacher": embedding_teacher(root / "teacher", 4, data),
            "other": embedding_teacher(root / "other", 5, data)}


def cnn(*args):
    return subprocess.run([sys.executable, str(REPO / "cnn.py"), *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=REPO)


def test_an_embedding_teacher_answers_once_per_photo_at_its_own_size_and_the_compact_student_trains(photo_world):
    w = photo_world
    r = cnn("--data", w["data"], "--models", w["models"], "--arch", "compact", "--widths", "8,16", "--stem", 8,
            "--epochs", 2, "--batch", 16, "--no-jit", "--no-progress", "--no-promote", "--teacher", w["teacher"])
    assert r.returncode == 0, r.stderr[-3000:]
    (run,) = runs.runs_dir(w["models"]).iterdir()
    meta = runs.read_metadata(run)
    assert meta["arch"] == "compact" and meta["input_size"] == [32, 32] and meta["epochs"] == 2  # the arrays' size
    assert meta["training"]["teacher"] == str(w["teacher"])
    # one answer a training row: the split's photos, then its background photos (fit.with_background's order),
    # each the teacher's answer for the photo itself at 96 px, centre crop
    answers = np.load(run / "checkpoints" / distill.ANSWERS)
    files = dataset.photo_paths(w["data"], "train") + dataset.photo_paths(w["data"], "train", negatives=True)
    assert answers.shape == (len(files), 4) == (meta["training"]["photos_per_epoch"], 4)
    net, _ = runs.load(w["teacher"])
    want = net.predict(np.stack([images.normalise(f, TEACHER_SIZE, "crop") for f in files]), verbose=0)
    assert np.allclose(answers, want, atol=1e-5)


def test_an_embedding_teacher_with_other_outputs_is_one_error_line(photo_world):
    w = photo_world
    r = cnn("--data", w["data"], "--models", w["models"] / "other", "--arch", "compact", "--widths", "8,16",
            "--epochs", 1, "--no-jit", "--no-progress", "--no-promote", "--teacher", w["other"])
    # found once the dataset is read (it says how many outputs the student has): after cnn.py's INFO lines
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.strip().splitlines()[-1:] == errors, r.stderr
    assert "--teacher" in errors[0] and "answers for 5 outputs, the student has 4" in errors[0]
