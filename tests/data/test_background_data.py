"""Background photos (data/background/<folder>/) through preprocess.py and dataset.py, and photos labelled by a model
(--learn) kept out of val and test. Generated photos only."""
import csv

import numpy as np
import pytest
from genphotos import data, encode, fill, photo  # noqa: F401 (data: fixture)
from PIL import Image

from locator.core import places
from locator.core.fsio import read_jsonl
from locator.crawl.rawstore import RawFolder
from locator.data import dataset, preprocess
from locator.predict import learn
from locator.train import fit

BACKGROUND = [("castle;old castle", "landmark"), ("kitchen", "everyday")]


@pytest.fixture
def table(tmp_path):
    """Three places 00..02 and two background queries."""
    path = tmp_path / "places.xlsx"
    places.write(path, [[f"{i:02x}", f"Place {i}", f"place {i}", 10.0 + i, 20.0 + i, "", ""] for i in range(3)],
                 (), BACKGROUND)
    return places.load(path)


def add_bg(data, folder, blob, ext="jpg", source="commons") -> str:
    rec = RawFolder(data / "background" / folder).add(blob, ext, 0, 0, source=source, url=f"http://x/{len(blob)}")
    return f"background/{folder}/{rec['file']}"


def run(data, table):
    return preprocess.run(data, table, preprocess.Options(workers=1, progress=False))


def manifest(data) -> dict:
    return {r["raw_file"]: r for r in read_jsonl(data / "processed" / "manifest.jsonl")}


def places_filled(data, n=12):
    for p in range(3):
        fill(data, f"{p:02x}", range(100 * p + 1, 100 * p + 1 + n))


def test_background_photos_are_processed_like_place_photos(data, table):
    places_filled(data, 4)
    castle = [add_bg(data, "castle", encode(photo(s))) for s in range(500, 505)]
    castle.append(add_bg(data, "castle", b"not a photo at all" * 10))  # quarantined like any bad file
    kitchen = [add_bg(data, "kitchen", encode(photo(s))) for s in range(600, 603)]
    kitchen.append(add_bg(data, "kitchen", encode(photo(500), "PNG"), "png"))  # same pixels as a castle photo
    s = run(data, table)
    m = manifest(data)
    rec = m[castle[0]]
    assert rec["status"] == "kept" and rec["background"] == "castle" and rec["kind"] == "landmark"
    assert rec["index"] is None and rec["source"] == "commons"
    assert rec["file"] == castle[0].replace("background/", "processed/background/").replace(".jpg", ".png")
    assert (data / rec["file"]).is_file()
    assert m[kitchen[0]]["kind"] == "everyday" and m[kitchen[0]]["status"] == "kept"
    assert m[castle[-1]]["status"] == "rejected" and m[castle[-1]]["reason"] == "not_image"
    assert not (data / castle[-1]).exists()
    assert list((data / "rejected" / "not_image").iterdir())[0].name.startswith("castle_")
    # Background folders may share a photo (two queries, one result): a duplicate, not a conflict.
    dup = [m[castle[0]]["status"], m[kitchen[-1]]["status"]]
    assert sorted(dup) == ["duplicate", "kept"]
    # The summary table: one row per place, one per background kind.
    headers, rows, _ = preprocess.table_rows(s, table)
    by_name = {r[1]: dict(zip(headers, r)) for r in rows}
    assert by_name["background: landmark"]["read"] == 6 and by_name["background: landmark"]["not_image"] == 1
    assert by_name["background: everyday"]["read"] == 4 and by_name["Place 0"]["kept"] == 4
    # A second run changes nothing.
    assert not run(data, table).changed


def test_background_near_duplicate_of_a_place_photo_is_a_conflict(data, table):
    places_filled(data, 4)
    place_photo = photo(101)  # place 01's first photo
    copy = add_bg(data, "castle", encode(place_photo.resize((90, 68)), quality=70))  # a re-compressed copy
    other = add_bg(data, "castle", encode(photo(777)))
    run(data, table)
    m = manifest(data)
    assert m[copy]["status"] == "rejected" and m[copy]["reason"] == "conflict"
    assert "place 01" in m[copy]["detail"] and "raw/01/000001.jpg" in m[copy]["detail"]
    assert m["raw/01/000001.jpg"]["status"] == "kept"  # the place photo stays
    assert m[other]["status"] == "kept"
    assert (data / "rejected" / "conflict" / "castle_000001.jpg").is_file() and not (data / copy).exists()
    with open(data / "rejected.csv", newline="") as f:
        assert [r["reason"] for r in csv.DictReader(f) if r["file"] == copy] == ["conflict"]
    # Stable: a re-run keeps the place photo and the background photo rejected.
    run(data, table)
    m = manifest(data)
    assert m["raw/01/000001.jpg"]["status"] == "kept" and m[copy]["reason"] == "conflict"
    # ...and the dataset has the place photo, not the background copy.
    pl = dataset.build(data, table, progress=False)
    assert "raw/01/000001.jpg" in [r["raw_file"] for s in dataset.SPLITS for r in pl.rows[s]]
    assert copy not in [r["raw_file"] for s in dataset.SPLITS for r in pl.background[s]]


