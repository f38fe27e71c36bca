"""serve.py --backend URL: the model calls go to a TensorFlow Serving REST endpoint. tensorflow_model_server
cannot be installed here, so the backend is a second serve.py (it speaks the same REST API) on 127.0.0.1."""
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import servekit

from locator.runs import promote
from locator.serve.backend import Backend

ROOT = Path(__file__).resolve().parents[2]
S = servekit.SIZE


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A backend serving models/serving/, and a front serve.py on the same folder sending it the model calls."""
    models = tmp_path_factory.mktemp("backend") / "models"
    servekit.promoted(models)
    with servekit.Running(models, servekit.table_path(), poll=0.05) as back:
        with servekit.Running(models, servekit.table_path(), poll=0.05,
                              backend=Backend(back.url, "landmarks", timeout=5)) as front:
            front.back, front.models = back, models
            yield front


def test_place_answers_through_the_backend_are_the_backends(pair):
    photos = [servekit.jpeg(servekit.place_photo(c, 700 + c)) for c in range(3)]
    for photo in photos:
        direct = requests.post(f"{pair.back.url}/v1/locate", data=photo, headers={"Content-Type": "image/jpeg"})
        front = requests.post(f"{pair.url}/v1/locate", data=photo, headers={"Content-Type": "image/jpeg"})
        assert front.status_code == 200 and front.headers["X-Model-Version"] == "1"
        assert front.json() == direct.json()
    assert pair.back.store._current.batcher.rows >= 3   # the backend ran the model
    assert "landmarks version 1" in requests.get(pair.url + "/").text


def test_predict_and_metadata_pass_through(pair):
    x = np.stack([np.asarray(servekit.place_photo(c, 800 + c).resize((S, S))) for c in range(2)])
    url = "/v1/models/landmarks:predict"
    front = requests.post(pair.url + url, json={"instances": x.tolist()})
    direct = requests.post(pair.back.url + url, json={"instances": x.tolist()})
    np.testing.assert_allclose(front.json()["predictions"], direct.json()["predictions"], atol=1e-6)
    meta = "/v1/models/landmarks/metadata"
    assert requests.get(pair.url + meta).json() == requests.get(pair.back.url + meta).json()


def test_the_front_follows_the_backends_version(pair):
    promote.promote(pair.models, servekit.make_run(pair.models))
    deadline = time.monotonic() + 60
    while pair.store.version != 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pair.back.store.version == 2 and pair.store.version == 2
    r = requests.post(f"{pair.url}/v1/locate", data=servekit.jpeg(servekit.place_photo(1, 5)),
                      headers={"Content-Type": "image/jpeg"})
    assert r.json()["model"]["version"] == 2 and r.headers["X-Model-Version"] == "2"


def test_a_backend_that_is_gone_is_a_502_not_a_500(tmp_path):
    models = tmp_path / "models"
    servekit.promoted(models)
    back = servekit.Running(models, servekit.table_path()).__enter__()
    with servekit.Running(models, servekit.table_path(), backend=Backend(back.url, "landmarks", timeout=2)) as front:
        back.__exit__(None, None, None)
        r = requests.post(f"{front.url}/v1/locate", data=servekit.jpeg(servekit.place_photo(0, 1)),
                          headers={"Content-Type": "image/jpeg"})
        assert r.status_code == 502 and "did not answer" in r.json()["error"] and back.url in r.json()["error"]
        assert requests.get(f"{front.url}/v1/models/landmarks").status_code == 200


def test_serve_py_backend_mistakes_are_one_line(tmp_path):
    models = tmp_path / "models"
    servekit.promoted(models)
    for url, says in (("127.0.0.1:1", "give the REST endpoint's URL"), ("http://127.0.0.1:1", "did not answer")):
        r = subprocess.run([sys.executable, str(ROOT / "serve.py"), "--models", str(models), "--places",
                            str(servekit.table_path()), "--backend", url, "--port", "0"], capture_output=True,
                           text=True, cwd=tmp_path, timeout=120)
        assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, r.stderr
