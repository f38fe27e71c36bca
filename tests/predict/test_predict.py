"""predict.py with a small model trained here on generated photos: each place has its own colour, and "everyday"
photos (grey textures) train the background output, so the model's answers are known in advance."""
import csv
import hashlib
import importlib.util
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from clikit import one_line_error
from PIL import Image

from locator.core import config, images, places
from locator.core.errors import UserError
from locator.core.fsio import read_jsonl
from locator.predict import gps
from locator.train import fit, quickrun

REPO = Path(__file__).resolve().parents[2]
SIZE = 32
COLOURS = [(200, 40, 40), (40, 170, 60), (40, 70, 210)]   # place 00 red, 01 green, 02 blue
PLACES = [  # real coordinates, so that distances can be checked against the map
    ["00", "Seoul City Hall", "seoul city hall", 37.5663, 126.9779, "110 Sejong-daero, Jung-gu, Seoul", ""],
    ["01", "Gyeongbokgung", "gyeongbokgung; gyeongbok palace", 37.5796, 126.9770, "161 Sajik-ro, Jongno-gu", ""],
    ["02", "N Seoul Tower", "n seoul tower", 37.5512, 126.9882, "105 Namsangongwon-gil, Yongsan-gu", ""],
]
ATTRACTIONS = [
    ["Bukchon Hanok Village", 37.5826, 126.9830, "village", ""],
    ["Deoksugung", 37.5658, 126.9751, "palace", ""],
    ["Myeongdong", 37.5636, 126.9826, "shopping", ""],
    ["Namsangol Hanok Village", 37.5593, 126.9946, "village", ""],
    ["Cheonggyecheon", 37.5696, 126.9784, "stream", ""],
]


