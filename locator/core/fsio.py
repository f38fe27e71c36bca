"""Files that survive kill -9: atomic writes (temp file + rename) and JSON-lines manifests appended under a lock."""
import contextlib
import datetime as dt
import json
import os
import tempfile
from pathlib import Path

from filelock import FileLock

TMP_PREFIX = ".tmp-"


def now_iso() -> str:
    """The time stamp of every record we write (manifests, metadata.json, reports, history): UTC, ISO 8601 to the
    second, so that stamps from any machine or time zone sort and compare as text."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


STAMP = "%Y%m%d-%H%M%S"  # a folder's name from its UTC time: sorts as text in time order


def stamped_dir(parent) -> Path:
    """A fresh, empty folder in `parent` named by the UTC time, YYYYmmdd-HHMMSS (a second later if taken). UTC as
    now_iso(): names keep time order across time zones and clock changes, so the newest folder sorts last and
    its name agrees with the stamps inside it. Model runs and pipeline.py's run logs are named so."""
    now = dt.datetime.now(dt.timezone.utc)
    while True:
        folder = Path(parent) / now.strftime(STAMP)
        try:
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:
            now += dt.timedelta(seconds=1)


@contextlib.contextmanager
def atomic_path(path, suffix=None, fsync: bool = True):
    """Yield a temporary path beside `path`; on success it is fsynced and renamed over `path`, else removed.

    The temp name keeps the real suffix (or `suffix`) so that libraries choosing a format by extension
    (h5py, Pillow, openpyxl) still work. fsync=False is for many small re-creatable files (processed PNGs):
    the rename still makes them all-or-nothing against kill -9, and the caller flushes them in one os.sync()
    before any manifest names them (an fsync per file costs more than decoding the photo).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=suffix if suffix is not None else path.suffix,
                               dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        if fsync:
            fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def lock_for(path) -> FileLock:
    """The lock guarding `path` (a sibling `.lock` file), shared by threads and processes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path) + ".lock")


@contextlib.contextmanager
def exclusive(path, busy: str):
    """Hold lock_for(path) for a whole run, or fail at once with `busy` (a UserError): two runs of one step on the
    same data would undo each other's work. (Busy is a UserError.)"""
    from filelock import Timeout

    from locator.core.errors import Busy

    lock = lock_for(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise Busy(f"{busy} (lock {lock.lock_file}); wait for it to finish")
    try:
        yield lock
    finally:
        lock.release()


def append_jsonl(path, records, lock: bool = True, fsync: bool = True) -> None:
    """Append records as JSON lines in one write, fsynced. Pass lock=False when the caller holds lock_for(path).

    fsync=False: the caller fsyncs later, outside its lock (see fsync_path), so that concurrent writers share
    one disk flush instead of queueing for one each while holding the lock.
    """
    data = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records)
    ctx = lock_for(path) if lock else contextlib.nullcontext()
    with ctx:
        _repair_tail(path)
        with open(path, "a", encoding="utf-8") as f:
            f.write(data)
            f.flush()
            if fsync:
                os.fsync(f.fileno())


def fsync_path(path) -> None:
    """Flush a file's written data (e.g. lines appended with fsync=False), or a folder's entries (the files renamed
    into it), to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder) -> None:
    """Flush every file and folder under `folder` (and itself) before it is renamed into sight: a kill -9 or
    power loss after the rename then finds it whole."""
    folder = Path(folder)
    subfolders = [folder]
    for p in folder.rglob("*"):
        if p.is_dir():
            subfolders.append(p)
        elif p.is_file():
            fsync_path(p)
    for d in subfolders:
        fsync_path(d)


def read_jsonl(path) -> list:
    """All complete records; a torn last line (killed mid-write) is ignored."""
    return read_jsonl_from(path, 0)[0]


def read_jsonl_from(path, offset: int = 0):
    """(records, end) for the complete lines from byte `offset` on; `end` is where the next read should start.

    Lets a reader of a growing manifest parse only what was appended since its last read. A torn last line
    (killed mid-write) is not consumed: `end` stops before it.
    """
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], 0
    complete = data[: data.rfind(b"\n") + 1]  # the torn tail, if any, stays for the next read (or repair)
    out = []
    for line in complete.split(b"\n"):
        if line.strip():
            try:
                out.append(json.loads(line))
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
    return out, offset + len(complete)


def _repair_tail(path) -> None:
    """Cut a torn last line so the next append starts on a fresh line."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        data = f.seek(0) or f.read()
        f.truncate(data.rfind(b"\n") + 1)


def rewrite_jsonl(path, records) -> None:
    """Replace a manifest whole (atomically); the caller holds lock_for(path)."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records))
