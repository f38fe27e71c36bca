"""Step 3: data/processed -> data/dataset/, and the reading side of that folder (for cnn.py and others).

data/dataset/ holds x_{train,val,test}.npy (uint8, N x H x W x 3), y_*.npy (class numbers, int(index, 16)),
files_*.txt (the raw file behind each row, relative to the data root), classes.json ([{class, index, name}], one
entry per row of the place table) and summary.json (counts per place and split, the fingerprint).

Split rule: each near-duplicate group (preprocess.py's `group`, the smallest raw sha256 in it) sits at a position
u = sha256(seed:key) in [0, 1); u < train share -> train, then val, then test. A photo's split depends only on its
group, so it never moves when photos are added, and near-duplicates never straddle two splits. Every place must
have a group in each split; when the hash leaves one empty, the group whose u lies nearest to that split moves into
it (from a split that keeps at least one). That rescue is the one case where a photo can change split as the data
grows, and only while its place is that small; summary.json lists it. A place with fewer than 3 groups (or, with
--min-per-class N, fewer than N photos) is an error, or with --min-per-class left out with a warning. A place left
out keeps its class number and its entry in classes.json (marked "left_out": true), so that class numbers stay
int(index, 16) everywhere: the model gets an output no photo trains, which it learns never to predict.
"""
import hashlib
import json
import logging
import os
import shutil
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from locator.core import config
from locator.core.errors import UserError
from locator.core.fsio import atomic_write_json, exclusive, fsync_path, fsync_tree, now_iso
from locator.core.tables import totals
from locator.data.preprocess import PENDING, read_manifest
from locator.data.splits import SPLITS, assign, parse_split, position, split_of  # noqa: F401 (dataset.X callers)

log = logging.getLogger(__name__)

SUMMARY = "summary.json"
CLASSES = "classes.json"
_TMP, _OLD = ".dataset.tmp-", ".dataset.old-"


def fingerprint(entries, size: int, mode: str) -> str:
    """Identity of a dataset: hash of the sorted (split, raw file, raw sha256, class) list, the size and the mode.

    cnn.py stores it in metadata.json; read it back with dataset_fingerprint(dataset_dir)."""
    h = hashlib.sha256(json.dumps({"size": size, "resize_mode": mode}, sort_keys=True).encode())
    for e in sorted(tuple(map(str, e)) for e in entries):
        h.update(("\t".join(e) + "\n").encode())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------- reading data/dataset (cnn.py, pipeline.py)

def _read(path: Path, read):
    """read(path); a missing or unreadable file (deleted, truncated, not what dataset.py writes) is one UserError
    naming it, not a traceback from numpy or json."""
    try:
        return read(path)
    except FileNotFoundError:
        raise UserError(f"{path} not found: build the dataset first (python dataset.py)")
    except (OSError, ValueError, EOFError) as e:  # JSONDecodeError, UnicodeDecodeError are ValueErrors
        raise UserError(f"{path}: unreadable ({type(e).__name__}: {str(e)[:100]}); rebuild it with python dataset.py")


def _json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def read_summary(dataset_dir=None) -> dict:
    return _read(Path(dataset_dir or config.dataset_dir(config.DATA)) / SUMMARY, _json)


def dataset_fingerprint(dataset_dir=None) -> str:
    """The fingerprint dataset.py stored for the dataset in `dataset_dir` (what metadata.json records)."""
    return read_summary(dataset_dir)["fingerprint"]


def load_split(dataset_dir, split: str, mmap: bool = True):
    """(x, y, files) of one split; x memory-mapped by default, so a large dataset is not read whole."""
    d = Path(dataset_dir)
    x = _read(d / f"x_{split}.npy", lambda p: np.load(p, mmap_mode="r" if mmap else None))
    y = _read(d / f"y_{split}.npy", np.load)
    files = _read(d / f"files_{split}.txt", lambda p: p.read_text(encoding="utf-8").splitlines())
    return x, y, files