def test_dataset_packs_background_with_kinds(data, table, tmp_path):
    places_filled(data)
    for s in range(500, 530):
        add_bg(data, "castle", encode(photo(s)))
    kitchen = [add_bg(data, "kitchen", encode(photo(s))) for s in range(600, 630)]
    negatives = tmp_path / "negatives"
    (negatives / "street").mkdir(parents=True)
    for s in range(700, 720):
        (negatives / "street" / f"{s}.jpg").write_bytes(encode(photo(s)))
    run(data, table)
    pl = dataset.build(data, table, progress=False, negatives=negatives)
    dest = data / "dataset"
    m = manifest(data)
    total = 0
    for s in dataset.SPLITS:
        x = np.load(dest / f"xneg_{s}.npy")
        files = (dest / f"files_neg_{s}.txt").read_text().splitlines()
        kinds = (dest / f"kind_neg_{s}.txt").read_text().splitlines()
        assert len(x) == len(files) == len(kinds) and x.dtype == np.uint8 and x.shape[1:] == (64, 64, 3)
        total += len(x)
        for i, (f, k) in enumerate(zip(files, kinds)):
            if f.startswith("background/"):
                r = m[f]
                assert k == r["kind"] and dataset.split_of(r["group"]) == s  # the group-hash split
                png = np.asarray(Image.open(data / r["file"]).convert("RGB"))
                assert np.array_equal(x[i], png)
            else:
                assert k == "negatives" and f.startswith("street/")
        # the places' own arrays hold no background photo
        assert not [f for f in (dest / f"files_{s}.txt").read_text().splitlines() if f.startswith("background/")]
    assert total == 30 + 30 + 20
    summary = dataset.read_summary(dest)
    bg = summary["background"]
    assert sum(bg["landmark"].values()) == 30 and sum(bg["everyday"].values()) == 30
    assert sum(bg["negatives"].values()) == 20 and min(bg["landmark"]["train"], bg["everyday"]["train"]) > 15
    assert summary["negatives"] == {s: sum(bg[k][s] for k in bg) for s in dataset.SPLITS}
    # cnn.py's reader exposes the kind of every row.
    d = fit.load_data(dest)
    for s in dataset.SPLITS:
        assert len(d.neg_kind[s]) == len(d.neg[s])
        assert list(d.neg_kind[s]) == (dest / f"kind_neg_{s}.txt").read_text().splitlines()
    assert set(np.concatenate(list(d.neg_kind.values()))) == {"landmark", "everyday", "negatives"}

    # The fingerprint follows the background photos: one more -> a new dataset; the same -> up to date.
    fp = pl.fingerprint
    assert dataset.build(data, table, progress=False, negatives=negatives).up_to_date
    add_bg(data, "kitchen", encode(photo(650)))
    run(data, table)
    pl2 = dataset.build(data, table, progress=False, negatives=negatives)
    assert not pl2.up_to_date and pl2.fingerprint != fp
    assert sum(dataset.read_summary(dest)["background"]["everyday"].values()) == 31
    # A background photo removed from the sheet's folders (the query dropped) changes it too.
    places.write(table.path, [[p.index, p.name, ";".join(p.queries), p.latitude, p.longitude, "", ""]
                              for p in table], (), BACKGROUND[:1])
    table2 = places.load(table.path)
    run(data, table2)
    pl3 = dataset.build(data, table2, progress=False, negatives=negatives)
    assert pl3.fingerprint not in (fp, pl2.fingerprint)
    assert sum(dataset.read_summary(dest)["background"]["everyday"].values()) == 0
    assert kitchen[0] not in manifest(data)


def test_photos_labelled_by_a_model_never_reach_val_or_test(data, table):
    """--learn's automatic additions (source "user", labelled by the model) go to train only; photos a person
    labelled (data/review/<index>/ or an evaluation subfolder: labelled_by "person") follow the split rule."""
    places_filled(data)
    model_answer = {"known": True, "index": "00", "confidence": 0.97}
    learned = [learn.keep_upload(data, encode(photo(s)), model_answer, f"up{s}.jpg")["file"]
               for s in range(1000, 1040)]
    person = [learn.keep_upload(data, encode(photo(s)), {"known": False, "index": "01", "confidence": 0.2},
                                f"rev{s}.jpg", label="01")["file"] for s in range(2000, 2040)]
    run(data, table)
    m = manifest(data)
    assert {m[f]["source"] for f in learned + person} == {"user"}
    assert {m[f]["labelled_by"] for f in learned} == {"model"} and {m[f]["labelled_by"] for f in person} == {"person"}
    # The test can fail: by the hash alone, some learned photos would land in val or test.
    assert {dataset.split_of(m[f]["group"]) for f in learned} >= {"val", "test"}
    pl = dataset.build(data, table, progress=False)
    where = {r["raw_file"]: s for s in dataset.SPLITS for r in pl.rows[s]}
    assert {where[f] for f in learned} == {"train"}
    assert {where[f] for f in person} == {"train", "val", "test"}
    assert all(where[f] == dataset.split_of(m[f]["group"]) for f in person)
    assert dataset.read_summary(data / "dataset")["model_labelled"] == 40
    for s in ("val", "test"):
        files = (data / "dataset" / f"files_{s}.txt").read_text().splitlines()
        assert not set(files) & set(learned)
    # Crawled photos of the same place keep their splits (the rule moves no one else).
    crawled = [f for f in where if f.startswith("raw/00/") and m[f]["source"] == "folder"]
    assert all(where[f] == dataset.split_of(m[f]["group"]) or f in [r["raw_file"] for r in pl.rescued]
               for f in crawled)


def test_table_without_background_sheet_still_reads_old_data(data, tmp_path):
    """A table without the sheet: data/background is skipped with a warning, place photos as before."""
    path = tmp_path / "plain.xlsx"
    places.write(path, [[f"{i:02x}", f"Place {i}", f"place {i}", 10.0, 20.0, "", ""] for i in range(3)])
    t = places.load(path)
    places_filled(data, 4)
    add_bg(data, "castle", encode(photo(500)))
    run(data, t)
    assert not [r for r in manifest(data).values() if r.get("background")]
    assert not (data / "processed" / "background").exists()
