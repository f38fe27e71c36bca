"""The attack table of docs/serving.md, one test (or more) a row: what a hostile client sends (huge or endless
requests, malformed framing, decoder traps, odd version folders, upload floods, cross-site posts), and what
serve.py must answer.
"""
import base64
import io
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import servekit
from PIL import Image

from locator.core import config, images
from locator.runs import export, promote
from locator.serve.server import Limits

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    models = tmp_path_factory.mktemp("attacked") / "models"
    servekit.promoted(models)
    with servekit.Running(models, servekit.table_path(), limits=Limits(receive_timeout=1.5)) as srv:
        yield srv


def _addr(url):
    host, port = url.split("//")[1].split(":")
    return host, int(port)


def exchange(url, data: bytes, wait: float = 3.0) -> bytes:
    """Send raw bytes, read until the server closes or `wait` seconds of silence: everything it answered."""
    with socket.create_connection(_addr(url), timeout=wait) as s:
        s.sendall(data)
        buf = b""
        try:
            while chunk := s.recv(65536):
                buf += chunk
        except (socket.timeout, ConnectionResetError):
            pass
    return buf


def statuses(buf: bytes) -> list:
    return [int(n) for n in re.findall(rb"HTTP/1\.[01] (\d{3}) ", buf)]


def png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


# --- 20,000 instances; 8,000,000 zero instances ---
def test_more_instances_than_max_batch_size_is_a_tf_serving_400_at_once(served):
    tiny = {"b64": base64.b64encode(png(servekit.place_photo(1, 2, 32, 32))).decode()}
    n = config.SERVE_MAX_BATCH_SIZE * 10
    t0 = time.monotonic()
    r = requests.post(f"{served.url}/v1/models/landmarks:predict", json={"instances": [tiny] * n})
    assert r.status_code == 400
    assert r.json() == {"error": f"Task size {n} is larger than maximum input batch size "
                                 f"{config.SERVE_MAX_BATCH_SIZE}"}
    assert time.monotonic() - t0 < 3  # refused before a single photo is decoded
    ok = requests.post(f"{served.url}/v1/models/landmarks:predict", json={"instances": [tiny] * 2})
    assert ok.status_code == 200 and len(ok.json()["predictions"]) == 2


def test_millions_of_zero_instances_are_refused_not_allocated(tmp_path):
    models = tmp_path / "models"
    servekit.promoted(models)
    body = b'{"instances": [' + b",".join([b"0"] * 7_000_000) + b"]}"   # 14 MB, under the 16 MB body cap
    with servekit.Running(models, servekit.table_path()) as srv:
        r = requests.post(f"{srv.url}/v1/models/landmarks:predict", data=body)
        assert r.status_code == 400 and "larger than maximum input batch size" in r.json()["error"]
        r = requests.post(f"{srv.url}/v1/models/landmarks:predict", data=b'{"inputs": [0, 0, 0]}')
        assert r.status_code == 400 and "expected" in r.json()["error"]


# --- slow clients ---
def test_trickling_clients_do_not_lock_others_out(tmp_path):
    models = tmp_path / "models"
    servekit.promoted(models)
    with servekit.Running(models, servekit.table_path()) as srv:
        slow = [socket.create_connection(_addr(srv.url)) for _ in range(64)]  # the old cap
        try:
            for s in slow:
                s.sendall(b"POST /v1/locate HTTP/1.1\r\nHost: x\r\n")
            time.sleep(0.5)
            for s in slow:
                s.sendall(b"X")
            t0 = time.monotonic()
            r = requests.get(f"{srv.url}/v1/models/landmarks", timeout=5)
            assert r.status_code == 200 and time.monotonic() - t0 < 2
        finally:
            for s in slow:
                s.close()


def test_a_request_that_takes_longer_than_the_deadline_is_cut_off(served):
    """One byte every 0.3 s never lets a per-read timeout fire; the whole-request deadline does (1.5 s here)."""
    t0 = time.monotonic()
    with socket.create_connection(_addr(served.url), timeout=10) as s:
        s.sendall(b"POST /v1/locate HTTP/1.1\r\nHost: x\r\n")
        answer = b""
        try:
            for _ in range(40):
                s.sendall(b"X-Slow: 1\r\n")
                time.sleep(0.3)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            answer = s.recv(65536)
        except (ConnectionResetError, socket.timeout):
            pass
    took = time.monotonic() - t0
    assert took < 5, f"held for {took:.1f} s"
    assert answer == b"" or statuses(answer) == [408]


