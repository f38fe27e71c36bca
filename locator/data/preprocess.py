"""Step 2: data/raw/<index>/ -> data/processed/<index>/*.png and data/processed/manifest.jsonl; the background
sheet's photos, data/background/<folder>/, -> data/processed/background/<folder>/*.png, in the same manifest.

Per raw photo, in a process pool: read the bytes once, hash them, `images.decode` them (JPEG draft mode) and
`images.resize` the result -- exactly the two halves of `images.normalise`, so predict and serve see the same
pixels -- then write the PNG. Then, in the parent, over ALL photos old and new: group exact and near-duplicates,
keep one photo per group, reject groups that span places and background photos grouped with a place photo
(`conflict`, locator/data/groups.py), quarantine rejects, rewrite the manifest.

Manifest line (paths relative to the data root, like data/rejected.csv):
  file           processed/<index>/<stem>.png; null for a rejected photo
  raw_file       raw/<index>/<name>; index; raw_sha256, raw_bytes, raw_mtime_ns (a changed file is redone)
  width, height  the stored size of the raw photo (before orientation)
  pixel_hash     sha256 of the decoded RGB pixels: equal pixel hashes are exact duplicates
  phash          imagehash.phash (16 hex digits) of a 64x64 squash of the photo, whatever the resize mode, so that
                 the groups (and so the splits) are the same for squash, crop and pad
  group          near-duplicate group key: the smallest raw_sha256 in the group
  status         kept | duplicate | rejected;  duplicate: exact | near, duplicate_of: raw_file of the kept photo
  reason, detail why it was rejected (images.REASONS, or `conflict`)
  size, resize_mode, processed (ISO time)
  source         the raw manifest's source (commons, bing, folder, user, ...), and its labelled_by when it has one:
                 dataset.py keeps photos whose label a model wrote (--learn) out of val and test
  background, kind   background photos only: the folder (query) and its kind (landmark | everyday); index null

Groups (locator/data/groups.py) are the connected components of "same pixels, or phash within NEAR_DUP_DISTANCE
bits": a component does not depend on the order photos arrive in. The price: a new photo close to two groups joins
them into one, whose key is the smaller of the two, so the photos of the other group may change split. We accept
that -- leak-free beats stable -- and it needs a photo within a few bits of both groups.
"""
import hashlib
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import imagehash

from locator.core import config, images
from locator.core.errors import UserError
from locator.core.fsio import TMP_PREFIX, append_jsonl, atomic_path, exclusive, now_iso, read_jsonl, rewrite_jsonl
from locator.core.tables import totals
from locator.crawl.rawstore import RawFolder, adopt, quarantine
from locator.data.groups import CONFLICT, group_keys, near_pairs, resolve, set_status  # noqa: F401 (API)

log = logging.getLogger(__name__)

PHASH_INPUT = 64          # photos are hashed as a 64x64 squash: cheap, and the same for every --size/--resize-mode
PENDING = "pending"       # a checkpointed photo not yet grouped (the run was interrupted)
CHECKPOINT_EVERY = 256    # photos, or...
CHECKPOINT_SECONDS = 10   # ...seconds between manifest appends, so an interrupted run resumes where it stopped


@dataclass
class Options:
    size: int = config.SIZE
    mode: str = config.RESIZE_MODE
    min_side: int = config.MIN_SIDE
    max_pixels: int = config.MAX_PIXELS
    near: int = config.NEAR_DUP_DISTANCE
    keep_rejected: bool = False
    workers: int = config.PREPROCESS_WORKERS
    progress: bool = True


@dataclass
class Summary:
    records: list                                     # the manifest as written
    read: Counter = field(default_factory=Counter)    # photos listed in data/raw/<index>/manifest.jsonl
    new: Counter = field(default_factory=Counter)     # decoded in this run
    missing: Counter = field(default_factory=Counter)  # listed but not on disk
    errors: Counter = field(default_factory=Counter)   # unexpected failures (left in place, retried next run)
    changed: bool = False                             # manifest rewritten or files moved

    def count(self, index: str, status: str, kind: str | None = None) -> int:
        """Photos of a place (index) or of a background kind (row_key) with this status (and duplicate kind or
        reject reason)."""
        key = "duplicate" if status == "duplicate" else "reason"
        return sum(1 for r in self.records if row_key(r) == index and r["status"] == status
                   and (kind is None or r.get(key) == kind))