def load_classes(dataset_dir) -> list:
    return _read(Path(dataset_dir) / CLASSES, _json)


# ---------------------------------------------------------------- building

@dataclass
class Plan:
    size: int
    mode: str
    rows: dict                                  # split -> [record], sorted by (class, raw_file)
    classes: list                               # [{class, index, name[, left_out]}]
    counts: dict                                # index -> {split: n}
    left_out: list = field(default_factory=list)
    rescued: list = field(default_factory=list)  # [{index, raw_file, from, to}]
    fingerprint: str = ""
    up_to_date: bool = False
    negatives: dict = field(default_factory=dict)  # split -> [(relative name, path)]: "none of our places"
    background: dict = field(default_factory=dict)  # split -> [record]: data/background photos, by raw_file
    model_labelled: int = 0                     # --learn photos labelled by a model: in train only


NEG_KINDS = ("landmark", "everyday", "negatives")  # kind of an xneg row: the background sheet's, or data/negatives


def model_labelled(r) -> bool:
    """A photo whose label a model wrote (--learn accepted it as one of our places): it may be trained on, never
    graded on (val picks the epoch and the threshold, test measures). A person's label (data/review/<index>/, an
    evaluation subfolder) is a label like a crawled one."""
    return r.get("source") == "user" and r.get("labelled_by") != "person"


def plan(data, table, split=config.SPLIT, seed=config.SPLIT_SEED, min_per_class=None, negatives=None) -> Plan:
    """Decide every row (which photo, which split) from data/processed/manifest.jsonl; nothing is written.

    `negatives`: a folder of everyday photos that show none of the places (any depth); they are packed as
    xneg_*.npy for the model's background class, split by a hash of their path like the places' photos. The
    background sheet's photos (preprocess.py's `background` records) join them, split by their group."""
    manifest = config.processed_manifest(data)
    records = read_manifest(data).values()
    if any(r["status"] == PENDING for r in records):
        raise UserError(f"{manifest} is from an interrupted preprocess.py: run it again to finish")
    kept = [r for r in records if r["status"] == "kept"]
    if not any(not r.get("background") for r in kept):
        raise UserError(f"no processed photos in {manifest}: run preprocess.py first")
    shapes = {(r["size"], r["resize_mode"]) for r in kept}
    if len(shapes) > 1:
        raise UserError(f"{manifest} mixes sizes/modes {sorted(shapes)}: run preprocess.py again")
    (size, mode), = shapes
    known = {p.index for p in table}
    stray = sorted({r["index"] for r in kept if not r.get("background")} - known)
    if stray:
        raise UserError(f"{manifest} has photos of place(s) {', '.join(stray)}, which {table.path} lacks: "
                        "run preprocess.py with this table")

    by_place, bg = defaultdict(list), {s: [] for s in SPLITS}
    for r in kept:
        if r.get("background"):
            bg[split_of(r["group"], split, seed)].append(r)
        else:
            by_place[r["index"]].append(r)
    rows, counts, rescued, short = {s: [] for s in SPLITS}, {}, [], []
    for p in table:
        photos = by_place.get(p.index, [])
        where, moved = assign([r["group"] for r in photos if not model_labelled(r)], split, seed)
        where.update({r["group"]: "train" for r in photos if model_labelled(r)})
        n = {s: sum(1 for r in photos if where[r["group"]] == s) for s in SPLITS}
        if min(n.values()) == 0 or (min_per_class and len(photos) < min_per_class):
            short.append((p, len(photos), n))
            continue
        counts[p.index] = n
        for r in photos:
            rows[where[r["group"]]].append(r)
        by_group = {r["group"]: r["raw_file"] for r in photos}
        rescued += [{"index": p.index, "raw_file": by_group[k], "from": a, "to": b} for k, a, b in moved]
    if short:
        what = "; ".join(f"{p.index} '{p.name}' ({k} photo(s) after deduplication: "
                         f"{'/'.join(str(n[s]) for s in SPLITS)} train/val/test)" for p, k, n in short)
        if not min_per_class:
            raise UserError(f"too few photos to put in every split: {what}. Collect more, or pass "
                            "--min-per-class N to leave out places with fewer than N photos (with a warning)")
        for p, k, n in short:
            log.warning("place %s '%s' left out: %d photo(s), %s train/val/test (its class number stays unused)",
                        p.index, p.name, k, "/".join(str(n[s]) for s in SPLITS))
    if not counts:
        raise UserError("every place was left out: nothing to build")
    for s in SPLITS:
        rows[s].sort(key=lambda r: (int(r["index"], 16), r["raw_file"]))
        bg[s].sort(key=lambda r: r["raw_file"])
    left = {p.index for p, _, _ in short}
    classes = [{**c, "left_out": True} if c["index"] in left else c for c in table.classes()]
    neg = plan_negatives(negatives, split, seed)
    fp = fingerprint([(s, r["raw_file"], r["raw_sha256"], int(r["index"], 16)) for s in SPLITS for r in rows[s]]
                     + [(s, "negatives/" + name, _content_sha256(p), -1) for s in SPLITS for name, p in neg[s]]
                     + [(s, r["raw_file"], r["raw_sha256"], r["kind"]) for s in SPLITS for r in bg[s]],
                     size, mode)
    for r in rescued:
        log.info("place %s: %s moved %s -> %s so that %s is not empty (see summary.json)",
                 r["index"], r["raw_file"], r["from"], r["to"], r["to"])
    learned = sum(model_labelled(r) for s in SPLITS for r in rows[s])
    return Plan(size, mode, rows, classes, counts, sorted(left), rescued, fp, negatives=neg, background=bg,
                model_labelled=learned)