# --- a 16-bit PNG ---
def test_16_bit_png_decodes_without_float64_and_within_the_byte_budget(tmp_path):
    path = tmp_path / "deep.png"
    Image.new("I;16", (6000, 6600), 40000).save(path)
    assert path.stat().st_size < 200_000
    code = ("import resource, sys; from locator.core import images; import numpy as np; "
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
            f"a = images.normalise({str(path)!r}, size=64); "
            "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024, a.dtype, a[0, 0, 0])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    grew_mb, dtype, value = out.stdout.split()
    assert dtype == "uint8" and int(value) == 40000 * 255 // 65535
    assert int(grew_mb) < 350, f"decoding one 16-bit photo took {grew_mb} MB more"  # 983 MB before, 265 MB now
    # the budget counts bytes, not pixels: a 16-bit photo costs twice an 8-bit grey one
    Image.new("I;16", (1000, 1000)).save(tmp_path / "small16.png")
    with pytest.raises(images.ImageRejected, match="bytes"):
        images.decode(tmp_path / "small16.png", max_bytes=1_500_000)
    Image.new("L", (1000, 1000)).save(tmp_path / "small8.png")
    images.decode(tmp_path / "small8.png", max_bytes=1_500_000)


# --- broken EXIF ---
def _exif_with_negative_altitude(orientation: int) -> bytes:
    """EXIF of an orientation tag and a GPS block whose altitude is a negative SRATIONAL (Pillow's rewrite of the
    EXIF after rotating packs it as an unsigned RATIONAL: struct.error)."""
    gps_off, data_off = 8 + 2 + 2 * 12 + 4, 8 + 2 + 2 * 12 + 4 + 2 + 12 + 4
    b = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 2)
    b += struct.pack("<HHII", 0x0112, 3, 1, orientation) + struct.pack("<HHII", 0x8825, 4, 1, gps_off)
    b += struct.pack("<I", 0) + struct.pack("<H", 1) + struct.pack("<HHII", 6, 10, 1, data_off)
    b += struct.pack("<I", 0) + struct.pack("<ii", -5, 1)
    return b"Exif\x00\x00" + b


