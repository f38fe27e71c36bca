"""Levers of issue 12 on a tiny generated dataset: distillation from a teacher run (the student sees the same
augmented batch as the teacher), the distillation loss itself, and an EMA of the weights."""
import numpy as np
import pytest

from locator.core.errors import UserError
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
