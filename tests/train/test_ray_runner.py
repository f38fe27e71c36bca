"""The embedding step on Ray (cnn.py --runner ray, locator/train/raydist.py) against the local runner: Ray's local
cluster with 2 workers embeds generated photos into the same cache files, byte for byte; a worker killed mid-run
loses nothing and duplicates nothing; the switch reaches cnn.py from pipeline.py, and the local runner never
imports ray.

Byte for byte, not within a tolerance: both runners call embed.embed_decoded, and TF Lite's XNNPACK kernels give
the same float32 bits whatever the batch size (Ray's batches are cut differently) and thread count (a worker runs
one thread, the local runner one per core), so the NPY files are identical; the first test would show otherwise.

Needs the Ray extra (pip install -r requirements-ray.txt; the README's test command installs it). EfficientNet-Lite0
at 64 px keeps each run to seconds; most of the time is Ray starting and each worker loading TensorFlow."""
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import ray
from genphotos import add, encode, photo, write_table
from PIL import Image

import cnn
import pipeline
from locator.core import fsio
from locator.core.errors import UserError
from locator.data import dataset, preprocess
from locator.job import steps
from locator.runs import runs
from locator.train import embed, raydist

REPO = Path(__file__).resolve().parents[2]
LITE0 = "efficientnet_lite0"
PHOTOS = 40


@pytest.fixture(scope="module")
def cluster():
    """Ray's local cluster, two workers (one a CPU), shut down after this module's tests."""
    raydist.loopback()   # the cluster's services listen on 127.0.0.1 only
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING",
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}})
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """PHOTOS generated JPEGs of a few sizes (the centre crop differs), one byte-identical copy under another name."""
    folder = tmp_path_factory.mktemp("photos")
    out = []
    for i in range(PHOTOS):
        path = folder / f"{i:03d}.jpg"
        path.write_bytes(encode(photo(i, 64 + 16 * (i % 4), 48 + 8 * (i % 3))))
        out.append(path)
    copy = folder / "copy-of-000.jpg"
    copy.write_bytes(out[0].read_bytes())
    return out + [copy]


def lite0():
    return embed.Embedder(LITE0, size=64)


def cache(data: Path) -> dict:
    """relative path -> bytes of every cache file (NPY), temporary files left out."""
    root = embed.embeddings_dir(data)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.npy"))
            if not p.name.startswith(fsio.TMP_PREFIX)}


@pytest.fixture(scope="module")
def local_data(photos, tmp_path_factory):
    """A data root whose cache the local runner filled with every photo."""
    data = tmp_path_factory.mktemp("local") / "data"
    embed.embed(photos, data, lite0(), progress=False)
    return data


@pytest.fixture(scope="module")
def local_cache(local_data):
    return cache(local_data)


def with_tflite(local_data: Path, data: Path) -> Path:
    """An empty data root holding the backbone's TF Lite file the local runner converted (a conversion costs
    seconds; cnn.py's test below converts on the head as a first run does)."""
    tflite = lite0().tflite(local_data).relative_to(local_data)
    (data / tflite).parent.mkdir(parents=True)
    shutil.copy(local_data / tflite, data / tflite)
    return data


def test_the_ray_runner_writes_the_local_runners_cache_files_byte_for_byte(cluster, photos, local_data, local_cache,
                                                                          tmp_path):
    data = with_tflite(local_data, tmp_path / "data")
    stats = raydist.fill(photos, data, lite0(), workers=2, batch=8, progress=False)
    assert stats == {"cached": 0, "embedded": len(photos)}   # the copy is listed (a photo of two rows) ...
    got = cache(data)
    assert len(got) == PHOTOS                                # ... and embedded once: the key is its content
    assert got.keys() == local_cache.keys()
    differ = [k for k in got if got[k] != local_cache[k]]
    assert not differ, f"{len(differ)} NPY files differ from the local runner's, e.g. {differ[0]}"
    assert raydist.fill(photos, data, lite0(), workers=2, progress=False) == {"cached": len(photos), "embedded": 0}
    # what frozen.train reads afterwards: every photo from the cache, nothing embedded again
    st = {}
    arrays = embed.embed(photos, data, lite0(), progress=False, stats=st)
    assert st == {"cached": len(photos), "embedded": 0} and arrays.shape == (len(photos), 2, 1280)


def test_a_workers_mistake_comes_back_as_the_users_one_line_not_a_ray_trace(photos, local_data, tmp_path):
    """The worker class in this process (Ray runs the same code): a photo it cannot decode, or other weights than
    the head's (another cache folder), comes back in the batch's error column; fill raises it as a UserError."""
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a photo")
    head = lite0()
    with_tflite(local_data, tmp_path / "data")
    kw = dict(name=LITE0, weights=None, size=64, data=str(tmp_path / "data"), threads=1)
    out = raydist.EmbedWorker(key=head.key, **kw)({"path": np.array([str(photos[1]), str(bad)])})
    assert "broken.jpg: not_image" in out["error"][0] and "preprocess.py quarantines" in out["error"][0]
    assert not cache(tmp_path / "data")
    out = raydist.EmbedWorker(key="efficientnet_lite0-64-000000000000", **kw)({"path": np.array([str(photos[1])])})
    assert "has other efficientnet_lite0 weights" in out["error"][0] and not cache(tmp_path / "data")
    assert raydist.EmbedWorker(key=head.key, **kw)({"path": np.array([str(photos[1])])})["error"][0] == ""
    assert len(cache(tmp_path / "data")) == 1