@pytest.mark.parametrize("orientation", [2, 6, 8])
def test_broken_exif_is_decoded_and_turned_never_rejected(orientation, served):
    buf = io.BytesIO()
    servekit.place_photo(0, 8, 120, 80).save(buf, "JPEG", quality=90, exif=_exif_with_negative_altitude(orientation))
    photo = buf.getvalue()
    clean = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = orientation
    servekit.place_photo(0, 8, 120, 80).save(clean, "JPEG", quality=90, exif=exif.tobytes())
    img, size = images.decode(photo)
    assert size == (120, 80)
    want, _ = images.decode(clean.getvalue())      # turned as a photo with clean EXIF is
    assert img.size == want.size and np.array_equal(np.asarray(img), np.asarray(want))
    assert images.normalise(photo, size=32).shape == (32, 32, 3)
    r = requests.post(f"{served.url}/v1/locate", data=photo, headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 200 and r.json()["top3"]


# --- request smuggling ---
def test_a_body_on_get_or_an_unknown_path_is_never_run_as_a_request(served):
    inner = b"GET /v1/models/landmarks HTTP/1.1\r\nHost: x\r\n\r\n"
    for head in (b"GET /v1/models/landmarks HTTP/1.1", b"POST /nowhere HTTP/1.1", b"DELETE / HTTP/1.1"):
        got = exchange(served.url, head + b"\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(inner) + inner,
                       wait=1.5)
        assert len(statuses(got)) == 1, got[:300]


@pytest.mark.parametrize("lengths", [(b"5", b"6"), (b"5", b"5"), (b"5, 6",)])
def test_more_than_one_content_length_is_a_400(served, lengths):
    head = b"POST /v1/locate HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
    head += b"".join(b"Content-Length: %s\r\n" % n for n in lengths)
    got = exchange(served.url, head + b"\r\nhello" + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", wait=1.5)
    assert statuses(got) == [400], got[:300]
    assert "Content-Length" in json.loads(got.partition(b"\r\n\r\n")[2])["error"]


@pytest.mark.parametrize("head", [
    "POST /v1/locate HTTP/1.1\r\nHost: x\r\nContent-Length: \u0665\r\n\r\n",
    "POST /v1/locate HTTP/1.1\r\nHost: x\r\nContent-Length: " + "1" * 5000 + "\r\n\r\n",
    "POST /v1/locate HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: " + "9" * 5000 + "\r\n\r\n",
    "GET / HTTP/\u0661.\u0661\r\nHost: x\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + "a" * 100_000 + "\r\n\r\n",
])
def test_odd_lengths_and_versions_are_a_json_400(served, head):
    got = exchange(served.url, head.encode("utf-8"))
    assert statuses(got)[:1] in ([400], [431]), got[:200]
    assert "error" in json.loads(got.partition(b"\r\n\r\n")[2])


# --- nested multipart ---
def test_multipart_nested_deep_is_a_400(served):
    depth = 1000
    body = b""
    for i in range(depth):
        body += b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (i, i + 1)
    body += b"--b%d\r\nContent-Disposition: form-data; name=\"photo\"; filename=\"x.jpg\"\r\n\r\nhi\r\n" % depth
    for i in reversed(range(depth + 1)):
        body += b"--b%d--\r\n" % i
    r = requests.post(f"{served.url}/v1/locate", data=body,
                      headers={"Content-Type": "multipart/form-data; boundary=b0"})
    assert r.status_code == 400 and "error" in r.json()


# --- hot reload ---
def _wait_for(cond, seconds=30):
    deadline = time.monotonic() + seconds
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.05)
    return cond()


def test_an_odd_folder_name_does_not_stop_reloading(tmp_path):
    models = tmp_path / "models"
    servekit.promoted(models)
    base = models / "serving" / "landmarks"
    for odd in ("\u00b2", "\u0661", "01", "7.tmp", "-3"):
        (base / odd).mkdir()
    assert export.versions(base) == [1]
    with servekit.Running(models, servekit.table_path(), poll=0.05) as srv:
        promote.promote(models, servekit.make_run(models))
        assert _wait_for(lambda: srv.store.version == 2)


def test_a_version_copied_in_two_steps_is_retried_and_its_error_has_no_paths(tmp_path):
    models = tmp_path / "models"
    servekit.promoted(models)
    base = models / "serving" / "landmarks"
    with servekit.Running(models, servekit.table_path(), poll=0.05) as srv:
        shutil.copytree(base / "1", tmp_path / "v2")
        (base / "2").mkdir()
        shutil.copy2(tmp_path / "v2" / "saved_model.pb", base / "2")      # step 1: the graph, no variables yet
        assert _wait_for(lambda: any(s["version"] == "2" and s["state"] == "END" and s["status"]["error_message"]
                                     for s in srv.store.status()))
        bad = next(s for s in srv.store.status() if s["version"] == "2")["status"]["error_message"]
        assert str(tmp_path) not in bad and not re.search(r"(^|[\s'\"(])/\w", bad), bad
        r = requests.get(f"{srv.url}/v1/models/landmarks/versions/2")
        assert str(tmp_path) not in r.text
        for item in (tmp_path / "v2").iterdir():                           # step 2: the rest
            if item.name != "saved_model.pb":
                (shutil.copytree if item.is_dir() else shutil.copy2)(item, base / "2" / item.name)
        assert _wait_for(lambda: srv.store.version == 2)


# --- --learn ---
def _learner(tmp_path, **kw):
    import serve

    return serve.learner(tmp_path / "data", **kw)


def test_the_same_doubtful_photo_uploaded_at_once_is_kept_once(tmp_path):
    models = tmp_path / "models"
    servekit.promoted(models, threshold=1.01)
    photo = servekit.jpeg(servekit.place_photo(1, 77))
    out = [None] * 10
    with servekit.Running(models, servekit.table_path(), learn=_learner(tmp_path)) as srv:
        start = threading.Barrier(10)

        def one(i):
            start.wait()
            out[i] = requests.post(f"{srv.url}/v1/locate", files={"photo": (f"trip {i}.jpg", photo, "image/jpeg")})
        threads = [threading.Thread(target=one, args=(i,)) for i in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert all(r.status_code == 200 for r in out)
    assert len(os.listdir(tmp_path / "data" / "review")) == 1
    assert sum(r.json()["learned"]["kept"] == "review" for r in out) == 1


def test_long_upload_names_are_shortened_on_a_character_boundary(tmp_path):
    from locator.predict import learn

    for name in ("\U00020000" * 120 + ".jpg", "é" * 300 + ".jpg", "a/" * 200 + "b.jpg"):
        short = learn.review_name("ab" * 32, name)
        assert len(short.encode("utf-8")) <= 120 and short.endswith(".jpg"), short
    models = tmp_path / "models"
    servekit.promoted(models, threshold=1.01)
    with servekit.Running(models, servekit.table_path(), learn=_learner(tmp_path)) as srv:
        r = requests.post(f"{srv.url}/v1/locate", files={"photo": ("\U00020000" * 120 + ".jpg",
                                                                   servekit.jpeg(servekit.place_photo(0, 3)))})
    assert r.json()["learned"]["kept"] == "review"


def test_only_confident_answers_become_training_photos(tmp_path):
    models = tmp_path / "models"
    servekit.promoted(models)   # threshold 0: every photo is "known"
    rng = np.random.default_rng(0)
    noise = [servekit.jpeg(Image.fromarray(rng.integers(0, 256, (60, 80, 3), np.uint8))) for _ in range(10)]
    with servekit.Running(models, servekit.table_path(), learn=_learner(tmp_path)) as srv:
        answers = [requests.post(f"{srv.url}/v1/locate", data=p, headers={"Content-Type": "image/jpeg"}).json()
                   for p in noise]
    for a in answers:
        kept = a["learned"]["kept"]
        assert kept == ("raw" if a["confidence"] >= config.LEARN_MIN_CONFIDENCE else "review"), a
    assert any(a["learned"]["kept"] == "review" for a in answers)


def test_a_form_posted_from_another_site_is_refused(tmp_path):
    models = tmp_path / "models"
    servekit.promoted(models)
    photo = servekit.jpeg(servekit.place_photo(0, 5))
    with servekit.Running(models, servekit.table_path(), learn=_learner(tmp_path)) as srv:
        for header in ({"Origin": "https://evil.example"}, {"Referer": "https://evil.example/page"},
                       {"Origin": "null"}):
            r = requests.post(f"{srv.url}/v1/locate", files={"photo": ("x.jpg", photo)}, headers=header)
            assert r.status_code == 403 and "another site" in r.json()["error"]
        assert not (tmp_path / "data").exists()
        same = requests.post(f"{srv.url}/v1/locate", files={"photo": ("x.jpg", photo)}, headers={
            "Origin": srv.url, "Referer": srv.url + "/"})
        assert same.status_code == 200
        api = requests.post(f"{srv.url}/v1/locate", data=photo, headers={"Content-Type": "image/jpeg"})
        assert api.status_code == 200


def _post(url, photo):
    return requests.post(f"{url}/v1/locate", data=photo, headers={"Content-Type": "image/jpeg"})


def test_a_full_learning_quota_still_answers_and_says_the_photo_was_not_kept(tmp_path):
    models = tmp_path / "models"
    servekit.promoted(models, threshold=1.01)
    photos = [servekit.jpeg(servekit.place_photo(i % 3, 900 + i)) for i in range(6)]
    quota = sum(len(p) for p in photos[:3]) + 10
    with servekit.Running(models, servekit.table_path(), learn=_learner(tmp_path, quota=quota)) as srv:
        got = [_post(srv.url, p) for p in photos]
        again = _post(srv.url, photos[0])   # a duplicate, once the quota is full
    assert [r.status_code for r in got] == [200] * 6
    answers = [r.json() for r in got]
    assert [a["learned"]["kept"] for a in answers] == ["review"] * 3 + [None] * 3
    for a in answers[3:]:
        assert a["name"] == "unknown" and len(a["top3"]) == 3 and a["model"]["version"] == 1
        assert a["learned"]["why"].startswith("the learning quota is full"), a["learned"]
    assert again.status_code == 200 and again.json()["learned"] == {"kept": None, "why": "already in review"}
    stored = sum(f.stat().st_size for f in (tmp_path / "data" / "review").iterdir())
    assert stored <= quota


def test_a_labelled_photo_and_its_copy_in_raw_count_once_against_the_quota(tmp_path):
    from locator.predict import learn

    data = tmp_path / "data"
    labelled = servekit.jpeg(servekit.place_photo(0, 950))
    (data / "review" / "00").mkdir(parents=True)
    (data / "review" / "00" / "mine.jpg").write_bytes(labelled)
    # what predict.py --learn does with a photo a person labelled: a copy in data/raw/00/, the file stays
    copied = learn.keep_upload(data, labelled, {"known": False, "index": "01", "confidence": 0.3},
                               "review/00/mine.jpg", label="00")
    assert copied["kept"] == "raw" and (data / "review" / "00" / "mine.jpg").exists()
    new = servekit.jpeg(servekit.place_photo(1, 951))
    models = tmp_path / "models"
    servekit.promoted(models, threshold=1.01)
    quota = len(labelled) + len(new) + 10
    with servekit.Running(models, servekit.table_path(), learn=_learner(tmp_path, quota=quota)) as srv:
        r = _post(srv.url, new)
    assert r.status_code == 200 and r.json()["learned"]["kept"] == "review", r.text
