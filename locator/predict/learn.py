"""Re-learning (the study's second classification): keep users' photos so that the next preprocess/dataset/cnn run
trains on them. predict.py --learn and serve.py --learn call `keep_upload` for each photo.

- A photo accepted as one of our places is COPIED into data/raw/<index>/ through RawFolder.add (the one manifest
  writer) with source "user", predicted_index and confidence. A photo a person labelled goes to the place they
  chose.
- A photo under the threshold is copied to data/review/ for a person to label by moving it into
  data/review/<index>/ (or the place's folder name); `reviewed()` lists those for the next --learn.
- Exact duplicates are never added: bytes already anywhere in data/raw/ (any place, whatever model accepted them)
  or already waiting in data/review/ are skipped, so learning the same folder twice adds nothing.
User files are never moved or changed: everything is a copy.
"""
import hashlib
import io
import logging
import os
import re
import threading
from functools import lru_cache
from pathlib import Path

from locator.core import config, images
from locator.core.fsio import atomic_write_bytes, lock_for
from locator.crawl.rawstore import RawFolder

log = logging.getLogger("learn")
_INDEX = re.compile(r"^[0-9a-f]{2}$")


@lru_cache(maxsize=None)
def _raw_folder(path: str) -> RawFolder:
    """One RawFolder per folder and process: it keeps its manifest parsed and reads only appended lines."""
    return RawFolder(path)


def _raw_folders(data) -> list:
    raw = config.raw_dir(data)
    names = sorted(n for n in os.listdir(raw) if _INDEX.match(n)) if raw.is_dir() else []
    return [_raw_folder(str((raw / n).resolve())) for n in names]


def _in_raw(data, digest: str):
    """The place folder (index) whose manifest already lists these bytes, or None."""
    for f in _raw_folders(data):
        if digest in f.known_sha256():
            return f.folder.name
    return None


class _ReviewIndex:
    """sha256 and size of every file under data/review/ (waiting or labelled), rehashing only files that
    changed."""

    def __init__(self):
        self._lock = threading.Lock()
        self._known = {}  # path -> (size, mtime_ns, sha256)

    def contents(self, review: Path) -> dict:
        """sha256 -> size in bytes."""
        with self._lock:
            seen = {}
            for root, dirs, files in os.walk(review):
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                for f in files:
                    p = os.path.join(root, f)
                    try:
                        st = os.stat(p)
                        old = self._known.get(p)
                        if old and old[:2] == (st.st_size, st.st_mtime_ns):
                            seen[p] = old
                        elif not f.startswith("."):
                            with open(p, "rb") as fh:
                                seen[p] = (st.st_size, st.st_mtime_ns, hashlib.sha256(fh.read()).hexdigest())
                    except OSError:
                        continue  # moved by the person labelling it while we looked
            self._known = seen
            return {sha: size for size, _, sha in seen.values()}


_REVIEW = _ReviewIndex()
_REVIEW_LOCK = threading.Lock()   # check-then-write of data/review/ (a file lock too, for other processes)
_NAME_BYTES = 96                  # the user's part of a review file name, in UTF-8 bytes (a name may be 255)


def _ext(blob: bytes, name: str) -> str:
    ext = images.sniff(blob[:16])
    if ext:
        return ext
    suffix = Path(name).suffix.lower().lstrip(".")
    return suffix if re.fullmatch(r"[a-z0-9]{1,5}", suffix) else "img"


def _size(blob: bytes):
    from PIL import Image

    try:
        with Image.open(io.BytesIO(blob)) as img:
            return img.size
    except Exception:
        return 0, 0


def review_name(digest: str, name: str) -> str:
    """data/review/ file name: a content prefix (so the same photo twice lands on one name) + the user's name,
    cut to _NAME_BYTES of UTF-8 on a character boundary with its extension kept (80 characters of a 4-byte
    script are 320 bytes, over the 255 a file name may have)."""
    flat = re.sub(r"[^\w.\-]+", "_", name.replace("/", "__")).strip("._") or "photo"
    stem, dot, ext = flat.rpartition(".")
    if not dot or not re.fullmatch(r"[A-Za-z0-9]{1,5}", ext):
        stem, ext = flat, ""
    ext = f".{ext}" if ext else ""
    room = _NAME_BYTES - len(ext)
    stem = stem.encode("utf-8")[:room].decode("utf-8", "ignore").rstrip("._") or "photo"
    return f"{digest[:12]}-{stem}{ext}"


def keep_upload(data, photo: bytes, answer: dict, name: str = "upload", label: str | None = None,
                min_confidence: float = config.LEARN_MIN_CONFIDENCE, room=None) -> dict:
    """Keep one photo for re-learning. `answer` is Predictor.answer(); `label` a place index a person gave
    (evaluation subfolder, data/review/<index>/), which wins over the model's answer. A photo the model
    accepted goes into data/raw/ only from `min_confidence` on (it becomes training data with the model's own
    label); under it, to data/review/ for a person. `room(sha256, size)` says why a photo that is not a
    duplicate cannot be stored (a quota), or None; it is asked after the duplicate checks, so a duplicate is
    always reported as one.

    Returns what happened, JSON-ready: {"kept": "raw", "index", "file"}, {"kept": "review", "file"} (paths
    relative to the data root) or {"kept": None, "why": ...}.
    """
    data = Path(data)
    digest = hashlib.sha256(photo).hexdigest()
    where = _in_raw(data, digest)
    if where is not None:
        return {"kept": None, "why": f"already in raw/{where}"}
    sure = answer.get("known") and (answer.get("confidence") or 0.0) >= min_confidence
    index = label or (answer["index"] if sure else None)
    if index is not None:
        why = room(digest, len(photo)) if room else None
        if why:
            return {"kept": None, "why": why}
        w, h = _size(photo)
        rec = _raw_folder(str((config.raw_dir(data) / index).resolve())).add(
            photo, _ext(photo, name), w, h, source="user", predicted_index=answer.get("index"),
            confidence=answer.get("confidence"), labelled_by="person" if label else "model", original=name)
        if rec is None:  # another writer stored the same bytes a moment ago
            return {"kept": None, "why": f"already in raw/{index}"}
        return {"kept": "raw", "index": index, "file": f"raw/{index}/{rec['file']}"}
    review = config.review_dir(data)
    # one check-and-write at a time: concurrent uploads of one photo would each see it missing and each write it
    with _REVIEW_LOCK, lock_for(review):  # data/review.lock
        if digest in _REVIEW.contents(review):
            return {"kept": None, "why": "already in review"}
        why = room(digest, len(photo)) if room else None
        if why:
            return {"kept": None, "why": why}
        dest = review / review_name(digest, name)
        atomic_write_bytes(dest, photo)
    return {"kept": "review", "file": dest.relative_to(data).as_posix()}