def test_a_worker_killed_mid_run_loses_nothing_and_duplicates_nothing(cluster, photos, local_cache, tmp_path):
    """A worker dies (os._exit, as a kill -9 would end it) after writing its first batch and leaving a temporary
    file behind, before Ray hears the batch is done: Ray restarts it and retries the batch, and the run ends with
    each photo embedded exactly once. A third of the photos were cached before: only the rest are embedded."""
    data = tmp_path / "data"
    embed.embed(photos[:PHOTOS // 3], data, lite0(), progress=False)
    marker = tmp_path / "died"

    class DiesOnce(raydist.EmbedWorker):   # defined here: Ray ships it to the workers by value
        def __call__(self, batch):
            out = super().__call__(batch)
            try:
                fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:   # the restarted worker, or the other one: carry on
                return out
            os.write(fd, str(len(batch["path"])).encode())
            os.close(fd)
            a_write_cut_short = tempfile.mkstemp(prefix=fsio.TMP_PREFIX, suffix=".npy", dir=self.folder)
            os.write(a_write_cut_short[0], b"\x93NUMPY")
            os._exit(1)

    stats = raydist.fill(photos, data, lite0(), workers=2, batch=6, progress=False, worker=DiesOnce)
    assert marker.exists(), "no worker died: the test tested nothing"
    cached = PHOTOS // 3 + 1                                 # the copy of photo 0 is cached too
    assert stats == {"cached": cached, "embedded": len(photos) - cached}
    left = [p for p in embed.embeddings_dir(data).rglob(f"{fsio.TMP_PREFIX}*")]
    assert len(left) == 1                                    # the dead worker's temporary file, never counted
    got = cache(data)
    assert len(got) == PHOTOS and got == local_cache         # every photo once, as the local runner writes it
    for path in embed.embeddings_dir(data).rglob("*.npy"):
        if not path.name.startswith(fsio.TMP_PREFIX):
            arr = np.load(path)
            assert arr.shape == (2, 1280) and arr.dtype == np.float32
    # a re-run continues from the cache: nothing left to embed
    assert raydist.fill(photos, data, lite0(), workers=2, progress=False) == {"cached": len(photos), "embedded": 0}


def test_cnn_py_with_runner_ray_embeds_on_the_cluster_and_the_head_finds_every_photo_cached(cluster, tmp_path):
    """cnn.py --runner ray as a child process, given this module's cluster (--ray-address): Ray embeds the dataset's
    photos, then frozen.train reads every one from the cache and the run is an ordinary embedding run."""
    table = write_table(tmp_path / "places.xlsx", 3)
    data, models = tmp_path / "data", tmp_path / "models"
    for place in range(3):
        for seed in range(12):
            tint = np.array([1.0 if c == place else 0.3 for c in range(3)], np.float32)
            img = (np.asarray(photo(1000 * place + seed, 64, 48), np.float32) * tint).clip(0, 255).astype(np.uint8)
            add(data, f"{place:02x}", encode(Image.fromarray(img)))
    preprocess.run(data, table, preprocess.Options(size=32, workers=1, progress=False))
    dataset.build(data, table, progress=False)
    r = subprocess.run([sys.executable, str(REPO / "cnn.py"), "--data", data, "--models", models, "--backbones", LITE0,
                        "--runner", "ray", "--ray-address", ray.get_runtime_context().gcs_address,
                        "--ray-workers", "2", "--no-progress", "--no-promote"], capture_output=True, text=True,
                       timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"{LITE0} on Ray: 36 embedded, 0 cached" in r.stderr
    meta = runs.read_metadata(next(runs.runs_dir(models).iterdir()))
    assert meta["training"]["head"]["embeddings"][LITE0] == {"cached": 36, "embedded": 0}   # all from Ray's work
    assert meta["metrics"]["test_accuracy"] >= 0.6 and ray.is_initialized()   # cnn.py left this cluster running


def test_the_runner_switch_reaches_cnn_py_from_pipeline_py_and_its_toml(tmp_path):
    toml = tmp_path / "pipeline.toml"
    toml.write_text('runner = "ray"\n')
    args, _, _ = pipeline.parse_args(["--config", str(toml)])
    argv = steps.commands(args)["train"]
    assert argv[argv.index("--runner") + 1] == "ray"
    assert "--runner" not in steps.commands(pipeline.parse_args([])[0])["train"]   # unset: cnn.py's default
    a = cnn.parse_args(["--runner", "ray", "--ray-workers", "3", "--ray-address", "head:6379"])
    assert (a.runner, a.ray_workers, a.ray_address) == ("ray", 3, "head:6379")
    assert cnn.parse_args([]).runner == "local"


@pytest.mark.parametrize("argv, says", [
    (["--runner", "ray", "--arch", "paper"], "--runner ray embeds photos for --arch embedding"),
    (["--ray-workers", "2"], "go with --runner ray"),
    (["--runner", "ray", "--ray-workers", "0"], "--ray-workers must be at least 1"),
])
def test_a_runner_flag_that_makes_no_sense_is_one_line(argv, says):
    with pytest.raises(UserError, match=says):   # run() prints it as one `error: ...` line, exit 2
        cnn.parse_args(argv)


def test_the_local_runner_never_imports_ray():
    """The scripts and the local runner's modules, imported in a fresh process: ray stays out (a machine without
    the extra runs them)."""
    code = ("import sys; import cnn, pipeline; from locator.train import embed, frozen; "
            "cnn.parse_args(['--runner', 'local']); print(sorted(m for m in sys.modules if m.split('.')[0] == 'ray'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