def row_key(r) -> str:
    """What the summary counts a record under: its place index, or "background <kind>"."""
    return f"background {r['kind']}" if r.get("background") else r["index"]


# ---------------------------------------------------------------- one photo (runs in a worker process)

def process_one(job) -> dict:
    """Decode, hash and normalise one raw photo; write its PNG. A tuple in, a manifest record out (no group yet)."""
    data_root, raw_file, index, size, mode, min_side, max_pixels, extra = job
    path = Path(data_root) / raw_file
    rec = {"raw_file": raw_file, "index": index, **extra, "size": size, "resize_mode": mode, "processed": now_iso()}
    try:
        st = path.stat()  # before reading: a file rewritten meanwhile gets a new mtime and is redone next run
        data = path.read_bytes()
    except FileNotFoundError:
        return {**rec, "status": "missing"}
    except OSError as e:
        return {**rec, "status": "error", "detail": f"{type(e).__name__}: {e}"}
    rec.update(raw_sha256=hashlib.sha256(data).hexdigest(), raw_bytes=len(data), raw_mtime_ns=st.st_mtime_ns)
    try:
        img, (w, h) = images.decode(data, min_side=min_side, max_pixels=max_pixels, draft=images.draft_for(size))
        out = images.resize(img, size, mode)
        same = size == PHASH_INPUT and mode == "squash"
        phash = str(imagehash.phash(out if same else images.resize(img, PHASH_INPUT, "squash")))
        pixel_hash = hashlib.sha256(f"{img.size}".encode() + img.tobytes()).hexdigest()
        png = processed_path(raw_file)
        with atomic_path(Path(data_root) / png, fsync=False) as tmp:
            out.save(tmp, "PNG", compress_level=1)  # lossless at any level; 1 is the fastest
    except images.ImageRejected as e:
        return {**rec, "status": "rejected", "reason": e.reason, "detail": e.detail, "file": None}
    except Exception as e:  # a bug or a full disk, not a bad photo: never quarantine a user's file for it
        return {**rec, "status": "error", "detail": f"{type(e).__name__}: {e}"}
    return {**rec, "status": PENDING, "file": png, "width": w, "height": h, "pixel_hash": pixel_hash, "phash": phash}


def processed_path(raw_file: str) -> str:
    """raw/0a/000001.jpg -> processed/0a/000001.png, background/castle/000001.jpg ->
    processed/background/castle/000001.png (all relative to the data root)."""
    p = Path(raw_file)
    under = p.parent.name if p.parts[0] == config.raw_dir(Path()).name else p.parent.as_posix()
    return f"{config.processed_dir(Path()).as_posix()}/{under}/{p.stem}.png"


# ---------------------------------------------------------------- the run

def run(data, table, opt: Options = Options()) -> Summary:
    """Bring data/processed up to date with data/raw. Only new or changed photos are decoded."""
    data = Path(data)
    raw_root = config.raw_dir(data)
    if not raw_root.is_dir():
        raise UserError(f"{raw_root} not found: collect photos first (python crawl.py) or point --data at them")
    if opt.mode not in config.RESIZE_MODES:
        raise UserError(f"unknown resize mode {opt.mode!r}; use one of {', '.join(config.RESIZE_MODES)}")
    known = {p.index for p in table}
    for d in sorted(raw_root.iterdir()):
        if d.is_dir() and d.name not in known:
            log.warning("%s has no row in %s: skipped", d, table.path)
    queries = {b.folder for b in table.background}
    bg_root = config.background_dir(data)
    for d in sorted(bg_root.iterdir()) if bg_root.is_dir() else ():
        if d.is_dir() and d.name not in queries:
            log.warning("%s is no query of the background sheet of %s: skipped", d, table.path)

    manifest = config.processed_manifest(data)
    with exclusive(manifest, f"another preprocess.py is working on {data}"):
        return _run_locked(data, table, opt, manifest)


def read_manifest(data) -> dict:
    """data/processed/manifest.jsonl as {raw_file: record}; the last line of a raw file wins (checkpoints)."""
    return {r["raw_file"]: r for r in read_jsonl(config.processed_manifest(data))}


