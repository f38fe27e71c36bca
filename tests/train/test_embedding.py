"""The embedding model (cnn.py --arch embedding): the embedding cache is keyed by content, incremental and survives
kill -9; cnn.py trains the model on a tiny generated dataset; model.h5 reloads in a second process with the same
answers, the SavedModel export answers as the .h5, predict.py names the places, and a re-run embeds nothing.

EfficientNet-Lite0 (the smaller pinned backbone) keeps these tests to seconds; the default backbone differs only in
its weights and size (tests/train/test_backbones checks every conversion)."""
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from clikit import one_line_error
from genphotos import add, encode, photo, write_table
from PIL import Image

from locator.core import config, images
from locator.data import dataset, preprocess
from locator.runs import runs
from locator.train import embed

REPO = Path(__file__).resolve().parents[2]
LITE0 = "efficientnet_lite0"
PLACES = 3
TINTS = [(1.0, 0.3, 0.3), (0.3, 1.0, 0.3), (0.3, 0.3, 1.0)]


def tinted(seed: int, place: int) -> Image.Image:
    a = np.asarray(photo(seed, 64, 48), dtype=np.float32) * np.array(TINTS[place])
    return Image.fromarray(a.clip(0, 255).astype(np.uint8))


def photos(folder: Path, n: int, start: int = 0) -> list:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(start, start + n):
        path = folder / f"{i:04d}.jpg"
        path.write_bytes(encode(photo(i, 64, 48)))
        out.append(path)
    return out


def cache_files(data: Path) -> list:
    return sorted(p for p in embed.embeddings_dir(data).rglob("*.npy") if not p.name.startswith("."))


def test_the_embedding_cache_is_keyed_by_content_and_embeds_only_what_is_new(tmp_path):
    files = photos(tmp_path / "photos", 6)
    embedder = embed.Embedder(LITE0, size=64)
    stats = {}
    first = embed.embed(files, tmp_path, embedder, progress=False, stats=stats)
    assert first.shape == (6, 2, 1280) and stats == {"cached": 6 - 6, "embedded": 6}
    assert not np.allclose(first[:, 0], first[:, 1])       # the mirrored view is another view
    again = embed.embed(files, tmp_path, embedder, progress=False, stats=stats)
    assert stats == {"cached": 6, "embedded": 0} and np.array_equal(first, again)
    copy = tmp_path / "photos" / "renamed.jpg"
    shutil.copy(files[0], copy)                            # the same bytes under another name: no new work
    more = embed.embed(files + [copy] + photos(tmp_path / "photos", 1, start=50), tmp_path, embedder,
                       progress=False, stats=stats)
    assert stats == {"cached": 7, "embedded": 1}
    assert np.array_equal(more[6], first[0]) and len(cache_files(tmp_path)) == 7


KILLED = """
import sys
sys.path.insert(0, {repo!r})
from pathlib import Path
from locator.train import embed
files = sorted(Path({folder!r}).glob("*.jpg"))
embed.embed(files, {data!r}, embed.Embedder("efficientnet_lite0"), batch=4, progress=False)
"""


def test_an_embedding_killed_with_sigkill_is_finished_by_the_next_run_with_nothing_lost_or_twice(tmp_path):
    files = photos(tmp_path / "photos", 160)
    data = tmp_path / "data"
    code = KILLED.format(repo=str(REPO), folder=str(tmp_path / "photos"), data=str(data))
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and child.poll() is None and len(cache_files(data)) < 8:
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    done = len(cache_files(data))
    assert 8 <= done < len(files), f"killed after {done} of {len(files)} photos: not mid-run"
    stats = {}
    out = embed.embed(files, data, embed.Embedder(LITE0), batch=4, progress=False, stats=stats)
    assert stats["cached"] >= done - 0 and stats["cached"] + stats["embedded"] == len(files)
    assert len(cache_files(data)) == len(files) and out.shape == (len(files), 2, 1280)
    fresh = embed.embed(files[:3], tmp_path / "elsewhere", embed.Embedder(LITE0), progress=False)
    assert np.allclose(out[:3], fresh, atol=1e-5)          # what was cached before the kill is what a clean run gives


# ------------------------------------------------------------------- cnn.py --arch embedding, end to end

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """3 places x 16 photos (+ 10 everyday photos in data/negatives) -> preprocess -> dataset -> cnn.py."""
    root = tmp_path_factory.mktemp("embedding")
    table = write_table(root / "places.xlsx", PLACES)
    data, models = root / "data", root / "models"
    for place in range(PLACES):
        for seed in range(16):
            add(data, f"{place:02x}", encode(tinted(1000 * place + seed, place)))
    for i in range(10):
        grey = np.random.default_rng(i).integers(100, 150, (40, 56, 3)).astype(np.uint8)
        (data / "negatives").mkdir(parents=True, exist_ok=True)
        Image.fromarray(grey).save(data / "negatives" / f"grey{i}.png")
    preprocess.run(data, table, preprocess.Options(size=32, workers=1, progress=False))
    dataset.build(data, table, progress=False, negatives=data / "negatives")
    r = cnn("--data", data, "--models", models, "--arch", "embedding", "--backbones", LITE0, "--no-progress")
    assert r.returncode == 0, r.stderr[-3000:]
    return {"root": root, "data": data, "models": models, "run": runs.current(models), "out": r.stdout}


