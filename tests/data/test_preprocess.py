"""preprocess: bad files, odd formats, duplicates, conflicts, incremental runs (generated photos only)."""
import csv
import random
import struct
import zlib

import numpy as np
import pytest
from genphotos import add, data, encode, fill, photo, table  # noqa: F401 (data, table: fixtures)
from PIL import Image

from locator.core import images
from locator.core.fsio import read_jsonl
from locator.data import preprocess


def run(data, table, **kw):
    kw.setdefault("workers", 1)
    return preprocess.run(data, table, preprocess.Options(progress=False, **kw))


def manifest(data) -> dict:
    return {r["raw_file"]: r for r in read_jsonl(data / "processed" / "manifest.jsonl")}


def rejected_rows(data) -> list:
    with open(data / "rejected.csv", newline="") as f:
        return list(csv.DictReader(f))


def png(data, rec) -> np.ndarray:
    return np.asarray(Image.open(data / rec["file"]))


def diff(a, b) -> float:
    return float(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).mean())


def bomb_png(w=100_000, h=100_000) -> bytes:
    """A real PNG header claiming w x h pixels (10 gigapixels) over a few bytes of data: a decompression bomb."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 1024)) + chunk(b"IEND", b""))


BAD = {  # name -> (bytes, ext, reason)
    "zero": (b"", "jpg", "empty"),
    "text": (b"this is a web page, not a photo\n" * 4, "jpg", "not_image"),
    "truncated": (encode(photo(90, 300, 200))[:2500], "jpg", "truncated"),
    "tiny": (encode(photo(91, 20, 20), "PNG"), "png", "too_small"),
    "bomb": (bomb_png(), "png", "too_large"),
}


def test_bad_files_are_moved_and_listed_with_their_reason(data, table):
    good = fill(data, "00", [1, 2])
    bad = {name: add(data, "00", blob, ext) for name, (blob, ext, _) in BAD.items()}
    s = run(data, table)
    m = manifest(data)
    assert [m[f]["status"] for f in good] == ["kept", "kept"]
    listed = {row["file"]: row["reason"] for row in rejected_rows(data)}
    for name, raw_file in bad.items():
        reason = BAD[name][2]
        assert m[raw_file]["status"] == "rejected" and m[raw_file]["reason"] == reason, name
        assert listed[raw_file] == reason
        assert not (data / raw_file).exists()                        # moved out of raw/ ...
        assert list((data / "rejected" / reason).glob("00_*"))       # ... into rejected/<reason>/, never deleted
        assert not (data / preprocess.processed_path(raw_file)).exists()
    assert s.count("00", "rejected") == len(BAD) and s.count("00", "kept") == 2


def test_keep_rejected_only_lists_and_a_rerun_does_not_list_again(data, table):
    fill(data, "00", [1])
    bad = add(data, "00", *BAD["text"][:2])
    run(data, table, keep_rejected=True)
    assert (data / bad).exists() and len(rejected_rows(data)) == 1
    s = run(data, table, keep_rejected=True)
    assert sum(s.new.values()) == 0 and not s.changed and len(rejected_rows(data)) == 1
    run(data, table)  # without the flag, the listed file is moved now
    assert not (data / bad).exists() and list((data / "rejected" / "not_image").iterdir())


def test_odd_formats_are_decoded_upright_in_rgb(data, table):
    src = photo(20, 120, 80)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: the viewer must rotate it 90 degrees clockwise
    rotated = add(data, "00", encode(src, exif=exif.tobytes()))
    cmyk = add(data, "00", encode(photo(21).convert("CMYK"), quality=95))
    quantized = photo(22, 96, 96).quantize(63)
    a = np.array(quantized)
    a[:, :48] = 63  # left half: the transparent palette entry
    pal = Image.fromarray(a, "P")
    pal.putpalette(quantized.getpalette()[:189] + [0, 0, 0])  # entry 63 is black: were it opaque, we would see
    palette = add(data, "00", encode(pal, "PNG", transparency=63), "png")
    frames = [photo(23).quantize(255).convert("RGB"), photo(24).quantize(255).convert("RGB")]
    gif = add(data, "01", encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100), "gif")
    gray = np.asarray(photo(25).convert("L"))
    deep = add(data, "01", encode(Image.fromarray(gray.astype(np.uint16) * 257), "PNG"), "png")
    rgba = photo(26).convert("RGBA")
    rgba.putalpha(Image.fromarray(np.where(np.arange(96)[None, :] < 48, 0, 255).repeat(72, 0).astype(np.uint8)))
    alpha = add(data, "01", encode(rgba, "PNG"), "png")
    run(data, table)
    m = manifest(data)
    assert all(m[f]["status"] == "kept" for f in (rotated, cmyk, palette, gif, deep, alpha))

    out = png(data, m[rotated])
    upright = images.resize(src.transpose(Image.Transpose.ROTATE_270), 64, "squash")
    assert diff(out, upright) < 6 < 20 < diff(out, images.resize(src, 64, "squash"))
    assert m[rotated]["width"] == 120  # the stored size; the PNG is what the viewer sees
    assert diff(png(data, m[cmyk]), images.resize(photo(21), 64, "squash")) < 8
    out = png(data, m[palette])
    assert out[:, :28].min() >= 250  # transparency laid on white
    assert diff(out[:, 36:], np.asarray(images.resize(quantized.convert("RGB"), 64, "squash"))[:, 36:]) < 4
    out = png(data, m[gif])
    assert diff(out, images.resize(frames[0], 64, "squash")) < 4 < 20 < diff(out, images.resize(frames[1], 64))
    out = png(data, m[deep])
    assert out.shape == (64, 64, 3) and (out[..., 0] == out[..., 2]).all()
    assert diff(out, images.resize(Image.fromarray(gray).convert("RGB"), 64, "squash")) < 2
    out = png(data, m[alpha])
    assert out[:, :28].min() >= 250 and diff(out[:, 36:], np.asarray(images.resize(photo(26), 64))[:, 36:]) < 4
    for f in (rotated, cmyk, palette, gif, deep, alpha):  # THE invariant: exactly what predict/serve will see
        assert np.array_equal(png(data, m[f]), images.normalise(data / f))


@pytest.mark.parametrize("mode", ["crop", "pad"])
def test_every_mode_gives_what_normalise_gives(data, table, mode):
    files = [add(data, "00", encode(photo(30, 160, 90))), add(data, "00", encode(photo(31, 60, 100), "PNG"), "png")]
    run(data, table, mode=mode, size=48)
    m = manifest(data)
    for f in files:
        assert np.array_equal(png(data, m[f]), images.normalise(data / f, 48, mode))


def test_exact_and_near_duplicates_are_kept_once_in_one_group(data, table):
    src = photo(40, 120, 90)
    original = add(data, "00", encode(src, "PNG"), "png")
    resaved = add(data, "00", encode(src, "PNG", compress_level=1), "png")         # other bytes, same pixels
    near = add(data, "00", encode(src.resize((96, 72)), quality=60))               # re-encoded and resized
    other = fill(data, "00", [41])[0]
    s = run(data, table)
    m = manifest(data)
    assert len({m[f]["group"] for f in (original, resaved, near)}) == 1
    assert m[other]["group"] != m[original]["group"] and m[other]["status"] == "kept"
    assert m[original]["group"] == min(m[f]["raw_sha256"] for f in (original, resaved, near))
    kept = [f for f in (original, resaved) if m[f]["status"] == "kept"]
    assert len(kept) == 1  # the biggest photo is kept; the two same-size copies tie, broken by sha256
    twin = resaved if kept == [original] else original
    assert m[twin]["duplicate"] == "exact" and m[twin]["duplicate_of"] == kept[0]
    assert m[near]["duplicate"] == "near" and m[near]["duplicate_of"] == kept[0]
    assert (s.count("00", "kept"), s.count("00", "duplicate", "exact"), s.count("00", "duplicate", "near")) == (2, 1, 1)


def test_a_photo_under_two_places_is_a_conflict_for_all_its_copies(data, table):
    fill(data, "00", [50, 51])
    a = add(data, "00", encode(photo(52, 120, 90)))
    b = add(data, "01", encode(photo(52, 120, 90).resize((100, 75)), quality=70))
    c = fill(data, "01", [53])[0]
    run(data, table)
    m = manifest(data)
    for f in (a, b):
        assert m[f]["status"] == "rejected" and m[f]["reason"] == "conflict" and not (data / f).exists()
        assert not (data / preprocess.processed_path(f)).exists()
    assert m[c]["status"] == "kept"
    assert {r["file"] for r in rejected_rows(data) if r["reason"] == "conflict"} == {a, b}
    assert len(list((data / "rejected" / "conflict").iterdir())) == 2
    # A later copy of the same photo joins the conflict: the group stays rejected.
    d = add(data, "00", encode(photo(52, 110, 80)))
    run(data, table)
    assert manifest(data)[d]["reason"] == "conflict"


def test_a_rerun_with_nothing_new_does_no_work(data, table):
    fill(data, "00", range(60, 66))
    fill(data, "01", range(66, 70))
    first = run(data, table, workers=2)  # the process pool
    assert sum(first.new.values()) == 10 and first.changed
    mf = data / "processed" / "manifest.jsonl"
    stamps = {p: p.stat().st_mtime_ns for p in [mf, *(data / "processed").rglob("*.png")]}
    again = run(data, table)
    assert sum(again.new.values()) == 0 and not again.changed
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    new = fill(data, "01", [70])[0]
    third = run(data, table)
    assert dict(third.new) == {"01": 1} and manifest(data)[new]["status"] == "kept"


def test_a_new_size_or_mode_reprocesses_everything(data, table):
    fill(data, "00", range(80, 84))
    run(data, table)
    s = run(data, table, size=32)
    assert sum(s.new.values()) == 4
    assert all(png(data, r).shape == (32, 32, 3) and r["size"] == 32 for r in manifest(data).values())
    assert sum(run(data, table, size=32, mode="pad").new.values()) == 4


def test_a_changed_or_deleted_raw_file_is_noticed(data, table):
    a, b = fill(data, "00", [85, 86])
    run(data, table)
    old_hash = manifest(data)[a]["phash"]
    (data / a).write_bytes(encode(photo(87)))
    (data / b).unlink()
    s = run(data, table)
    assert dict(s.new) == {"00": 1} and s.missing["00"] == 1
    m = manifest(data)
    assert m[a]["phash"] != old_hash and b not in m
    assert not (data / preprocess.processed_path(b)).exists()


def test_an_interrupted_run_resumes_from_its_checkpoint(data, table, monkeypatch):
    fill(data, "00", range(100, 106))
    real, calls = preprocess.process_one, []

    def dies_on_the_fifth(job):
        calls.append(job)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(job)
    monkeypatch.setattr(preprocess, "process_one", dies_on_the_fifth)
    monkeypatch.setattr(preprocess, "CHECKPOINT_EVERY", 2)
    with pytest.raises(KeyboardInterrupt):
        run(data, table)
    monkeypatch.setattr(preprocess, "process_one", real)
    s = run(data, table)
    assert sum(s.new.values()) == 2  # the 4 checkpointed photos were not decoded again
    assert sum(1 for r in manifest(data).values() if r["status"] == "kept") == 6


def test_groups_do_not_depend_on_order_and_a_bridge_merges_two_groups():
    def rec(sha, bits):
        return {"raw_sha256": sha, "pixel_hash": "p" + sha, "phash": f"{bits:016x}"}
    a = rec("c1", 0)
    b = rec("a2", (1 << 16) - 1)           # 16 bits from a: another photo
    a2 = rec("e5", 0b11)                   # 2 bits from a: a's near-duplicate
    bridge = rec("d4", (1 << 8) - 1)       # 8 bits from a and from b: close to both
    assert preprocess.group_keys([a, b, a2], 8) == ["c1", "a2", "c1"]
    records = [a, b, a2, bridge]
    keys = preprocess.group_keys(records, 8)
    assert keys == ["a2"] * 4  # one group, keyed by its smallest sha256: a's photos now carry b's key
    for _ in range(5):
        order = random.sample(range(4), 4)
        assert preprocess.group_keys([records[i] for i in order], 8) == [keys[i] for i in order]
    same_pixels = rec("b0", 1 << 40)
    same_pixels["pixel_hash"] = a["pixel_hash"]  # equal pixels group even if the phash were far
    assert preprocess.group_keys([a, same_pixels], 0) == ["b0", "b0"]


def test_near_pairs_matches_a_plain_double_loop():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2 ** 63, 40, dtype=np.int64).astype(np.uint64)
    flips = [np.uint64(1) << np.uint64(int(k)) for k in rng.integers(0, 64, 60)]
    hashes = [f"{int(x):016x}" for x in base] + [f"{int(base[i % 40] ^ f):016x}" for i, f in enumerate(flips)]
    got = set(preprocess.near_pairs(hashes, 3))
    want = {(i, j) for i in range(len(hashes)) for j in range(i + 1, len(hashes))
            if bin(int(hashes[i], 16) ^ int(hashes[j], 16)).count("1") <= 3}
    assert got == want and len(want) >= 60


def test_a_new_min_side_applies_to_old_photos_without_decoding_them(data, table):
    small, big = add(data, "00", encode(photo(110, 60, 50))), add(data, "00", encode(photo(111, 120, 90)))
    run(data, table)
    s = run(data, table, min_side=64)
    m = manifest(data)
    assert sum(s.new.values()) == 0 and m[small]["reason"] == "too_small" and m[big]["status"] == "kept"
    assert not (data / small).exists() and not (data / preprocess.processed_path(small)).exists()


def test_photos_added_by_hand_are_adopted_then_treated_like_any(data, table):
    crawled = fill(data, "00", [1, 2])
    hand = data / "raw" / "00"
    (hand / "IMG_0001.JPG").write_bytes(encode(photo(3)))                  # a good photo
    (hand / "broken.jpg").write_bytes(b"not really a photo\n" * 8)           # named like one, bytes are not
    (hand / "copy of 1.jpg").write_bytes((data / crawled[0]).read_bytes())   # the same bytes as a crawled one
    (hand / "notes.txt").write_text("where I took these")                    # no photo at all: left alone
    other = data / "raw" / "02"                                              # a folder a person made: no manifest
    other.mkdir(parents=True)
    (other / "holiday.png").write_bytes(encode(photo(3), "PNG", optimize=False))  # place 00's photo again
    (other / "tower.jpg").write_bytes(encode(photo(4)))
    s = run(data, table)

    lines = {r["original_name"]: r for r in read_jsonl(hand / "manifest.jsonl") if r["source"] == "manual"}
    assert set(lines) == {"IMG_0001.JPG", "broken.jpg"}
    assert lines["IMG_0001.JPG"]["file"] == "000003.jpg" and lines["IMG_0001.JPG"]["width"] == 96
    assert (hand / "notes.txt").exists() and not (hand / "IMG_0001.JPG").exists()
    m = manifest(data)
    listed = {row["file"]: row["reason"] for row in rejected_rows(data)}
    assert listed["raw/00/copy of 1.jpg"] == "duplicate"                       # exact copy: quarantined, not lost
    assert listed[f"raw/00/{lines['broken.jpg']['file']}"] == "not_image"     # broken: quarantined by decode
    assert list((data / "rejected" / "duplicate").glob("00_copy of 1.jpg"))
    two = {r["original_name"]: r["file"] for r in read_jsonl(other / "manifest.jsonl")}
    assert set(two) == {"holiday.png", "tower.jpg"}
    assert m[f"raw/02/{two['tower.jpg']}"]["status"] == "kept"
    # the same picture under two places (same pixels, other bytes): the usual cross-place conflict
    assert m[f"raw/02/{two['holiday.png']}"]["reason"] == preprocess.CONFLICT
    assert m["raw/00/000003.jpg"]["status"] == "rejected"
    assert s.count("02", "kept") == 1
    again = run(data, table)  # nothing new: adoption happens once
    assert not again.changed and len(read_jsonl(hand / "manifest.jsonl")) == 4
