"""Serving exports: made by promote.promote, in TensorFlow Serving's layout, readable by its tools, predicting like
the .h5 in a fresh process; versions on promotion, rollback and failure."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import servekit

from locator.runs import export, promote, runs

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def models(tmp_path):
    return tmp_path / "models"


def test_promotion_exports_a_saved_model_tf_serving_reads_and_predicts_like_the_h5(models, tmp_path):
    run = servekit.make_run(models)
    version = promote.promote(models, run)

    assert version == models / "serving" / "landmarks" / "1"
    assert runs.current(models) == run
    assert json.loads((version / "assets.extra" / "metadata.json").read_text()) == runs.read_metadata(run)
    assert export.export_info(version)["run"] == run.name
    # Two fresh processes at once (each imports TensorFlow: seconds): TensorFlow's own tool reads the signature the
    # real tensorflow_model_server would serve, and a plain tf.saved_model.load predicts from the export.
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    cli = subprocess.Popen([str(Path(sys.executable).with_name("saved_model_cli")), "show", "--all", "--dir",
                            str(version)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    x = np.stack([np.asarray(servekit.place_photo(c % 3, 50 + c).resize((servekit.SIZE,) * 2)) for c in range(6)])
    np.save(tmp_path / "x.npy", x)
    script = ("import sys, numpy as np, tensorflow as tf\n"
              "f = tf.saved_model.load(sys.argv[1]).signatures['serving_default']\n"
              "x = np.load(sys.argv[2])\n"
              "np.save(sys.argv[3], f(pixels=tf.constant(x))['probs'].numpy())\n")
    fresh = subprocess.Popen([sys.executable, "-c", script, str(version), str(tmp_path / "x.npy"),
                              str(tmp_path / "p.npy")], stderr=subprocess.PIPE, env=env)
    out, _ = cli.communicate(timeout=300)
    assert cli.returncode == 0 and fresh.wait(timeout=300) == 0, fresh.stderr.read()[-2000:]

    sig = out[out.index("signature_def['serving_default']"):]
    for want in ("inputs['pixels'] tensor_info", "dtype: DT_UINT8", f"shape: (-1, {servekit.SIZE}, "
                 f"{servekit.SIZE}, 3)", "outputs['probs'] tensor_info", "dtype: DT_FLOAT",
                 f"shape: (-1, {servekit.PLACES})", "Method name is: tensorflow/serving/predict"):
        assert want in sig, want
    exported = np.load(tmp_path / "p.npy")
    model, _ = runs.load(run)
    assert exported.shape == (6, servekit.PLACES)
    np.testing.assert_allclose(exported, model.predict(x, verbose=0), atol=1e-5)
    assert exported.argmax(1).tolist() == [c % 3 for c in range(6)]  # and the tiny model does know the places


def test_versions_on_promotion_repeat_and_rollback(models):
    a, b = servekit.make_run(models), servekit.make_run(models)
    assert promote.promote(models, a).name == "1"
    assert promote.promote(models, a).name == "1"         # promoting the served run again exports nothing
    assert promote.promote(models, b).name == "2"
    rollback = promote.promote(models, a)                 # back to a: a new, higher version, so servers load it
    assert rollback.name == "3" and export.export_info(rollback)["run"] == a.name
    assert runs.current(models) == a
    assert export.versions(models / "serving" / "landmarks") == [1, 2, 3]


def test_export_uses_the_model_name_and_keeps_the_newest(models):
    for r in [servekit.make_run(models, name="seoul") for _ in range(2)]:
        export.write_version(models, r, keep=1)
    assert export.versions(models / "serving" / "seoul") == [2]
    assert not (models / "serving" / "landmarks").exists()


def test_a_failed_export_changes_nothing(models):
    good = servekit.make_run(models)
    promote.promote(models, good)
    bad = servekit.make_run(models)
    (bad / "model.h5").write_bytes(b"not an HDF5 file")
    base = models / "serving" / "landmarks"
    (base / ".tmp-999999-7").mkdir()                   # left by an export that was killed
    with pytest.raises(Exception):
        promote.promote(models, bad)
    assert runs.current(models) == good                # still the good run, for predict.py and serve.py alike
    assert sorted(p.name for p in base.iterdir() if not p.name.startswith(".export")) == ["1"]