def place_photo(cls: int, seed: int, w: int = 80, h: int = 60) -> Image.Image:
    """A photo of place `cls`: its colour under a random texture and noise."""
    rng = np.random.default_rng(seed)
    tex = Image.fromarray(np.clip(rng.normal(128, 35, (6, 8, 3)), 0, 255).astype(np.uint8)).resize((w, h))
    img = np.array(COLOURS[cls]) + np.asarray(tex, np.float32) - 128 + rng.normal(0, 10, (h, w, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def everyday(seed: int, w: int = 80, h: int = 60) -> Image.Image:
    """None of our places: a grey texture at a random brightness."""
    rng = np.random.default_rng(seed)
    grid = rng.normal(0, 60, (6, 8, 1)).repeat(3, 2) + rng.normal(0, 8, (6, 8, 3)) + rng.uniform(60, 200)
    img = np.asarray(Image.fromarray(np.clip(grid, 0, 255).astype(np.uint8)).resize((w, h)), np.float32)
    return Image.fromarray(np.clip(img + rng.normal(0, 10, (h, w, 3)), 0, 255).astype(np.uint8))


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """The place table and one trained run (3 places + background), shared by every test."""
    root = tmp_path_factory.mktemp("predict")
    places.write(root / "places.xlsx", PLACES, ATTRACTIONS)
    x = np.stack([images.normalise(place_photo(c, s), size=SIZE) for c in range(3) for s in range(c * 100,
                                                                                                   c * 100 + 24)])
    y = np.repeat(np.arange(3), 24)
    neg = np.stack([images.normalise(everyday(5000 + s), size=SIZE) for s in range(24)])
    # Each photo 4 times an epoch: enough steps for batch norm's running statistics to settle, few epoch ends.
    data = quickrun.data_from_arrays(np.tile(x, (4, 1, 1, 1)), np.tile(y, 4), places.load(root / "places.xlsx")
                                     .classes(), np.tile(neg, (4, 1, 1, 1)), val=(x, y))
    s = fit.Settings(arch="compact", epochs=6, batch=8, precision="float32", lr=1e-2, label_smoothing=0.0,
                       augment=0.0, jit=False, extra=dict(widths=(8, 16), stem=8))
    run = quickrun.quick_run(root / "models", data, s)
    return {"places": root / "places.xlsx", "run": run, "table": places.load(root / "places.xlsx")}


def _load_script():
    spec = importlib.util.spec_from_file_location("predict_script", REPO / "predict.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


predict = _load_script()


def save(img: Image.Image, path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path


def run_predict(world, folder, *args, data=None):
    """predict.py's main() in this process (TensorFlow loads once per session)."""
    argv = [str(folder), "--model", str(world["run"]), "--places", str(world["places"]), "--no-progress",
            *map(str, args)]
    if data is not None:
        argv += ["--data", str(data)]
    return predict.main(argv)


def red_pixels(png) -> int:
    """Pixels of the contact sheet's "unknown" red."""
    from locator.predict.outputs import _RED

    return int(np.all(np.asarray(Image.open(png).convert("RGB")) == _RED, axis=-1).sum())


def read_json(path) -> dict:
    return json.loads(Path(path).read_text())


# --- outputs ---

def test_every_format_parses_back_and_bad_files_do_not_stop_the_others(world, tmp_path, capsys):
    folder = tmp_path / "photos"
    for c in range(3):
        save(place_photo(c, 700 + c), folder / f"p{c}.jpg", quality=90)
        save(place_photo(c, 800 + c), folder / "deeper" / "more" / f"q{c}.png")  # recursive, and PNG
    (folder / "notes.txt").write_text("not a photo")
    (folder / "empty.jpg").write_bytes(b"")
    full = (folder / "p0.jpg").read_bytes()
    (folder / "cut.jpg").write_bytes(full[: len(full) // 2])
    (folder / ".hidden.jpg").write_bytes(full)  # hidden files are not photos to predict
    out = tmp_path / "out"
    code = run_predict(world, folder, "--threshold", 0, "--csv", out / "r.csv", "--json", out / "r.json")
    assert code == 0
    stdout = capsys.readouterr().out

    doc = read_json(out / "r.json")
    by_file = {p["file"]: p for p in doc["photos"]}
    assert sorted(by_file) == ["cut.jpg", "deeper/more/q0.png", "deeper/more/q1.png", "deeper/more/q2.png",
                               "empty.jpg", "notes.txt", "p0.jpg", "p1.jpg", "p2.jpg"]
    assert {f: by_file[f]["reason"] for f in ("cut.jpg", "empty.jpg", "notes.txt")} == \
        {"cut.jpg": "truncated", "empty.jpg": "empty", "notes.txt": "not_image"}
    for c in range(3):
        for f in (f"p{c}.jpg", f"deeper/more/q{c}.png"):
            p = by_file[f]
            assert (p["status"], p["index"], p["name"]) == ("place", f"{c:02x}", PLACES[c][1]), p
            assert p["top3"][0]["index"] == p["index"] and len(p["top3"]) == 3
            assert p["top3"][0]["confidence"] >= p["top3"][1]["confidence"] >= p["top3"][2]["confidence"]
            assert (p["latitude"], p["longitude"], p["address"]) == (PLACES[c][3], PLACES[c][4], PLACES[c][5])
            assert [a["name"] for a in p["nearby"]] and p["gps"] is None
    assert doc["counts"] == {"photos": 9, "place": 6, "unknown": 0, "unreadable": 3}
    assert doc["model"] == world["run"].name and doc["threshold"] == 0

    with open(out / "r.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["file"] for r in rows] == [p["file"] for p in doc["photos"]]
    for r in rows:
        p = by_file[r["file"]]
        assert r["status"] == p["status"]
        if p["status"] == "place":
            assert (r["index"], r["name"], float(r["confidence"])) == (p["index"], p["name"], p["confidence"])
            assert r["top2_index"] == p["top3"][1]["index"] and float(r["latitude"]) == p["latitude"]
            assert r["nearby"].startswith(p["nearby"][0]["name"])
        else:
            assert r["reason"] == p["reason"] and r["index"] == ""

    for f in by_file:  # the readable table names every photo, the bad ones with their reason
        assert f in stdout
    assert "unreadable: truncated" in stdout and "6 placed, 0 unknown, 3 unreadable" in stdout
    assert "Seoul City Hall  (37.56630, 126.97790)  110 Sejong-daero" in stdout

    sheet = Image.open(out / "r.png")  # beside the results by default
    assert sheet.width == config.SHEET_COLUMNS * (config.SHEET_THUMB + 44) and sheet.height > 2 * config.SHEET_THUMB
    assert red_pixels(out / "r.png") < 100  # no unknown here: no red frame
    assert not list(out.glob(".tmp-*"))


def test_tfserving_gives_every_photo_its_row_in_input_order_and_unreadable_ones_an_error(world, tmp_path, capsys,
                                                                                          caplog):
    folder = tmp_path / "photos"
    order = [2, 0, None, 1, 1]  # None: an unreadable file between readable ones
    for i, c in enumerate(order):
        if c is None:
            (folder / f"{i}_broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
        else:
            save(place_photo(c, 900 + i), folder / f"{i}.jpg")
    assert run_predict(world, folder, "--format", "tfserving", "--no-sheet") == 0
    captured = capsys.readouterr()
    rows = json.loads(captured.out)["predictions"]  # stdout is the JSON and nothing else
    assert len(rows) == len(order)  # one row per input photo, so row i is photo i
    for row, c in zip(rows, order):
        if c is None:
            assert set(row) == {"error"} and row["error"].startswith("2_broken.jpg: ")
            continue
        assert len(row) == len(PLACES) + 1  # the places in class order, then the background output
        assert math.isclose(sum(row), 1.0, abs_tol=1e-4)
        assert int(np.argmax(row)) == c
    assert "2_broken.jpg" in caplog.text and "unreadable" in caplog.text


# --- "not one of our places" ---

def test_everyday_photos_are_unknown_and_the_threshold_flag_overrides(world, tmp_path, capsys):
    folder = tmp_path / "photos"
    for i in range(6):
        save(everyday(9000 + i), folder / f"everyday{i}.jpg")
        save(place_photo(i % 3, 1000 + i), folder / f"place{i}.jpg")
    stored = read_json(world["run"] / "metadata.json")["unknown"]["threshold"]
    assert 0 < stored < 1
    run_predict(world, folder, "--json", tmp_path / "stored.json")
    doc = read_json(tmp_path / "stored.json")
    unknown = sum(p["status"] == "unknown" for p in doc["photos"])
    assert red_pixels(tmp_path / "stored.png") >= unknown * 4 * config.SHEET_THUMB * 3  # unknowns framed in red
    assert doc["threshold"] == pytest.approx(stored)
    status = {p["file"]: p for p in doc["photos"]}
    assert all(status[f"everyday{i}.jpg"]["status"] == "unknown" for i in range(6))
    assert all(status[f"everyday{i}.jpg"]["index"] is None for i in range(6))
    accepted = [status[f"place{i}.jpg"]["index"] == f"{i % 3:02x}" for i in range(6)]
    assert sum(accepted) >= 5  # calibrated to keep 95% of the validation photos

    # --threshold: exactly the photos under it become unknown (the background still rejects everyday photos)
    conf = sorted(status[f"place{i}.jpg"]["confidence"] for i in range(6))
    t = (conf[2] + conf[3]) / 2
    run_predict(world, folder, "--json", tmp_path / "t.json", "--threshold", t)
    doc = read_json(tmp_path / "t.json")
    assert doc["threshold"] == pytest.approx(t)
    for p in doc["photos"]:
        if p["file"].startswith("place"):
            assert (p["status"] == "unknown") == (p["confidence"] < t), p
        else:
            assert p["status"] == "unknown"
    out = capsys.readouterr().out
    assert "unknown (best: " in out


def test_predictor_rejects_photos_unlike_any_place(world):
    from locator.predict.predictor import Predictor

    p = Predictor.load(world["run"], world["table"], threshold=0.0)
    x = np.stack([p.pixels(everyday(9100 + i)) for i in range(4)] + [p.pixels(place_photo(1, 9200))])
    probs = p.probabilities(x)
    decided = [p.decide(row)[0] for row in probs]
    assert decided == [None, None, None, None, 1]


# --- nearby attractions and GPS ---

def test_haversine_against_known_distances():
    assert places.haversine_km(48.8566, 2.3522, 51.5074, -0.1278) == pytest.approx(343.5, abs=0.5)  # Paris-London
    assert places.haversine_km(0, 0, 0, 90) == pytest.approx(math.pi / 2 * places.EARTH_RADIUS_KM)
    assert places.haversine_km(10, 30, 11, 30) == pytest.approx(111.195, abs=0.01)  # one degree of latitude


def test_nearby_attractions_come_in_distance_order(world, tmp_path):
    folder = tmp_path / "photos"
    save(place_photo(2, 1300), folder / "tower.jpg")
    run_predict(world, folder, "--threshold", 0, "--json", tmp_path / "r.json", "--nearby", 3)
    answer = read_json(tmp_path / "r.json")["photos"][0]
    assert answer["index"] == "02"
    tower = PLACES[2]
    want = sorted((places.haversine_km(tower[3], tower[4], a[1], a[2]), a[0]) for a in ATTRACTIONS)[:3]
    assert [(a["name"], a["km"]) for a in answer["nearby"]] == [(n, round(km, 2)) for km, n in want]
    assert [a["name"] for a in answer["nearby"]][0] == "Namsangol Hanok Village"  # ~1.1 km below the tower
    assert answer["nearby"][0]["kind"] == "village"


def test_nearby_keeps_to_a_radius_and_says_when_nothing_is_within_it(world, tmp_path, capsys):
    folder = tmp_path / "photos"
    save(place_photo(2, 1310), folder / "tower.jpg")
    run_predict(world, folder, "--threshold", 0, "--json", tmp_path / "r.json", "--nearby-km", 1.2)
    assert [a["name"] for a in read_json(tmp_path / "r.json")["photos"][0]["nearby"]] == ["Namsangol Hanok Village"]
    capsys.readouterr()
    run_predict(world, folder, "--threshold", 0, "--json", tmp_path / "r.json", "--nearby-km", 0.5)
    assert read_json(tmp_path / "r.json")["photos"][0]["nearby"] == []
    assert "nearby: no listed attraction within 0.5 km" in capsys.readouterr().out
    # the default radius: an attraction 1,159 km away (the shipped table's Victoria Memorial case) is not nearby
    table = world["table"]
    far = places.Attraction("Far away", table.places[2].latitude + 10.42, table.places[2].longitude, "memorial")
    wide = places.PlaceTable(table.path, table.places, [far])
    assert places.haversine_km(37.5512, 126.9882, far.latitude, far.longitude) > 1100
    assert wide.nearby(table.places[2]) == [] and wide.nearby(table.places[2], radius_km=2000)[0][0] == far


def test_gps_dms_to_decimal():
    assert gps.dms_to_decimal((37, 33, 59.4), "N") == pytest.approx(37.5665)
    assert gps.dms_to_decimal((33, 51, 54.5), b"S") == pytest.approx(-33.865139, abs=1e-6)
    assert gps.dms_to_decimal((0, 7, 40.1), "W") == pytest.approx(-0.127806, abs=1e-6)
    with pytest.raises(ValueError):
        gps.dms_to_decimal((37, 33, 59.4), "X")


def _with_gps(img, lat, lon, path, status=None):
    exif = Image.Exif()
    g = exif.get_ifd(gps.GPS_IFD)

    def dms(v):
        d, m = int(abs(v)), int(abs(v) * 60 % 60)
        return (float(d), float(m), round((abs(v) * 3600) % 60, 2))

    g[gps.LAT_REF], g[gps.LAT] = ("N" if lat >= 0 else "S"), dms(lat)
    g[gps.LON_REF], g[gps.LON] = ("E" if lon >= 0 else "W"), dms(lon)
    if status:
        g[gps.STATUS] = status
    return save(img, path, exif=exif, quality=90)


def test_exif_gps_is_reported_with_the_nearest_place(world, tmp_path):
    folder = tmp_path / "photos"
    # a green photo (Gyeongbokgung) taken 60 m from the palace's point
    _with_gps(place_photo(1, 1400), 37.5801, 126.9774, folder / "phone.jpg")
    _with_gps(place_photo(1, 1401), 37.5801, 126.9774, folder / "void.jpg", status="V")  # no fix: ignored
    save(place_photo(1, 1402), folder / "plain.jpg")
    assert gps.read_gps(folder / "phone.jpg") == pytest.approx((37.5801, 126.9774), abs=1e-5)
    run_predict(world, folder, "--threshold", 0, "--json", tmp_path / "r.json", "--csv", tmp_path / "r.csv")
    photos = {p["file"]: p for p in read_json(tmp_path / "r.json")["photos"]}
    g = photos["phone.jpg"]["gps"]
    assert (g["latitude"], g["longitude"]) == pytest.approx((37.5801, 126.9774), abs=1e-5)
    assert g["nearest"]["index"] == "01" and g["nearest"]["name"] == "Gyeongbokgung"
    assert g["nearest"]["km"] == pytest.approx(places.haversine_km(37.5801, 126.9774, 37.5796, 126.9770), abs=0.01)
    assert photos["void.jpg"]["gps"] is None and photos["plain.jpg"]["gps"] is None
    with open(tmp_path / "r.csv", newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["file"] == "phone.jpg")
    assert row["gps_nearest_index"] == "01" and float(row["gps_latitude"]) == pytest.approx(37.5801)


# --- learning ---

def _sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_learn_twice_adds_each_photo_once_and_review_labels_are_picked_up(world, tmp_path, capsys):
    folder, data = tmp_path / "photos", tmp_path / "data"
    a = save(place_photo(0, 1500), folder / "a.jpg")
    shutil.copy(a, folder / "a copy.jpg")  # the same bytes twice: kept once
    b = save(place_photo(2, 1501), folder / "sub" / "b.png")
    grey = save(everyday(1502), folder / "grey.jpg")
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}

    run_predict(world, folder, "--learn", "--threshold", 0, "--learn-min-confidence", 0, data=data)
    assert "learn: 2 copied into data/raw/ (00: 1, 02: 1), 1 copied to data/review/" in capsys.readouterr().out
    m0, m2 = read_jsonl(data / "raw" / "00" / "manifest.jsonl"), read_jsonl(data / "raw" / "02" / "manifest.jsonl")
    assert len(m0) == 1 and len(m2) == 1
    for rec, src, index in ((m0[0], a, "00"), (m2[0], b, "02")):
        assert rec["source"] == "user" and rec["predicted_index"] == index and 0 < rec["confidence"] <= 1
        assert rec["sha256"] == _sha(src) == _sha(data / "raw" / index / rec["file"])
        assert rec["labelled_by"] == "model" and (rec["width"], rec["height"]) == (80, 60)
    assert m2[0]["file"] == "000001.png" and m2[0]["original"] == "sub/b.png"
    waiting = list((data / "review").iterdir())
    assert len(waiting) == 1 and _sha(waiting[0]) == _sha(grey) and waiting[0].name.endswith("-grey.jpg")
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before  # copied, never moved

    # the same folder again: nothing new
    run_predict(world, folder, "--learn", "--threshold", 0, "--learn-min-confidence", 0, data=data)
    assert "learn: 0 copied into data/raw/, 0 copied to data/review/ for a person to label, 4 already kept" \
        in capsys.readouterr().out
    assert len(read_jsonl(data / "raw" / "00" / "manifest.jsonl")) == 1 and len(list((data / "review").iterdir())) == 1

    # a person labels the grey photo as place 01 by moving it into review/01/: the next --learn picks it up
    (data / "review" / "01").mkdir()
    labelled = waiting[0].rename(data / "review" / "01" / waiting[0].name)
    run_predict(world, folder, "--learn", "--threshold", 0, "--learn-min-confidence", 0, data=data)
    assert "1 labelled photo(s) found in data/review/<index>/" in capsys.readouterr().out
    m1 = read_jsonl(data / "raw" / "01" / "manifest.jsonl")
    assert len(m1) == 1 and m1[0]["sha256"] == _sha(grey) and m1[0]["labelled_by"] == "person"
    assert m1[0]["predicted_index"] is None and m1[0]["source"] == "user"
    assert labelled.exists()  # the person's file stays where they put it
    run_predict(world, folder, "--learn", "--threshold", 0, "--learn-min-confidence", 0, data=data)  # still once
    assert len(read_jsonl(data / "raw" / "01" / "manifest.jsonl")) == 1
    assert not (data / "review" / "grey.jpg").exists() and len(list((data / "review").glob("*.jpg"))) == 0


def test_keep_upload_answers_what_it_kept(tmp_path):
    """serve.py --learn's entry point, one photo at a time (no model needed: the answer is given)."""
    from locator.predict import learn

    data = tmp_path / "data"
    blob = (save(place_photo(0, 1550), tmp_path / "a.jpg")).read_bytes()
    accepted = {"known": True, "index": "00", "confidence": 0.91}   # over LEARN_MIN_CONFIDENCE: into raw/
    unsure = {"known": True, "index": "00", "confidence": 0.6}      # accepted, but under it: review/
    assert learn.keep_upload(data, b"\xff\xd8\xff unsure", unsure, "u.jpg")["kept"] == "review"
    assert learn.keep_upload(data, blob, accepted, "a.jpg") == {"kept": "raw", "index": "00",
                                                                "file": "raw/00/000001.jpg"}
    assert learn.keep_upload(data, blob, accepted) == {"kept": None, "why": "already in raw/00"}
    rejected = {"known": False, "index": None, "confidence": 0.2}
    assert learn.keep_upload(data, blob, rejected) == {"kept": None, "why": "already in raw/00"}
    other = (save(everyday(1551), tmp_path / "b.png")).read_bytes()
    kept = learn.keep_upload(data, other, rejected, "b.png")
    assert kept["kept"] == "review" and (data / kept["file"]).read_bytes() == other
    assert learn.keep_upload(data, other, rejected, "again.png") == {"kept": None, "why": "already in review"}
    assert [r["confidence"] for r in read_jsonl(data / "raw" / "00" / "manifest.jsonl")] == [0.91]


# --- evaluation mode ---

def test_evaluation_accuracy_matches_a_hand_count(world, tmp_path, capsys):
    folder = tmp_path / "labelled"
    for i in range(3):
        save(place_photo(0, 1600 + i), folder / "00" / f"{i}.jpg")              # by hex index
    for i in range(2):
        save(place_photo(1, 1610 + i), folder / "gyeongbokgung" / f"{i}.jpg")   # by first query term
    save(place_photo(0, 1620), folder / "gyeongbokgung" / "mislabelled.jpg")   # a red photo filed as 01
    for i in range(2):
        save(everyday(1630 + i), folder / "unknown" / f"{i}.jpg")
    save(place_photo(2, 1640), folder / "loose.jpg")                            # unlabelled: not counted
    run_predict(world, folder, "--threshold", 0, "--json", tmp_path / "r.json")
    out = capsys.readouterr().out
    doc = read_json(tmp_path / "r.json")
    ev = doc["evaluation"]
    labelled = [p for p in doc["photos"] if p.get("label") not in (None, "unknown")]
    hand = sum(p["top3"][0]["index"] == p["label"] for p in labelled) / len(labelled)
    assert len(labelled) == 6 and hand == pytest.approx(5 / 6)
    assert ev["test_accuracy"] == pytest.approx(hand, abs=1e-4) and ev["test_photos"] == 6
    per = {p["index"]: p for p in ev["per_place"]}
    assert (per["00"]["precision"], per["00"]["recall"]) == (pytest.approx(0.75), 1.0)
    assert (per["01"]["precision"], per["01"]["recall"]) == (1.0, pytest.approx(2 / 3, abs=1e-4))
    assert ev["unknown_photos"] == 2 and ev["false_accept"] == 0
    assert "test accuracy 83.33%" in out and "false accept" in out
    assert Image.open(tmp_path / "r_confusion.png").size[0] > 100


def test_eval_flag_without_labelled_folders_is_a_user_error(world, tmp_path):
    save(place_photo(0, 1700), tmp_path / "photos" / "holiday" / "a.jpg")
    with pytest.raises(UserError, match="--eval: no photo"):
        run_predict(world, tmp_path / "photos", "--eval")


# --- defaults and mistakes ---

def test_defaults_are_test_image_and_the_current_model(world, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    save(place_photo(1, 1800), tmp_path / "test_image" / "a.jpg")
    (tmp_path / "models" / "runs").mkdir(parents=True)
    shutil.copytree(world["run"], tmp_path / "models" / "runs" / world["run"].name)
    (tmp_path / "models" / "current").write_text(world["run"].name + "\n")  # the contract: a one-line file
    assert predict.main(["--places", str(world["places"]), "--no-progress", "--threshold", "0"]) == 0
    out = capsys.readouterr().out
    assert "a.jpg" in out and "Gyeongbokgung" in out
    assert (tmp_path / "test_image_results.png").exists()  # beside the folder, not inside it


def test_an_empty_test_image_shows_a_labelled_demo_on_test_split_photos(world, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "test_image").mkdir()
    (tmp_path / "test_image" / ".gitkeep").write_text("")  # as in a fresh clone
    (tmp_path / "models" / "runs").mkdir(parents=True)
    shutil.copytree(world["run"], tmp_path / "models" / "runs" / world["run"].name)
    (tmp_path / "models" / "current").write_text(world["run"].name + "\n")
    split = []
    for c in range(3):
        for k in range(5):  # five test photos a place: three are shown
            raw = f"raw/{c:02x}/{k + 1:06d}.jpg"
            save(place_photo(c, 2100 + 10 * c + k), tmp_path / "data" / raw)
            split.append(raw)
    split.append("raw/00/000099.jpg")  # listed but gone (quarantined since): skipped
    (tmp_path / "data" / "dataset").mkdir()
    (tmp_path / "data" / "dataset" / "files_test.txt").write_text("\n".join(split) + "\n")
    assert predict.main(["--places", str(world["places"]), "--no-progress", "--threshold", "0"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("DEMO: test_image is empty, so here is what predict.py does on 9 photos of the test split")
    assert out.count("test split/raw/") == 9 and "test split/raw/00/000004.jpg" not in out
    last = out.strip().splitlines()[-1]
    assert last.startswith("DEMO: ") and "of 9 test-split photos placed at the place they show" in last
    assert "put the photos to locate into test_image/" in last
    assert (tmp_path / "test_image_demo.png").exists() and not (tmp_path / "test_image_results.png").exists()


def test_a_corrupt_model_file_is_a_user_error(world, tmp_path):
    run = tmp_path / "runs" / "broken"
    shutil.copytree(world["run"], run)
    (run / "model.h5").write_bytes(b"not hdf5")
    save(place_photo(0, 1900), tmp_path / "photos" / "a.jpg")
    with pytest.raises(UserError, match="cannot load the model"):
        predict.main([str(tmp_path / "photos"), "--model", str(run), "--places", str(world["places"])])


def script(*args, cwd):
    return subprocess.run([sys.executable, str(REPO / "predict.py"), "--no-progress", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_mistakes_are_one_line_and_exit_2_and_an_empty_folder_is_nothing_to_do(world, tmp_path):
    places_arg = ["--places", world["places"]]
    save(place_photo(0, 2000), tmp_path / "photos" / "a.jpg")
    one_line_error(script("missing", *places_arg, cwd=tmp_path), "missing", "not a folder")
    one_line_error(script("photos", *places_arg, "--threshold", "1.5", cwd=tmp_path), "--threshold")
    one_line_error(script("photos", *places_arg, "--sheet", "s.jpg", cwd=tmp_path), "--sheet", ".png")
    one_line_error(script("photos", *places_arg, cwd=tmp_path), "no current model", "cnn.py")
    one_line_error(script("photos", *places_arg, "--model", tmp_path, cwd=tmp_path), "not a model run")
    other = tmp_path / "other.xlsx"  # a table with a fourth place: not the table the model knows
    places.write(other, PLACES + [["03", "Namdaemun", "namdaemun", 37.5599, 126.9753, "", ""]])
    one_line_error(script("photos", "--places", other, "--model", world["run"], cwd=tmp_path),
                   "do not match", "3 classes in the model, 4 places")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".gitkeep").write_text("")
    r = script("empty", *places_arg, cwd=tmp_path)
    assert r.returncode == 0 and "nothing to do" in r.stderr and not r.stdout, r.stderr
    assert "put the photos to locate into empty/" in r.stderr and "no current model" in r.stderr  # what, where