def cnn(*args, timeout=600):
    return subprocess.run([sys.executable, str(REPO / "cnn.py"), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def test_cnn_py_trains_the_embedding_model_with_its_own_input_size_and_a_calibrated_rule(trained):
    meta = runs.read_metadata(trained["run"])
    assert meta["arch"] == "embedding" and meta["precision"] == "float32"
    assert meta["input_size"] == [224, 224] and meta["resize_mode"] == "crop" and meta["background"] is True
    assert meta["training"]["backbones"] == [LITE0] and meta["training"]["head"]["head_c"] in config.HEAD_C_GRID
    assert meta["metrics"]["test_accuracy"] >= 0.8, meta["metrics"]
    assert meta["unknown"]["threshold"] is not None and meta["unknown"]["aimed_true_accept"] > 0.9


def test_the_saved_model_reloads_in_a_second_process_and_the_savedmodel_answers_as_the_h5(trained):
    run, data = trained["run"], trained["data"]
    files = dataset.photo_paths(data, "test")
    x = np.stack([images.normalise(f, 224, "crop") for f in files])
    np.save(trained["root"] / "x.npy", x)
    export = sorted((trained["models"] / "serving" / config.MODEL_NAME).iterdir())[-1]
    code = f"""
import sys, numpy as np
sys.path.insert(0, {str(REPO)!r})
import tensorflow as tf
from locator.runs import runs
net, _ = runs.load({str(run)!r})
x = np.load({str(trained["root"] / "x.npy")!r})
np.save({str(trained["root"] / "h5.npy")!r}, net.predict(x, verbose=0))
served = tf.saved_model.load({str(export)!r}).signatures["serving_default"]
out = served(tf.constant(x))
np.save({str(trained["root"] / "saved.npy")!r}, list(out.values())[0].numpy())
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    net, meta = runs.load(run)
    here = net.predict(x, verbose=0)
    h5, saved = np.load(trained["root"] / "h5.npy"), np.load(trained["root"] / "saved.npy")
    assert here.shape == (len(files), PLACES + 1)
    assert np.allclose(here, h5, atol=1e-5) and np.allclose(saved, h5, atol=1e-4)
    y = np.load(config.dataset_dir(data) / "y_test.npy")
    assert (here[:, :PLACES].argmax(1) == y).mean() >= 0.8


def test_predict_py_names_the_places_with_the_embedding_model(trained, tmp_path):
    folder = tmp_path / "holiday"
    folder.mkdir()
    for place in range(PLACES):
        tinted(9000 + place, place).save(folder / f"place{place}.jpg")
    out = tmp_path / "out.json"
    r = subprocess.run([sys.executable, str(REPO / "predict.py"), str(folder), "--models", str(trained["models"]),
                        "--places", str(trained["root"] / "places.xlsx"), "--json", str(out)],
                       capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads(out.read_text())
    rows = rows if isinstance(rows, list) else rows.get("photos", rows.get("results"))
    named = {Path(p["file"]).stem: p["top3"][0]["index"] for p in rows}
    assert named == {f"place{i}": f"{i:02x}" for i in range(PLACES)}, named


def test_a_second_run_with_nothing_new_embeds_nothing(trained):
    r = cnn("--data", trained["data"], "--models", trained["models"], "--arch", "embedding", "--backbones", LITE0,
            "--no-progress", "--no-promote")
    assert r.returncode == 0, r.stderr[-3000:]
    newest = sorted(runs.runs_dir(trained["models"]).iterdir())[-1]
    counts = runs.read_metadata(newest)["training"]["head"]["embeddings"][LITE0]
    assert counts["embedded"] == 0 and counts["cached"] > 0, counts


def test_a_backbone_that_does_not_exist_or_a_weights_file_for_none_is_one_line(trained, tmp_path):
    one_line_error(cnn("--arch", "embedding", "--backbones", "resnet50"), "resnet50", "efficientnet_lite2")
    one_line_error(cnn("--arch", "embedding", "--weights", "mobilenet_v2=/x.pth"), "NAME=FILE")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"no weights here")
    one_line_error(cnn("--data", trained["data"], "--models", tmp_path / "m", "--arch", "embedding",
                       "--backbones", LITE0, "--weights", f"{LITE0}={bad}"), "not a readable PyTorch weights file")
