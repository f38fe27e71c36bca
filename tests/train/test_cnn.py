"""cnn.py as a user runs it, on a tiny generated dataset built by the real preprocess + dataset code: it trains
well above chance, writes a complete run (model.h5 that a fresh process reloads with the same predictions,
metadata.json per docs/conventions.md, metrics, plots, TensorBoard logs with the layer graph), promotes by default and
not with --no-promote, resumes a run killed with SIGKILL, and turns a bad dataset or flag into one line + exit 2.

The trainings are shared session fixtures (two and a half tiny runs); everything else reads their run folders.
"""
import datetime as dt
import importlib.util
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from clikit import exit_2_one_line as one_line_error
from genphotos import add, encode, photo, write_table
from PIL import Image

from locator.core import config, cpu
from locator.core.cli import run as cli_run
from locator.core.metrics import confusion
from locator.data import dataset, preprocess
from locator.runs import runs
from locator.train import evaluate

REPO = Path(__file__).resolve().parents[2]
PLACES = 3
SIZE = 32
# a ~0.1 MB compact net, named: these tests are about the 64x64 trainer's mechanics (epochs, kill -9, --resume,
# promotion), not about cnn.py's default architecture (config.ARCH); XLA would only add compile time
TINY = ["--arch", "compact", "--widths", "8,16", "--stem", "8", "--no-jit", "--no-progress"]
OLD = "19990101-000000"  # a run that is current before the tests train anything
# Each place's photos carry a strong colour cast: separable, yet every photo differs (no near-duplicate groups).
TINTS = [(1.0, 0.3, 0.3), (0.3, 1.0, 0.3), (0.3, 0.3, 1.0)]


def tinted(seed: int, place: int) -> Image.Image:
    a = np.asarray(photo(seed, 48, 40), dtype=np.float32) * np.array(TINTS[place])
    return Image.fromarray(a.clip(0, 255).astype(np.uint8))


