"""data/raw/<index>/: numbered photos and their manifest.jsonl, written by ONE helper (crawl, predict/serve --learn).

Order of a write, so that kill -9 at any point loses nothing and duplicates nothing:
temp file in the folder -> fsync -> rename to the next free number -> manifest line appended (under the lock).
A crash between rename and append leaves an orphan; `reconcile()` quarantines it (reason `orphan`), so its URL
is fetched again and numbered anew. Temp files from a crash are partial downloads and are removed.
Rejected files are never deleted: `quarantine()` moves them to data/rejected/<reason>/ and lists them in
data/rejected.csv.
"""
import csv
import datetime as dt
import hashlib
import io
import os
import re
import shutil
import tempfile
from pathlib import Path

from . import config
from .fsio import TMP_PREFIX, append_jsonl, lock_for, read_jsonl

MANIFEST = "manifest.jsonl"
SOURCES = ("commons", "bing", "folder", "user")
RECORD_KEYS = ("file", "sha256", "bytes", "width", "height", "source", "url", "page", "licence", "author", "added")
_NUMBERED = re.compile(r"^(\d{6})\.[a-z0-9]+$")


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class RawFolder:
    """One place's folder of collected photos."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.manifest = self.folder / MANIFEST
        self._cache_key, self._records = None, []

    def records(self) -> list:
        """Manifest records (re-read only when the file changed, e.g. another process appended)."""
        try:
            st = self.manifest.stat()
            key = (st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            key = None
        if key != self._cache_key:
            self._records = read_jsonl(self.manifest) if key else []
            self._cache_key = key
        return self._records

    def count(self) -> int:
        return len(self.records())

    def known_urls(self) -> set:
        return {r.get("url") for r in self.records() if r.get("url")}

    def known_sha256(self) -> set:
        return {r["sha256"] for r in self.records()}

    def _next_number(self) -> int:
        used = [int(m.group(1)) for p in self.folder.iterdir() if (m := _NUMBERED.match(p.name))] \
            if self.folder.exists() else []
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
            with lock_for(self.manifest):
                if digest in self.known_sha256():
                    return None
                name = f"{self._next_number():06d}.{ext}"
                os.replace(tmp, self.folder / name)
                record = {"file": name, "sha256": digest, "bytes": len(data), "width": width, "height": height,
                          "source": source, "url": url, "page": page, "licence": licence, "author": author,
                          "added": now_iso(), **extra}
                append_jsonl(self.manifest, [record], lock=False)
                return record
        finally:
            if tmp.exists():
                tmp.unlink()

    def reconcile(self, data_root) -> list:
        """Finish what a killed run left: drop temp files, quarantine numbered files with no manifest line."""
        if not self.folder.exists():
            return []
        moved = []
        with lock_for(self.manifest):
            listed = {r["file"] for r in self.records()}
            for p in sorted(self.folder.iterdir()):
                if p.name.startswith(TMP_PREFIX):
                    if not _writer_alive(p.name):
                        p.unlink(missing_ok=True)  # a partial download, never a user's file
                elif _NUMBERED.match(p.name) and p.name not in listed:
                    moved.append(quarantine(data_root, p, "orphan", "file without a manifest line (interrupted run)"))
        return moved


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