def _run_locked(data, table, opt, manifest) -> Summary:
    old = read_manifest(data)
    summary = Summary(records=[])
    carried, todo = [], []
    for folder, index, extra in _sources(data, table):
        rel = folder.relative_to(data).as_posix()
        adopted = adopt(folder, data)  # photos a person copied in by hand: listed, then treated like any
        if adopted:
            log.info("%s: %d photo(s) added by hand adopted (source manual), e.g. %s -> %s", rel, len(adopted),
                     adopted[0]["original_name"], adopted[0]["file"])
            summary.changed = True
        for raw in RawFolder(folder).records():
            raw_file = f"{rel}/{raw['file']}"
            # Where the label came from, refreshed on every run (the raw manifest is the truth about it).
            meta = {**extra, "source": raw.get("source", "")}
            if "labelled_by" in raw:
                meta["labelled_by"] = raw["labelled_by"]
            key = row_key({"index": index, **meta})
            summary.read[key] += 1
            rec = _carry(data, old.get(raw_file), raw_file, opt)
            if rec == "missing":
                summary.missing[key] += 1
                log.warning("%s is listed in its manifest but not on disk", raw_file)
            elif rec:
                carried.append({**rec, "index": index, **meta})
            else:
                todo.append((str(data), raw_file, index, opt.size, opt.mode, opt.min_side, opt.max_pixels, meta))

    fresh = _process_all(todo, opt, manifest, summary)
    newly_rejected = [r for r in fresh if r["status"] == "rejected"]
    for r in fresh:
        summary.new[row_key(r)] += 1

    # Stored sizes let a new --min-side or --max-pixels apply to old photos without decoding them again.
    records = carried + fresh
    for r in records:
        if r["status"] != "rejected":
            reason = _size_reason(r["width"], r["height"], opt)
            if reason:
                set_status(r, "rejected", reason=reason[0], detail=reason[1], file=None)
                newly_rejected.append(r)
    hashed = [r for r in records if r["status"] != "rejected" or r.get("reason") == CONFLICT]
    before = {id(r): r.get("reason") for r in hashed}
    resolve(hashed, opt.near)
    newly_rejected += [r for r in hashed if r.get("reason") == CONFLICT and before[id(r)] != CONFLICT]

    records.sort(key=lambda r: r["raw_file"])
    summary.records = records
    if records != [old.get(r["raw_file"]) for r in records] or len(old) != len(records):
        os.sync()  # the PNGs written without fsync reach the disk before the manifest names them
        rewrite_jsonl(manifest, records)
        summary.changed = True
    summary.changed |= _quarantine(data, records, newly_rejected, opt)
    _remove_stale_pngs(data, table, records)
    return summary


def _sources(data, table):
    """(raw folder, index, manifest fields) of every folder preprocess.py reads: the places', then the background
    sheet's (index None: a background photo is no place's)."""
    for place in table:
        yield config.raw_dir(data) / place.index, place.index, {}
    for b in table.background:
        yield config.background_dir(data) / b.folder, None, {"background": b.folder, "kind": b.kind}


def _carry(data, old, raw_file, opt):
    """The old record if it still holds (same file, same size and mode, PNG there); 'missing'; or None: redo it."""
    try:
        st = (Path(data) / raw_file).stat()
    except FileNotFoundError:
        st = None
    same = old is not None and st is not None and old.get("raw_bytes") == st.st_size \
        and old.get("raw_mtime_ns") == st.st_mtime_ns
    if old is not None and old["status"] == "rejected" and (st is None or same):
        return dict(old)  # quarantined earlier (file moved away), or listed earlier with --keep-rejected
    if st is None:
        return "missing"
    if same and old["size"] == opt.size and old["resize_mode"] == opt.mode and old.get("file"):
        png = Path(data) / old["file"]
        if png.is_file() and png.stat().st_size > 0:
            return dict(old)
    return None


def _size_reason(w, h, opt):
    if w * h > opt.max_pixels:
        return "too_large", f"{w}x{h} is over the {opt.max_pixels:,} pixel cap"
    if min(w, h) < opt.min_side:
        return "too_small", f"{w}x{h}; the shortest side must be >= {opt.min_side}"
    return None