def cnn(*args, timeout=300):
    return subprocess.run([sys.executable, str(REPO / "cnn.py"), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def history_rows(run: Path) -> list:
    lines = (run / "logs" / "history.csv").read_text().splitlines()
    return lines[1:]


# ---------------------------------------------------------------- shared fixtures: data and the trained runs

@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    """3 places x 40 photos -> data/raw -> preprocess (32x32) -> data/dataset, the way the pipeline builds it."""
    root = tmp_path_factory.mktemp("cnn_data")
    table = write_table(root / "places.xlsx", PLACES)
    data = root / "data"
    for place in range(PLACES):
        for seed in range(40):
            add(data, f"{place:02x}", encode(tinted(1000 * place + seed, place)))
    preprocess.run(data, table, preprocess.Options(size=SIZE, workers=1, progress=False))
    dataset.build(data, table, progress=False)
    return data


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """A models folder whose current model is an older run (only its file name matters here)."""
    m = tmp_path_factory.mktemp("cnn_models")
    (m / "runs" / OLD).mkdir(parents=True)
    (m / "runs" / OLD / "model.h5").write_bytes(b"an older model")
    (m / "current").write_text(OLD + "\n")
    return m


def new_runs(models, before) -> list:
    return sorted(set(runs.runs_dir(models).iterdir()) - set(before))


@pytest.fixture(scope="session")
def run_a(data_root, models):
    """cnn.py --epochs 2 --no-promote: a complete run that must not become current."""
    before = list(runs.runs_dir(models).iterdir())
    r = cnn("--data", data_root, "--models", models, "--epochs", 2, "--batch", 16, "--no-promote", *TINY)
    assert r.returncode == 0, r.stderr
    (run,) = new_runs(models, before)
    return SimpleNamespace(dir=run, stdout=r.stdout, stderr=r.stderr, current=(models / "current").read_text(),
                           exported=(models / "serving").exists())


FRESH = r"""
import json, sys
from pathlib import Path
from locator.runs import runs
from locator.train import finish, fit

run, folder = Path(sys.argv[1]), Path(sys.argv[2])
net, meta = runs.load(run)
data = fit.load_data(folder)
n = len(meta["classes"])
out = {"input_shape": list(net.input_shape), "output_shape": list(net.output_shape),
       "pred": finish.predict(net, data.x["test"])[:, :n].argmax(1).tolist(),
       "unknown": finish.calibrate_unknown(net, data, fit.Settings(background=meta["background"]))}

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
ea = EventAccumulator(str(run / "logs" / "train"))
ea.Reload()
try:
    out["graph_nodes"] = [[node.name, node.op] for node in ea.Graph().node]
except ValueError:  # "There is no graph in this EventAccumulator"
    out["graph_nodes"] = []
out["tensor_tags"] = ea.Tags()["tensors"]
print(json.dumps(out))
"""


@pytest.fixture(scope="session")
def fresh(run_a, data_root):
    """What a fresh process (not the one that trained) sees of run A: its model.h5 and its TensorBoard logs."""
    r = subprocess.run([sys.executable, "-c", FRESH, str(run_a.dir), str(data_root / "dataset")], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


EPOCHS_K = 6


@pytest.fixture(scope="session")
def resumed(data_root, models, run_a):
    """Run K: killed with SIGKILL once its backup records >= 1 finished epoch, then `cnn.py --resume` with no
    other flag, not even --arch: the run goes on as the compact net it started as, whatever cnn.py's default.
    Run A, finished, sits in the same folder: --resume must pick the interrupted one."""
    before = list(runs.runs_dir(models).iterdir())
    cmd = [sys.executable, str(REPO / "cnn.py"), "--data", str(data_root), "--models", str(models),
           "--epochs", str(EPOCHS_K), "--batch", "8", *TINY]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    try:
        while True:
            assert proc.poll() is None, "the run to interrupt ended by itself"
            assert time.time() < deadline, "no epoch finished in time"
            marker = list(runs.runs_dir(models).glob("*/checkpoints/backup/training_metadata.json"))
            if marker and _backup_epoch(marker[0]) >= 1:
                break
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    (run,) = new_runs(models, before)
    killed = SimpleNamespace(rows=history_rows(run), backup_epoch=_backup_epoch(marker[0]),
                             finished=(run / "model.h5").exists())
    r = cnn("--data", data_root, "--models", models, "--no-progress", "--resume")
    assert r.returncode == 0, r.stderr
    return SimpleNamespace(dir=run, killed=killed, stdout=r.stdout, stderr=r.stderr)


def _backup_epoch(path) -> int:
    try:
        return json.loads(Path(path).read_text())["epoch"]
    except (OSError, ValueError, KeyError):  # not written yet, or caught mid-write
        return 0


# ---------------------------------------------------------------- a trained run

def test_two_epochs_score_well_above_chance(run_a):
    metrics = json.loads((run_a.dir / "metrics.json").read_text())
    assert metrics["test_accuracy"] >= 0.8  # chance is 1/3
    assert "test accuracy" in run_a.stdout and "Place 2" in run_a.stdout  # the summary table


def test_model_h5_reloads_in_a_fresh_process_with_the_same_predictions(run_a, fresh, data_root):
    assert fresh["input_shape"] == [None, SIZE, SIZE, 3] and fresh["output_shape"] == [None, PLACES]
    # The training process wrote its in-memory model's test predictions (confusion matrix) and validation scores
    # (the unknown threshold is a quantile of them): the reloaded model must reproduce both.
    y = np.load(data_root / "dataset" / "y_test.npy")
    metrics = json.loads((run_a.dir / "metrics.json").read_text())
    assert confusion(y, fresh["pred"], PLACES).tolist() == metrics["confusion"]["matrix"]
    meta = json.loads((run_a.dir / "metadata.json").read_text())
    assert fresh["unknown"]["threshold"] == pytest.approx(meta["unknown"]["threshold"], abs=1e-4)
    assert fresh["unknown"]["true_accept"] == meta["unknown"]["true_accept"]


def test_metadata_follows_the_conventions(run_a, data_root):
    meta = json.loads((run_a.dir / "metadata.json").read_text())
    keys = ["name", "created", "arch", "precision", "epochs", "input_size", "resize_mode", "classes", "background",
            "dataset_fingerprint", "unknown", "metrics", "software"]  # docs/conventions.md, "Models"
    assert set(keys) <= set(meta)
    assert meta["name"] == "landmarks" and meta["arch"] == "compact" and meta["epochs"] == 2
    assert dt.datetime.fromisoformat(meta["created"]).tzinfo is not None
    assert meta["precision"] in ("float32", "mixed_bfloat16")
    assert meta["input_size"] == [SIZE, SIZE] and meta["resize_mode"] == "squash"
    assert meta["classes"] == [{"class": i, "index": f"{i:02x}", "name": f"Place {i}"} for i in range(PLACES)]
    assert meta["background"] is False  # no negatives were packed
    assert meta["dataset_fingerprint"] == dataset.dataset_fingerprint(data_root / "dataset")
    unknown = meta["unknown"]
    assert {"score", "threshold", "true_accept", "false_accept", "calibrated_on"} <= set(unknown)
    assert isinstance(unknown["score"], str) and unknown["calibrated_on"] == "val"
    assert 0 < unknown["threshold"] <= 1 and 0.9 <= unknown["true_accept"] <= 1
    assert unknown["false_accept"] is None or 0 <= unknown["false_accept"] <= 1
    assert all(0 <= meta["metrics"][k] <= 1 for k in ("test_accuracy", "macro_f1"))
    assert meta["metrics"]["test_photos"] == len(np.load(data_root / "dataset" / "y_test.npy"))
    assert all(isinstance(meta["software"][k], str) for k in ("python", "tensorflow", "keras"))
    # no --precision: the CPU's choice, recorded with the CPU that made it
    assert meta["precision"] == config.default_precision("compact")
    assert f"precision {meta['precision']}: the CPU ({cpu.cpu_model()})" in run_a.stderr  # the log says why
    assert meta["cpu"] == {"model": cpu.cpu_model(), "native_bf16": cpu.cpu_has_native_bf16()}
    assert meta["training"]["widths"] == [8, 16] and meta["training"]["stem"] == 8  # --widths/--stem reached it
    assert runs.read_metadata(run_a.dir) == meta  # what predict.py and serve.py read


def test_metrics_plots_and_logs_are_written(run_a):
    metrics = json.loads((run_a.dir / "metrics.json").read_text())
    names = [f"Place {i}" for i in range(PLACES)]
    assert [p["name"] for p in metrics["per_place"]] == names
    assert all({"precision", "recall", "f1", "support"} <= set(p) for p in metrics["per_place"])
    assert metrics["confusion"]["labels"] == names
    assert np.sum(metrics["confusion"]["matrix"]) == metrics["test_photos"] > 0
    for png in ("history", "confusion", "mistakes"):
        with Image.open(run_a.dir / "plots" / f"{png}.png") as im:
            assert im.format == "PNG" and min(im.size) > 100
    assert [r.split(",")[0] for r in history_rows(run_a.dir)] == ["0", "1"]
    for part in ("train", "validation"):
        assert list((run_a.dir / "logs" / part).glob("events.out.tfevents.*"))
    assert not list(run_a.dir.rglob(".tmp-*"))  # every atomic write completed


def test_tensorboard_shows_the_layer_graph(fresh):
    # The op graph (Graphs tab, default view): one name scope per layer of the net.
    scopes = {name.split("/")[1] for name, _ in fresh["graph_nodes"] if name.count("/") >= 2}
    for layer in ("conv2d", "batch_normalization", "max_pooling2d", "features", "probs"):
        assert any(s.startswith(layer) for s in scopes), (layer, sorted(scopes))
    ops = {op for _, op in fresh["graph_nodes"]}
    assert {"Conv2D", "MaxPool", "Softmax"} <= ops, sorted(ops)
    assert "keras" in fresh["tensor_tags"]  # and Keras' conceptual graph (the model config)


# ---------------------------------------------------------------- promotion and resume

def test_no_promote_leaves_current_alone(run_a, models):
    assert run_a.current == OLD + "\n" and not run_a.exported  # nor exported for serving
    assert "not promoted" in run_a.stderr
    assert (run_a.dir / "model.h5").exists()


def test_a_run_becomes_current_by_default(resumed, models):
    assert runs.current(models) == resumed.dir
    assert runs.resolve(models) == resumed.dir
    assert "is now current" in resumed.stderr


def test_resume_finishes_a_killed_run_and_its_history_spans_both_parts(resumed):
    k = resumed.killed
    assert not k.finished and 1 <= k.backup_epoch < EPOCHS_K
    rows = history_rows(resumed.dir)
    assert rows[:len(k.rows)] == k.rows  # the first part's history is kept as it was
    # The resumed part starts at the epoch after the last backup. An epoch the kill caught between its history
    # row and its backup is trained again (its row appears twice); none is skipped.
    assert len(k.rows) in (k.backup_epoch, k.backup_epoch + 1)
    epochs = [int(r.split(",")[0]) for r in rows]
    assert epochs == list(range(len(k.rows))) + list(range(k.backup_epoch, EPOCHS_K))
    assert evaluate.read_history(resumed.dir / "logs" / "history.csv")["epoch"] == list(range(EPOCHS_K))
    assert f"trained {EPOCHS_K - k.backup_epoch} epochs" in resumed.stderr
    meta = json.loads((resumed.dir / "metadata.json").read_text())
    assert meta["epochs"] == EPOCHS_K and meta["training"]["batch"] == 8  # the run's own settings, not defaults
    assert meta["arch"] == "compact" and meta["training"]["widths"] == [8, 16]  # not cnn.py's default --arch
    assert (resumed.dir / "model.h5").exists() and not (resumed.dir / "checkpoints" / "backup").exists()


def test_read_history_keeps_the_last_row_of_an_epoch(tmp_path):
    csv = tmp_path / "history.csv"
    csv.write_text("epoch,accuracy,val_accuracy\n0,0.5,0.4\n1,0.6,0.5\n1,0.7,0.6\n2,0.8,0.7\n3,0.9\n")
    h = evaluate.read_history(csv)  # the 3rd epoch's row was torn by the kill
    assert h == {"epoch": [0, 1, 2], "accuracy": [0.5, 0.7, 0.8], "val_accuracy": [0.4, 0.6, 0.7]}


# ---------------------------------------------------------------- mistakes: one line, exit 2

def main_of_cnn():
    spec = importlib.util.spec_from_file_location("cnn_script", REPO / "cnn.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.fixture
def cnn_in_process(capsys):
    """cnn.py's main() through cli.run, as `python cnn.py ARGS` runs it; returns (exit code, stderr).
    In-process because these mistakes are caught before TensorFlow loads; one test below runs it for real."""
    main = main_of_cnn()

    def call(*args):
        with pytest.raises(SystemExit) as e:
            cli_run(lambda: main(list(map(str, args))))
        return e.value.code, capsys.readouterr().err
    return call


def _npy(d, name, change):
    np.save(d / name, change(np.load(d / name)))


BAD_DATASETS = {
    "fewer labels than images": (lambda d: _npy(d, "y_train.npy", lambda y: y[:-1]), ["split train", "labels"]),
    "fewer images than labels": (lambda d: _npy(d, "x_val.npy", lambda x: x[1:]), ["split val", "images"]),
    "label out of range": (lambda d: _npy(d, "y_val.npy", lambda y: np.r_[7, y[1:]]), ["y_val.npy", "0..2"]),
    "negative label": (lambda d: _npy(d, "y_test.npy", lambda y: np.r_[-1, y[1:]]), ["y_test.npy", "0..2"]),
    "float images": (lambda d: _npy(d, "x_train.npy", lambda x: x.astype(np.float32)), ["x_train.npy", "uint8"]),
    "grey images": (lambda d: _npy(d, "x_test.npy", lambda x: x[..., 0]), ["x_test.npy", "N x H x W x 3"]),
    "float labels": (lambda d: _npy(d, "y_train.npy", lambda y: y + 0.5), ["y_train.npy", "integer"]),
    "one-hot labels": (lambda d: _npy(d, "y_val.npy", lambda y: np.eye(PLACES, dtype=np.int64)[y]),
                       ["y_val.npy", "integer class numbers"]),
    "other image size": (lambda d: _npy(d, "x_val.npy", lambda x: x[:, :16, :16]), ["x_val", "x_train"]),
    "empty test split": (lambda d: [_npy(d, f"{k}_test.npy", lambda a: a[:0]) for k in "xy"]
                         + [(d / "files_test.txt").write_text("")], ["test", "empty"]),
    "missing labels": (lambda d: (d / "y_test.npy").unlink(), ["y_test.npy", "not found"]),
    "missing images": (lambda d: (d / "x_train.npy").unlink(), ["x_train.npy", "not found"]),
    "missing file list": (lambda d: (d / "files_val.txt").unlink(), ["files_val.txt", "not found"]),
    "missing classes": (lambda d: (d / "classes.json").unlink(), ["classes.json", "not found", "dataset.py"]),
    "broken classes": (lambda d: (d / "classes.json").write_text('[{"class": 0'), ["classes.json", "unreadable"]),
    "classes not numbered": (lambda d: (d / "classes.json").write_text('[{"class": 1}]'), ["classes.json"]),
    "truncated images": (lambda d: (d / "x_train.npy").write_bytes((d / "x_train.npy").read_bytes()[:5000]),
                         ["x_train.npy", "unreadable"]),
}


@pytest.fixture
def bad_data(tmp_path, data_root):
    def make(name):
        change, _ = BAD_DATASETS[name]
        data = tmp_path / "data"
        shutil.copytree(data_root / "dataset", data / "dataset")
        change(data / "dataset")
        return data
    return make


@pytest.mark.parametrize("name", BAD_DATASETS)
def test_a_bad_dataset_is_one_line_and_exit_2(cnn_in_process, bad_data, tmp_path, name):
    code, err = cnn_in_process("--data", bad_data(name), "--models", tmp_path / "models", *TINY)
    one_line_error(code, err, *BAD_DATASETS[name][1])
    assert not (tmp_path / "models").exists()  # nothing was started


@pytest.mark.parametrize("args,words", [
    (["--epochs", "0"], ["--epochs"]),
    (["--batch", "-1"], ["--batch"]),
    (["--epochs", "two"], ["--epochs", "invalid int"]),
    (["--arch", "vgg"], ["--arch", "invalid choice"]),
    (["--precision", "float16"], ["--precision", "invalid choice"]),
    (["--arch", "compact", "--widths", "8,x"], ["--widths", "8,x"]),
    (["--arch", "compact", "--widths", "0,16"], ["--widths"]),
    (["--arch", "compact", "--stem", "-1"], ["--stem"]),
    (["--arch", "paper", "--widths", "8,16"], ["--widths", "paper"]),
    (["--arch", "compact", "--cut", "block_6_project"], ["--cut", "mobilenet_v2", "--arch compact"]),
    (["--arch", "paper", "--upsample", "128"], ["--upsample", "mobilenet_v2", "--arch paper"]),
    (["--arch", "compact", "--weights", "w.pth"], ["--weights", "mobilenet_v2", "--arch compact"]),
    (["--arch", "mobilenet_v2", "--upsample", "16"], ["--upsample", "at least 32"]),
    (["--resume", "--minutes", "5"], ["--minutes", "--resume"]),
    (["--lr", "fast"], ["--lr"]),
    (["--frobnicate"], ["unrecognized arguments"]),
])
def test_a_bad_flag_is_one_line_and_exit_2(cnn_in_process, tmp_path, args, words):
    one_line_error(*cnn_in_process("--data", tmp_path / "data", *args), *words)


def test_a_misspelt_cut_is_one_line_naming_the_layer_before_the_dataset_is_read(tmp_path):
    # no dataset at all: the --cut mistake must be what the user hears, not the missing data nor Keras' traceback
    r = cnn("--data", tmp_path / "nothing", "--models", tmp_path / "models", "--arch", "mobilenet_v2",
            "--cut", "block_13_expand_rel", timeout=120)
    one_line_error(r.returncode, r.stderr, "--cut block_13_expand_rel", "did you mean block_13_expand_relu",
                   "out_relu")
    assert not (tmp_path / "models").exists()


def test_a_mistake_as_a_real_process_is_one_line_without_traceback(bad_data, tmp_path):
    r = cnn("--data", bad_data("label out of range"), "--models", tmp_path / "models", *TINY, timeout=120)
    one_line_error(r.returncode, r.stderr, "y_val.npy")
    r = cnn("--epochs", "0", timeout=120)
    one_line_error(r.returncode, r.stderr, "--epochs")


def test_resume_mistakes(cnn_in_process, data_root, run_a, tmp_path):
    code, err = cnn_in_process("--data", data_root, "--models", tmp_path / "empty", "--resume")
    one_line_error(code, err, "--resume", "no interrupted run")
    code, err = cnn_in_process("--data", data_root, "--models", tmp_path, "--resume", run_a.dir)
    one_line_error(code, err, "finished", "model.h5")
    # An interrupted run started with --epochs 2 (run A's record): --epochs 5 now contradicts it.
    stopped = tmp_path / "runs" / "20200101-000000"
    shutil.copytree(run_a.dir / "checkpoints", stopped / "checkpoints")
    code, err = cnn_in_process("--data", data_root, "--models", tmp_path, "--resume", stopped, "--epochs", 5)
    one_line_error(code, err, "epochs 5", "started with 2")
    # The same run on another dataset: refused before anything is trained.
    other = tmp_path / "other"
    shutil.copytree(data_root / "dataset", other / "dataset")
    summary = json.loads((other / "dataset" / "summary.json").read_text())
    (other / "dataset" / "summary.json").write_text(json.dumps({**summary, "fingerprint": "0" * 16}))
    code, err = cnn_in_process("--data", other, "--models", tmp_path, "--resume", stopped)
    one_line_error(code, err, "dataset_fingerprint", "start a new run")
    assert not (stopped / "logs").exists()
