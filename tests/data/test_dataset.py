"""dataset: arrays match their file lists, stable leak-free splits, whole-folder swap, too-small places."""
import json

import numpy as np
import pytest
from genphotos import add, data, encode, fill, photo, table  # noqa: F401 (data, table: fixtures)
from PIL import Image

from locator.core.errors import UserError
from locator.core.fsio import append_jsonl, read_jsonl
from locator.data import dataset, preprocess


def prep(data, table):
    preprocess.run(data, table, preprocess.Options(workers=1, progress=False))


def build(data, table, **kw):
    return dataset.build(data, table, progress=False, **kw)


def split_of_files(dest) -> dict:
    return {f: s for s in dataset.SPLITS for f in (dest / f"files_{s}.txt").read_text().splitlines()}


@pytest.fixture
def filled(data, table):
    """3 places x 14 photos, and two near-duplicates of each place's first photo."""
    for p in range(3):
        seeds = range(100 * p + 1, 100 * p + 15)
        fill(data, f"{p:02x}", seeds, w=64, h=48)
        first = photo(100 * p + 1, 64, 48)
        add(data, f"{p:02x}", encode(first.resize((60, 45)), quality=70))
        add(data, f"{p:02x}", encode(first, "PNG"), "png")
    prep(data, table)
    return data


def test_arrays_match_their_file_lists_and_the_processed_pngs(filled, table):
    pl = build(filled, table)
    dest = filled / "dataset"
    byraw = {r["raw_file"]: r for r in read_jsonl(filled / "processed" / "manifest.jsonl")}
    seen = []
    for s in dataset.SPLITS:
        x, y, files = dataset.load_split(dest, s)
        assert x.dtype == np.uint8 and x.shape == (len(files), 64, 64, 3) and y.shape == (len(files),)
        assert len(files) >= 1
        for i, f in enumerate(files):
            assert y[i] == int(f.split("/")[1], 16) == int(byraw[f]["index"], 16)
            assert np.array_equal(x[i], np.asarray(Image.open(filled / byraw[f]["file"])))
        seen += files
    kept = {f for f, r in byraw.items() if r["status"] == "kept"}
    assert sorted(seen) == sorted(kept) and len(kept) == 3 * 14  # the near-duplicates are not rows
    assert dataset.load_classes(dest) == table.classes()
    summary = dataset.read_summary(dest)
    assert summary["fingerprint"] == pl.fingerprint == dataset.dataset_fingerprint(dest)
    assert summary["counts"] == {p.index: {s: sum(1 for f in seen if f.startswith(f"raw/{p.index}/") and
                                           split_of_files(dest)[f] == s) for s in dataset.SPLITS} for p in table}
    assert all(min(c.values()) >= 1 for c in summary["counts"].values())  # every place in every split


def test_no_near_duplicate_group_is_in_two_splits(filled, table):
    build(filled, table)
    where = split_of_files(filled / "dataset")
    groups = {}
    for r in read_jsonl(filled / "processed" / "manifest.jsonl"):
        if r["raw_file"] in where:
            groups.setdefault(r["group"], set()).add(where[r["raw_file"]])
    assert groups and all(len(s) == 1 for s in groups.values())
    for r in read_jsonl(filled / "processed" / "manifest.jsonl"):  # a duplicate's group sits where its photo does
        if r["status"] == "duplicate":
            assert r["raw_file"] not in where and r["group"] in groups


def test_photos_keep_their_split_when_new_photos_arrive(filled, table):
    first = build(filled, table)
    before = split_of_files(filled / "dataset")
    for p in range(3):
        fill(filled, f"{p:02x}", range(100 * p + 50, 100 * p + 70), w=64, h=48)
    prep(filled, table)
    second = build(filled, table)
    after = split_of_files(filled / "dataset")
    assert len(after) == len(before) + 60 and second.fingerprint != first.fingerprint
    rescued = {r["raw_file"] for r in first.rescued + second.rescued}
    for f, s in before.items():
        if f not in rescued:  # only a place too small for the hash rule borrows a photo (see dataset.py)
            assert after[f] == s, f


def test_the_hash_rule_and_its_rescue():
    keys = [f"k{i}" for i in range(400)]
    shares = {s: sum(dataset.split_of(k) == s for k in keys) / 400 for s in dataset.SPLITS}
    assert 0.74 < shares["train"] < 0.86 and 0.05 < shares["val"] < 0.15 and 0.05 < shares["test"] < 0.15
    assert dataset.split_of("k1") == dataset.split_of("k1") and dataset.split_of("k1", seed=1) in dataset.SPLITS
    trains = [k for k in keys if dataset.split_of(k) == "train"][:3]
    where, rescued = dataset.assign(trains)
    assert sorted(where.values()) == ["test", "train", "val"] and len(rescued) == 2
    nearest_test = max(trains, key=dataset.position)  # the train group closest to the test range moves there
    assert where[nearest_test] == "test"
    assert dataset.assign(trains[:2])[0] != {}  # two groups cannot fill three splits: still two splits
    assert len(set(dataset.assign(trains[:2])[0].values())) == 2