def _process_all(todo, opt, manifest, summary) -> list:
    """Run process_one over the jobs (a pool when it pays), checkpointing results into the manifest."""
    from tqdm import tqdm

    workers = opt.workers or len(os.sched_getaffinity(0))
    out, pending, last = [], [], time.monotonic()
    if not todo:
        return out
    _warm_up()
    pool = None
    if workers > 1 and len(todo) >= 4 * workers:  # a pool's start-up costs more than a handful of photos
        import multiprocessing as mp
        pool = mp.get_context("fork").Pool(workers)  # before tqdm starts its monitor thread
        chunk = max(1, min(32, len(todo) // (workers * 8)))
        results = pool.imap_unordered(process_one, todo, chunksize=chunk)
    else:
        results = map(process_one, todo)
    try:
        with tqdm(total=len(todo), unit="photo", desc="preprocess", disable=None if opt.progress else True) as bar:
            for rec in results:
                bar.update()
                if rec["status"] == "missing":
                    summary.missing[row_key(rec)] += 1
                    continue
                if rec["status"] == "error":
                    summary.errors[row_key(rec)] += 1
                    log.error("%s: %s (left in place; retried next run)", rec["raw_file"], rec["detail"])
                    continue
                out.append(rec)
                pending.append(rec)
                if len(pending) >= CHECKPOINT_EVERY or time.monotonic() - last > CHECKPOINT_SECONDS:
                    _checkpoint(manifest, pending)
                    pending, last = [], time.monotonic()
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    _checkpoint(manifest, pending)
    return out


def _warm_up():
    """Import, once and before the pool forks, what the first photo would make each worker import: imagehash.phash
    imports scipy.fftpack on its first call (a slow import, paid by every process) and Pillow loads its format
    plugins lazily."""
    import scipy.fftpack  # noqa: F401
    from PIL import Image

    Image.init()


def _checkpoint(manifest, records):
    if records:
        os.sync()  # one flush for all the PNGs written since the last checkpoint
        append_jsonl(manifest, records, lock=False)  # run() holds the lock


def _quarantine(data, records, newly_rejected, opt) -> bool:
    """List new rejects in data/rejected.csv and move them (unless --keep-rejected); move earlier-listed ones."""
    new_ids = {id(r) for r in newly_rejected}
    moved = False
    for r in records:
        if r["status"] != "rejected":
            continue
        path = Path(data) / r["raw_file"]
        if id(r) in new_ids:
            if path.exists():
                quarantine(data, path, r["reason"], r.get("detail", ""), move=not opt.keep_rejected)
                moved = True
        elif not opt.keep_rejected and path.exists():
            # Listed by an earlier --keep-rejected run (or a run killed before moving it): move it now.
            quarantine(data, path, r["reason"], r.get("detail", ""), move=True)
            moved = True
    return moved


def _remove_stale_pngs(data, table, records):
    """PNGs no manifest line names (a rejected or vanished photo, a killed worker's temp file) go."""
    wanted = {r["file"] for r in records if r.get("file")}
    subs = [p.index for p in table] + [f"{config.background_dir(Path()).name}/{b.folder}" for b in table.background]
    for sub in subs:
        folder = config.processed_dir(data) / sub
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            rel = f"{config.processed_dir(Path()).as_posix()}/{sub}/{p.name}"
            if (p.suffix == ".png" or p.name.startswith(TMP_PREFIX)) and rel not in wanted:
                p.unlink()


# ---------------------------------------------------------------- report

def table_rows(summary: Summary, table):
    """(headers, rows, footer) of the per-place table: read, new, kept, duplicates, rejected by reason."""
    reasons = sorted({r["reason"] for r in summary.records if r["status"] == "rejected"},
                     key=lambda x: (list(images.REASONS) + [CONFLICT, x]).index(x))
    headers = ["index", "place", "read", "new", "kept", "dup exact", "dup near"] + reasons
    extra = [("missing", summary.missing), ("errors", summary.errors)]
    extra = [(name, c) for name, c in extra if sum(c.values())]
    headers += [name for name, _ in extra]
    rows = []
    names = [(p.index, p.index, p.name) for p in table]  # (count key, index column, place column)
    names += [(f"background {k}", "", f"background: {k}") for k in dict.fromkeys(b.kind for b in table.background)]
    for i, shown, name in names:
        rows.append([shown, name, summary.read[i], summary.new[i], summary.count(i, "kept"),
                     summary.count(i, "duplicate", "exact"), summary.count(i, "duplicate", "near")]
                    + [summary.count(i, "rejected", reason) for reason in reasons] + [c[i] for _, c in extra])
    return headers, rows, totals(headers, rows)
