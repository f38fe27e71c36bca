"""data/raw/<index>/: numbered photos and their manifest.jsonl, written by ONE helper (crawl, predict/serve --learn).

Order of a write, so that kill -9 at any point loses nothing and duplicates nothing:
temp file in the folder -> fsync -> rename to the next free number -> manifest line appended (under the lock).
A crash between rename and append leaves an orphan; `reconcile()` quarantines it (reason `orphan`), so its URL
is fetched again and numbered anew. Temp files from a crash are partial downloads and are removed.
Rejected files are never deleted: `quarantine()` moves them to data/rejected/<reason>/ and lists them in
data/rejected.csv.
Photos a person copies into such a folder by hand are registered by `adopt()` (preprocess.py calls it): renamed
into the numbering, with a manifest line of source "manual" that keeps the person's file name.
"""
import csv
import hashlib
import io
import logging
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path

from locator.core import config
from locator.core.fsio import TMP_PREFIX, append_jsonl, fsync_path, lock_for, now_iso, read_jsonl_from
from locator.core.images import sniff

log = logging.getLogger(__name__)

MANIFEST = "manifest.jsonl"
SOURCES = ("commons", "bing", "folder", "user", "manual")
# files a person may copy in by hand that are photos by their name (their bytes may still be broken: preprocess
# quarantines those like any other); a file that is neither named nor shaped like a photo is left alone
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")
_NUMBERED = re.compile(r"^(\d{6})\.[a-z0-9]+$")

# One threading lock per manifest, taken before its file lock: threads of one process then queue on it
# directly, instead of each polling the file lock (filelock sleeps 50 ms between tries).
_THREAD_LOCKS: dict = {}
_THREAD_LOCKS_GUARD = threading.Lock()
os.register_at_fork(after_in_child=_THREAD_LOCKS.clear)  # a child must not inherit a lock held by a thread