def _content_sha256(path: Path) -> str:
    """sha256 of a negative photo's bytes: data/negatives has no manifest, and a photo replaced by another of the
    same size (or with its time stamp kept) must still make a new dataset. Hashing runs at disk speed."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError as e:  # packing skips it with a warning; its name still counts
        return f"unreadable:{type(e).__name__}"
    return h.hexdigest()


NEGATIVE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"}


def plan_negatives(folder, split=config.SPLIT, seed=config.SPLIT_SEED) -> dict:
    """split -> [(path relative to folder, path)] of the everyday photos under `folder` (empty without one)."""
    out = {s: [] for s in SPLITS}
    if not folder:
        return out
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"--negatives {folder}: not a folder")
    for p in sorted(folder.rglob("*")):
        if p.suffix.lower() in NEGATIVE_SUFFIXES and p.is_file():
            name = p.relative_to(folder).as_posix()
            out[split_of("negative:" + name, split, seed)].append((name, p))
    return out


def build(data, table, split=config.SPLIT, seed=config.SPLIT_SEED, min_per_class=None, progress=True,
          negatives=None) -> Plan:
    """Write data/dataset/ whole: into a temporary folder beside it, then swapped in by two renames."""
    data = Path(data)
    pl = plan(data, table, split, seed, min_per_class, negatives)
    dest = config.dataset_dir(data)
    with exclusive(dest, f"another dataset.py is writing {dest}"):
        _recover(dest)
        if _is_current(dest, pl):
            pl.up_to_date = True
            return pl
        tmp = dest.with_name(f"{_TMP}{os.getpid()}")
        _write(data, tmp, pl, split, seed, progress)
        _swap(tmp, dest)
    return pl


def _is_current(dest, pl) -> bool:
    try:
        summary = json.loads((dest / SUMMARY).read_text(encoding="utf-8"))
        classes = json.loads((dest / CLASSES).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    files = [f"{k}_{s}.{e}" for s in SPLITS for k, e in (("x", "npy"), ("y", "npy"), ("files", "txt"))]
    files += [f"{k}_{s}.{e}" for s in SPLITS if pl.negatives[s] or pl.background[s]
              for k, e in (("xneg", "npy"), ("files_neg", "txt"), ("kind_neg", "txt"))]
    return summary.get("fingerprint") == pl.fingerprint and classes == pl.classes \
        and all((dest / f).is_file() for f in files)


def _write(data, tmp, pl, split, seed, progress):
    from tqdm import tqdm

    tmp.mkdir(parents=True)
    with tqdm(total=sum(len(v) for v in pl.rows.values()), unit="photo", desc="dataset",
              disable=None if progress else True) as bar:
        for s in SPLITS:
            rows = pl.rows[s]
            shape = (len(rows), pl.size, pl.size, 3)
            # open_memmap: rows go straight to the file, so memory stays at one image however big the set is.
            x = np.lib.format.open_memmap(tmp / f"x_{s}.npy", mode="w+", dtype=np.uint8, shape=shape)
            for i, r in enumerate(rows):
                x[i] = _load_png(data, r, pl.size)
                bar.update()
            x.flush()
            del x
            np.save(tmp / f"y_{s}.npy", np.array([int(r["index"], 16) for r in rows], dtype=np.int64))
            (tmp / f"files_{s}.txt").write_text("".join(r["raw_file"] + "\n" for r in rows), encoding="utf-8")
            if pl.negatives[s] or pl.background[s]:
                _write_negatives(data, tmp, s, pl)
    atomic_write_json(tmp / CLASSES, pl.classes)
    atomic_write_json(tmp / SUMMARY, {
        "fingerprint": pl.fingerprint,
        "created": now_iso(),
        "size": pl.size, "resize_mode": pl.mode,
        "split": dict(zip(SPLITS, split)), "seed": seed,
        "totals": {s: len(pl.rows[s]) for s in SPLITS},
        "counts": pl.counts, "left_out": pl.left_out, "rescued": pl.rescued,
        "negatives": {s: len(pl.negatives[s]) + len(pl.background[s]) for s in SPLITS},  # xneg rows
        "background": background_counts(pl),
        "model_labelled": pl.model_labelled,
        "negatives_dir": _negatives_root(pl),
    })
    fsync_tree(tmp)  # durable before the swap makes them the dataset


def _negatives_root(pl):
    """The folder data/negatives' names in files_neg_*.txt are relative to (the embedding step reads the photos
    there), or None without such photos."""
    for s in SPLITS:
        for name, path in pl.negatives[s]:
            return str(Path(str(Path(path).absolute())[:-len(name)]))
    return None


def _write_negatives(data, tmp, s, pl) -> None:
    """xneg_<split>.npy + files_neg_<split>.txt + kind_neg_<split>.txt: the background sheet's photos (their
    processed PNGs, raw file names) then data/negatives' (through THE normalisation function, names relative to
    that folder); the kind of each row: landmark, everyday or negatives."""
    from locator.core.images import ImageRejected, normalise

    arrays = [_load_png(data, r, pl.size) for r in pl.background[s]]
    names, kinds = [r["raw_file"] for r in pl.background[s]], [r["kind"] for r in pl.background[s]]
    for name, path in pl.negatives[s]:
        try:
            arrays.append(normalise(path, pl.size, pl.mode))
            names.append(name)
            kinds.append("negatives")
        except ImageRejected as e:
            log.warning("negative photo %s skipped: %s", path, e)
    x = np.stack(arrays) if arrays else np.zeros((0, pl.size, pl.size, 3), np.uint8)
    np.save(tmp / f"xneg_{s}.npy", x)
    (tmp / f"files_neg_{s}.txt").write_text("".join(n + "\n" for n in names), encoding="utf-8")
    (tmp / f"kind_neg_{s}.txt").write_text("".join(k + "\n" for k in kinds), encoding="utf-8")


def background_counts(pl: Plan) -> dict:
    """{kind: {split: n}} of the xneg rows planned (summary.json's `background`)."""
    out = {k: {s: sum(r["kind"] == k for r in pl.background[s]) for s in SPLITS} for k in NEG_KINDS[:2]}
    out["negatives"] = {s: len(pl.negatives[s]) for s in SPLITS}
    return out


def photo_paths(data_root, split: str, negatives: bool = False) -> list:
    """The photo file behind each row of a split (`negatives`: of its xneg rows), for a model that reads photos at
    another size than the packed arrays: the dataset names them relative to the data root (places, crawled
    background) or to the negatives folder (summary.json `negatives_dir`)."""
    root = Path(data_root)
    d = config.dataset_dir(root)
    if not negatives:
        return [root / f for f in _read(d / f"files_{split}.txt", lambda p: p.read_text(encoding="utf-8").splitlines())]
    if not (d / f"xneg_{split}.npy").exists():
        return []
    neg_root = Path(read_summary(d).get("negatives_dir") or config.negatives_dir(root))
    names = _read(d / f"files_neg_{split}.txt", lambda p: p.read_text(encoding="utf-8").splitlines())
    kinds = load_negative_kinds(d, split)
    return [(neg_root if k == "negatives" else root) / n for n, k in zip(names, kinds)]


def load_negatives(dataset_dir, split: str):
    """Photos of none of our places of one split (uint8 N x H x W x 3), or None when the dataset has none."""
    path = Path(dataset_dir) / f"xneg_{split}.npy"
    return _read(path, np.load) if path.exists() else None


def load_negative_kinds(dataset_dir, split: str):
    """The kind of each xneg row (np.ndarray of str: landmark | everyday | negatives), or None without xneg. A
    dataset without kind_neg_<split>.txt (an older dataset.py wrote none) holds data/negatives' photos only."""
    d = Path(dataset_dir)
    if not (d / f"xneg_{split}.npy").exists():
        return None
    path = d / f"kind_neg_{split}.txt"
    if not path.exists():
        return np.full(len(_read(d / f"files_neg_{split}.txt", lambda p: p.read_text().splitlines())), "negatives")
    return np.array(_read(path, lambda p: p.read_text(encoding="utf-8").splitlines()), dtype=str)


def _load_png(data, r, size) -> np.ndarray:
    path = Path(data) / r["file"]
    try:
        with Image.open(path) as im:
            a = np.asarray(im.convert("RGB"))
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable ({type(e).__name__}); run preprocess.py again")
    if a.shape != (size, size, 3):
        raise UserError(f"{path} is {a.shape[1]}x{a.shape[0]}, not {size}x{size}: run preprocess.py again")
    return a


def _swap(tmp: Path, dest: Path) -> None:
    """Old dataset aside, new one in place, old one removed. Killed between the two renames, there is no
    data/dataset for a moment, never half of one; the next run's _recover() puts the old one back."""
    old = dest.with_name(f"{_OLD}{os.getpid()}")
    if dest.exists():
        os.rename(dest, old)
    os.rename(tmp, dest)
    fsync_path(dest.parent)
    shutil.rmtree(old, ignore_errors=True)


def _recover(dest: Path) -> None:
    """Undo what a killed run left: restore the previous dataset if the swap stopped half-way; drop temp folders."""
    olds = sorted(dest.parent.glob(f"{_OLD}*"), key=lambda p: p.stat().st_mtime)
    if not dest.exists() and olds:
        log.warning("restoring %s from %s (an earlier run was killed while swapping)", dest, olds[-1])
        os.rename(olds.pop(), dest)
    for p in olds + list(dest.parent.glob(f"{_TMP}*")):
        shutil.rmtree(p, ignore_errors=True)


def count_rows(pl: Plan, table):
    """(headers, rows, footer) of the per-place table: photos per split."""
    headers = ["index", "place"] + list(SPLITS) + ["total"]
    rows = []
    for p in table:
        n = pl.counts.get(p.index)
        if n is None:
            rows.append([p.index, p.name + " (left out)", 0, 0, 0, 0])
        else:
            rows.append([p.index, p.name] + [n[s] for s in SPLITS] + [sum(n.values())])
    return headers, rows, totals(headers, rows)