def test_a_place_too_small_is_an_error_or_left_out_on_request(data, table):
    fill(data, "00", range(1, 15), w=64, h=48)
    fill(data, "01", range(20, 34), w=64, h=48)
    fill(data, "02", [40, 41], w=64, h=48)
    prep(data, table)
    with pytest.raises(UserError, match="02 'Place 2'.*--min-per-class"):
        build(data, table)
    assert not (data / "dataset").exists()
    pl = build(data, table, min_per_class=3)
    assert pl.left_out == ["02"]
    classes = dataset.load_classes(data / "dataset")
    assert [c["class"] for c in classes] == [0, 1, 2] and classes[2]["left_out"] is True
    assert "left_out" not in classes[0]
    assert all(2 not in dataset.load_split(data / "dataset", s)[1] for s in dataset.SPLITS)
    with pytest.raises(UserError, match="every place was left out"):
        build(data, table, min_per_class=100)


def test_the_folder_is_swapped_in_whole(filled, table, monkeypatch):
    first = build(filled, table)
    dest = filled / "dataset"
    again = build(filled, table)
    assert again.up_to_date
    add(filled, "00", encode(photo(77, 64, 48)))
    prep(filled, table)
    calls = []

    def dies(data, r, size):
        calls.append(r)
        if len(calls) == 10:
            raise KeyboardInterrupt  # killed half-way through writing
        return np.zeros((size, size, 3), np.uint8)
    monkeypatch.setattr(dataset, "_load_png", dies)
    with pytest.raises(KeyboardInterrupt):
        build(filled, table)
    assert dataset.dataset_fingerprint(dest) == first.fingerprint  # the old dataset, untouched
    assert list(filled.glob(".dataset.tmp-*"))                     # the half-written one is beside it
    monkeypatch.undo()
    # Killed between the two renames: no data/dataset, the old one aside. The next run restores it first.
    dest.rename(filled / ".dataset.old-12345")
    pl = build(filled, table)
    assert dataset.dataset_fingerprint(dest) == pl.fingerprint != first.fingerprint
    assert not list(filled.glob(".dataset.*"))


def test_fingerprint_depends_on_content_not_order():
    e = [("train", "raw/00/000001.jpg", "ab", 0), ("test", "raw/01/000001.jpg", "cd", 1)]
    assert dataset.fingerprint(e, 64, "squash") == dataset.fingerprint(e[::-1], 64, "squash")
    assert dataset.fingerprint(e, 64, "squash") != dataset.fingerprint(e, 64, "crop")
    assert dataset.fingerprint(e, 64, "squash") != dataset.fingerprint([("val",) + e[0][1:], e[1]], 64, "squash")


@pytest.mark.parametrize("text,want", [("80/10/10", (0.8, 0.1, 0.1)), ("0.7/0.2/0.1", (0.7, 0.2, 0.1)),
                                       ("60,20,20", (0.6, 0.2, 0.2))])
def test_parse_split(text, want):
    assert dataset.parse_split(text) == pytest.approx(want)


@pytest.mark.parametrize("text", ["80/10", "80/20/0", "50/30/30", "a/b/c"])
def test_parse_split_rejects(text):
    with pytest.raises(UserError):
        dataset.parse_split(text)


def test_no_processed_photos_is_a_user_error(data, table):
    with pytest.raises(UserError, match="run preprocess.py first"):
        build(data, table)


def test_an_interrupted_preprocess_is_not_packed(filled, table):
    rec = dict(next(iter(read_jsonl(filled / "processed" / "manifest.jsonl"))), status=preprocess.PENDING)
    append_jsonl(filled / "processed" / "manifest.jsonl", [rec])  # what a killed run leaves: a checkpoint line
    with pytest.raises(UserError, match="interrupted"):
        build(filled, table)


def test_summary_lists_counts(filled, table):
    build(filled, table)
    summary = json.loads((filled / "dataset" / "summary.json").read_text())
    assert summary["size"] == 64 and summary["resize_mode"] == "squash" and summary["left_out"] == []
    assert sum(summary["totals"].values()) == 42


def negatives_folder(root, seeds):
    folder = root / "negatives"
    folder.mkdir()
    for s in seeds:
        (folder / f"{s}.png").write_bytes(encode(photo(s, 64, 48), "PNG"))
    return folder


def test_a_negative_photo_replaced_by_another_of_the_same_size_repacks(filled, table, tmp_path):
    negatives = negatives_folder(tmp_path, range(500, 520))
    first = build(filled, table, negatives=negatives)
    target = negatives / "500.png"
    other = bytearray(target.read_bytes())
    other[-20] ^= 0xFF  # same size, other bytes
    target.write_bytes(bytes(other))
    second = build(filled, table, negatives=negatives)
    assert not second.up_to_date and second.fingerprint != first.fingerprint


def test_missing_negative_arrays_make_the_dataset_stale(filled, table, tmp_path):
    negatives = negatives_folder(tmp_path, range(500, 520))
    build(filled, table, negatives=negatives)
    assert build(filled, table, negatives=negatives).up_to_date
    for f in (filled / "dataset").glob("xneg_*.npy"):
        f.unlink()
    assert not build(filled, table, negatives=negatives).up_to_date
    assert all((filled / "dataset" / f"xneg_{s}.npy").is_file() for s in dataset.SPLITS)