def _thread_lock(path) -> threading.Lock:
    with _THREAD_LOCKS_GUARD:
        return _THREAD_LOCKS.setdefault(os.path.abspath(path), threading.Lock())


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class RawFolder:
    """One place's folder of collected photos."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.manifest = self.folder / MANIFEST
        self._cache_key, self._records, self._end, self._sha = None, [], 0, set()
        self._cache_lock = threading.Lock()

    def records(self) -> list:
        """Manifest records, kept up to date cheaply: a manifest only grows by appends (ours or another
        process's), so only the new lines are parsed; a replaced or shrunk file is read again whole."""
        with self._cache_lock:  # worker threads share one RawFolder
            return self._refresh()

    def _refresh(self) -> list:
        try:
            st = self.manifest.stat()
            key = (st.st_ino, st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            key = None
        if key != self._cache_key:
            if key is None or self._cache_key is None or key[0] != self._cache_key[0] or key[1] < self._end:
                self._records, self._end, self._sha = [], 0, set()
            if key is not None:
                new, self._end = read_jsonl_from(self.manifest, self._end)
                self._records = self._records + new  # a new list: callers may hold the old one
                self._sha.update(r["sha256"] for r in new if "sha256" in r)
            self._cache_key = key
        return self._records

    def count(self) -> int:
        return len(self.records())

    def known_urls(self) -> set:
        return {r.get("url") for r in self.records() if r.get("url")}

    def known_sha256(self) -> set:
        with self._cache_lock:
            self._refresh()
            return set(self._sha)

    def _next_number(self) -> int:
        # plain names and one regex, no Path objects: this runs under the lock for every photo added
        names = os.listdir(self.folder) if self.folder.exists() else []
        used = [int(m.group(1)) for n in names if (m := _NUMBERED.match(n))]
        used += [int(m.group(1)) for r in self.records() if (m := _NUMBERED.match(r["file"]))]
        return max(used, default=0) + 1

    def add(self, data: bytes, ext: str, width: int, height: int, source: str, url: str = "", page: str = "",
            licence: str = "", author: str = "", **extra):
        """Store a photo and append its manifest line. Returns the record, or None if the same bytes are there."""
        assert source in SOURCES, source
        digest = sha256(data)
        self.folder.mkdir(parents=True, exist_ok=True)
        # Write the bytes before taking the lock: slow disks do not serialise the workers. The temp name is
        # unique per call (two threads may store the same bytes at once) and carries our pid for reconcile().
        fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{os.getpid()}-", suffix=f".{ext}", dir=self.folder)
        tmp = Path(tmp)
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; a photo is as readable as any other data file
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            with _thread_lock(self.manifest), lock_for(self.manifest):
                if digest in self.known_sha256():
                    return None
                name = f"{self._next_number():06d}.{ext}"
                os.replace(tmp, self.folder / name)
                record = {"file": name, "sha256": digest, "bytes": len(data), "width": width, "height": height,
                          "source": source, "url": url, "page": page, "licence": licence, "author": author,
                          "added": now_iso(), **extra}
                append_jsonl(self.manifest, [record], lock=False, fsync=False)
            # Durable before we return, but flushed outside the lock: workers adding at the same time share
            # one journal commit instead of queueing for one each. The rename above is in the same or an
            # earlier commit, so a line never outlives its file.
            fsync_path(self.manifest)
            return record
        finally:
            if tmp.exists():
                tmp.unlink()

    def reconcile(self, data_root) -> list:
        """Finish what a killed run left: drop temp files, quarantine numbered files with no manifest line."""
        if not self.folder.exists():
            return []
        moved = []
        with _thread_lock(self.manifest), lock_for(self.manifest):
            listed = {r["file"] for r in self.records()}
            for p in sorted(self.folder.iterdir()):
                if p.name.startswith(TMP_PREFIX):
                    if not _writer_alive(p.name):
                        p.unlink(missing_ok=True)  # a partial download, never a user's file
                elif _NUMBERED.match(p.name) and p.name not in listed:
                    moved.append(quarantine(data_root, p, "orphan", "file without a manifest line (interrupted run)"))
        return moved


def adopt(folder, data_root) -> list:
    """Register the photos a person copied by hand into `folder` (any folder of this layout: data/raw/<index>/,
    data/background/<folder>/). Returns the new manifest records.

    Each file the manifest does not list (not hidden, not ours: temp files, manifest, locks) is renamed into the
    numbering (a file already named like 000042.jpg keeps its name) and gets a line with source "manual" and
    `original_name`, the person's file name. Bytes the folder already holds are quarantined as `duplicate`;
    decoding is preprocess's, so a broken photo is quarantined there like any other. Under the manifest lock, so a
    crawl or an upload adding photos at the same time is safe; killed between a rename and its line, the file is
    adopted again at the next call (under its new number).
    """
    rf = RawFolder(folder)
    if not rf.folder.is_dir():
        return []
    added = []
    with _thread_lock(rf.manifest), lock_for(rf.manifest):
        records = rf.records()
        listed = {r["file"] for r in records}
        by_sha = {r["sha256"]: r["file"] for r in records if "sha256" in r}
        for path in sorted(rf.folder.iterdir()):
            name = path.name
            if name in listed or name.startswith((".", TMP_PREFIX)) or name.startswith(MANIFEST) \
                    or not path.is_file():
                continue
            data = path.read_bytes()
            ext = sniff(data[:16]) or (path.suffix.lower()[1:] if path.suffix.lower() in PHOTO_SUFFIXES else None)
            if ext is None:
                log.warning("%s: not a photo (by its name or its bytes): left where it is", path)
                continue
            digest = sha256(data)
            if digest in by_sha:
                quarantine(data_root, path, "duplicate", f"added by hand: the same bytes as {by_sha[digest]}")
                continue
            target = name if _NUMBERED.match(name) else f"{rf._next_number():06d}.{ext}"
            width, height = _header_size(data)
            os.replace(path, rf.folder / target)
            record = {"file": target, "sha256": digest, "bytes": len(data), "width": width, "height": height,
                      "source": "manual", "url": "", "page": "", "licence": "", "author": "", "added": now_iso(),
                      "original_name": name}
            append_jsonl(rf.manifest, [record], lock=False, fsync=False)
            listed.add(target)
            by_sha[digest] = target
            added.append(record)
        if added:
            fsync_path(rf.manifest)
    return added


def _header_size(data: bytes) -> tuple:
    """(width, height) from the image header, without decoding; (0, 0) when Pillow cannot read it."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except Exception:  # a broken file: preprocess decodes it and says why
        return 0, 0


def _writer_alive(tmp_name: str) -> bool:
    """True if the temp file's writer (pid after the prefix) is another live process, e.g. serve.py storing a
    user photo while a crawl starts: its file is still being written and must not be deleted."""
    pid = tmp_name[len(TMP_PREFIX):].split("-", 1)[0]
    if not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def quarantine(data_root, path, reason: str, detail: str = "", move: bool = True) -> Path:
    """List a rejected file in data/rejected.csv and (unless move=False) move it to data/rejected/<reason>/.

    Returns where the file now is. The file's path in the CSV is relative to the data root when it lies below it.
    """
    data_root, path = Path(data_root), Path(path)
    try:
        rel = path.resolve().relative_to(data_root.resolve())
    except ValueError:
        rel = path
    dest = path
    if move:
        dest = config.rejected_dir(data_root) / reason / (rel.parent.name + "_" + path.name
                                                           if rel.parent.name else path.name)
        dest.parent.mkdir(parents=True, exist_ok=True)
        n = 1
        while dest.exists():  # never overwrite an earlier rejected file
            dest = dest.with_name(f"{dest.stem}~{n}{dest.suffix}")
            n += 1
        shutil.move(str(path), str(dest))
    csv_path = config.rejected_csv(data_root)
    with lock_for(csv_path):
        new = not csv_path.exists()
        buf = io.StringIO()
        w = csv.writer(buf)
        if new:
            w.writerow(["file", "reason", "detail"])
        w.writerow([str(rel), reason, detail])
        with open(csv_path, "a", encoding="utf-8", newline="") as f:
            f.write(buf.getvalue())
    return dest
