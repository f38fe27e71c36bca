"""A tiny trained model run, exported for serving, and a real serve.py server on 127.0.0.1 for the serving tests.

Training costs seconds, so a run is made once per test session (functools.cache: this module is imported once,
whichever test file asks first) and copied into each test's own models folder.
"""
import atexit
import functools
import io
import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np
from PIL import Image

from locator.core import places
from locator.core.fsio import atomic_write_json
from locator.runs import promote, runs
from locator.train import finish, fit

SIZE = 32
PLACES = 3
COLOURS = [(200, 40, 40), (40, 170, 60), (40, 70, 210)]   # one dominant colour a place: learnt in 2 epochs


def place_photo(cls: int, seed: int, w: int = 80, h: int = 60) -> Image.Image:
    """A photo of place `cls`: its colour with texture and noise, so the tiny net can tell the places apart."""
    rng = np.random.default_rng(seed)
    base = np.array(COLOURS[cls], np.float32)
    grid = rng.normal(0, 35, (6, 8, 3)).astype(np.float32)
    tex = np.asarray(Image.fromarray(np.clip(grid + 128, 0, 255).astype(np.uint8)).resize((w, h)), np.float32) - 128
    return Image.fromarray(np.clip(base + tex + rng.normal(0, 10, (h, w, 3)), 0, 255).astype(np.uint8))


def jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _dataset(tmp: Path) -> fit.Data:
    from locator.core import images

    x, y, files = {}, {}, {}
    for split, n, offset in (("train", 24, 0), ("val", 6, 1000), ("test", 6, 2000)):
        rows = [(c, offset + c * 100 + i) for c in range(PLACES) for i in range(n)]
        x[split] = np.stack([images.normalise(place_photo(c, s), size=SIZE) for c, s in rows])
        y[split] = np.array([c for c, _ in rows], np.int32)
        files[split] = [f"raw/{c:02x}/{s:06d}.jpg" for c, s in rows]
    rows = [[f"{i:02x}", f"Place {i}", f"place {i}", 37.5 + i, 127.0 + i, f"{i} Test Road, Seoul", ""]
            for i in range(PLACES)]
    attractions = [["Museum", 37.51, 127.0, "museum", ""], ["Park", 37.5, 127.03, "park", ""],
                   ["Tower", 38.6, 128.0, "view", ""], ["Market", 37.52, 127.01, "market", ""]]
    places.write(tmp / "places.xlsx", rows, attractions)
    return fit.Data(x, y, files, places.load(tmp / "places.xlsx").classes(), "test-fingerprint", "squash")


@functools.cache
def _trained() -> Path:
    """Train the tiny net once; the run folder (model.h5 + metadata.json, as cnn.py writes them)."""
    root = Path(tempfile.mkdtemp(prefix="servekit-"))
    atexit.register(shutil.rmtree, root, True)
    data = _dataset(root)
    models = root / "models"
    run = runs.new_run(models)
    s = fit.Settings(arch="compact", epochs=12, batch=16, precision="float32", lr=1e-2, augment=0.0,
                       jit=False, extra=dict(widths=(8, 16), stem=8))
    net, seconds, _ = fit.train(data, run, s, progress=False)
    unknown = {"score": "max_softmax", "threshold": 0.0, "true_accept": 1.0, "false_accept": None,
               "calibrated_on": "val"}  # every photo gets a place: the serving tests check answers, not rejections
    finish.write_run(net, data, run, s, seconds, plots=False, unknown=unknown)
    return run


def make_run(models: Path, threshold: float | None = None, name: str | None = None) -> Path:
    """A copy of the session's trained run in `models`/runs/ (a new run name), optionally with another unknown
    threshold or model name in its metadata.json."""
    src = _trained()
    dst = runs.new_run(models)
    for f in ("model.h5", "metadata.json"):
        shutil.copy2(src / f, dst / f)
    if threshold is not None or name is not None:
        meta = runs.read_metadata(dst)
        if threshold is not None:
            meta["unknown"]["threshold"] = threshold
        if name is not None:
            meta["name"] = name
        atomic_write_json(dst / "metadata.json", meta)
    return dst


@functools.cache
def _promoted(threshold) -> Path:
    """A models folder where a copy of the trained run was promoted (so exported) once, per threshold."""
    models = _trained().parents[2] / f"promoted-{threshold}"
    promote.promote(models, make_run(models, threshold=threshold))
    return models


def promoted(models: Path, threshold: float | None = None) -> Path:
    """`models` as promote.promote leaves it (runs/<run>, serving/landmarks/1, current), copied from a promotion
    made once per session: for tests that need a served model, not a promotion. Returns the run."""
    src = _promoted(threshold)
    shutil.copytree(src, models, dirs_exist_ok=False)
    return runs.current(models)


def table_path() -> Path:
    """The place table the tiny model was trained with (three places, four attractions near the first)."""
    return _trained().parents[2] / "places.xlsx"


class Running:
    """A real server in a thread, on 127.0.0.1 and a free port; `with Running(...) as srv: srv.url`."""

    def __init__(self, models, places, poll: float = 0.0, learn=None, limits=None, options=None,
                 name: str = "landmarks", backend=None):
        from locator.runs import export
        from locator.serve.modelstore import BatchOptions, ModelStore
        from locator.serve.server import make_server

        self.store = ModelStore(export.model_dir(models, name), places, options or BatchOptions(),
                                poll=poll, backend=backend).start()
        self.server = make_server(self.store, "127.0.0.1", 0, limits, learn)
        self.url = self.server.url
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.store.stop()