def learned(data) -> dict:
    """sha256 -> bytes of every learned photo: waiting or labelled in data/review/, and the uploads (source user)
    in data/raw/. A labelled photo is in both once predict.py --learn has copied it: it counts once."""
    data = Path(data)
    out = _REVIEW.contents(config.review_dir(data))
    for folder in _raw_folders(data):
        for r in folder.records():
            if r.get("source") == "user":
                out[r["sha256"]] = r.get("bytes", 0)  # RawFolder.add writes sha256 on every line
    return out


class Learner:
    """serve.py --learn: keep_upload for each upload, within a quota of learned bytes (None: no quota; counted
    from the disk at the first upload, then kept up to date). Each photo's bytes count once, however many
    copies of it the data root holds. A photo beyond the quota is not kept, and the outcome says so: the place
    answer never depends on storing."""

    def __init__(self, data, quota: int | None = config.SERVE_LEARN_QUOTA,
                 min_confidence: float = config.LEARN_MIN_CONFIDENCE):
        self.data, self.quota, self.min_confidence = Path(data), quota, min_confidence
        self._lock = threading.Lock()
        self._kept = None      # sha256 -> bytes, once counted
        self._used = 0
        self._warned = False

    def _room(self, digest: str, size: int):
        if digest in self._kept or self._used + size <= self.quota:
            return None
        if not self._warned:  # once: a full quota would otherwise log every upload
            log.warning("--learn: the quota of %s bytes is full; uploads are answered but no longer kept (raise "
                        "--learn-quota-mb, or label data/review/ and retrain)", f"{self.quota:,}")
            self._warned = True
        return f"the learning quota is full ({self._used:,} of {self.quota:,} bytes used)"

    def __call__(self, photo: bytes, answer: dict, name: str = "upload") -> dict:
        with self._lock:
            if self.quota is None:
                return keep_upload(self.data, photo, answer, name, min_confidence=self.min_confidence)
            if self._kept is None:
                self._kept = learned(self.data)
                self._used = sum(self._kept.values())
            out = keep_upload(self.data, photo, answer, name, min_confidence=self.min_confidence, room=self._room)
            digest = hashlib.sha256(photo).hexdigest()
            if out["kept"] and digest not in self._kept:
                self._kept[digest] = len(photo)
                self._used += len(photo)
        return out


def reviewed(data, table) -> list:
    """Photos a person labelled: inference.Photo (label = the index) for each file in data/review/<index or folder
    name>/. Subfolders that name no place are reported and left alone."""
    from locator.predict.scan import Photo, label_for

    review = config.review_dir(data)
    out = []
    for sub in sorted(p for p in review.iterdir() if p.is_dir() and not p.name.startswith(".")) \
            if review.is_dir() else ():
        index = label_for(sub.name, table)
        if index == config.UNKNOWN_FOLDER:
            continue  # a person said "none of our places": nothing to learn for a place
        if index is None:
            log.warning("%s: names no place (use a place index such as 00 or its folder name); left alone", sub)
            continue
        out += [Photo(p, p.relative_to(data).as_posix(), index) for p in sorted(sub.rglob("*"))
                if p.is_file() and not p.name.startswith(".")]
    return out


def learn_results(data, results, min_confidence: float = config.LEARN_MIN_CONFIDENCE) -> list:
    """keep_upload for every readable result (inference.Result), its label winning over the model's answer;
    photos labelled unknown/ are none of our places and are not kept. Returns the outcomes."""
    out = []
    for r in results:
        if not r.ok or r.photo.label == config.UNKNOWN_FOLDER:
            continue
        try:
            blob = r.photo.path.read_bytes()  # read again, not kept from prediction: memory stays flat
        except OSError as e:
            out.append({"kept": None, "why": f"unreadable now ({e.strerror or e})"})
            continue
        out.append(keep_upload(data, blob, r.answer, r.photo.name, label=r.photo.label,
                               min_confidence=min_confidence))
    return out


def summary(outcomes, picked_up: int = 0) -> str:
    raw = [o["index"] for o in outcomes if o["kept"] == "raw"]
    per = ", ".join(f"{i}: {raw.count(i)}" for i in sorted(set(raw)))
    review = sum(o["kept"] == "review" for o in outcomes)
    skipped = sum(o["kept"] is None for o in outcomes)
    return (f"learn: {len(raw)} copied into data/raw/" + (f" ({per})" if per else "") +
            f", {review} copied to data/review/ for a person to label, {skipped} already kept"
            + (f"; {picked_up} labelled photo(s) found in data/review/<index>/" if picked_up else ""))
