"""The versions serve.py serves: the newest exported version, hot-reloaded when a newer one appears.

A new version folder is loaded (and warmed up with one prediction) in a background thread while the old one
keeps answering, then swapped in under a lock. The place table is read again with each version, so a model
trained on a changed table is served with it, and each version answers with the table it was loaded with. A
request holds the version it started on until it has its answer, so requests in flight finish on the old
version, which is released when its last request is done. A version that fails to load is logged, reported by
the status API, and skipped; the next newer one is tried. A failed version is tried again when its files or the
place table change.
"""
import logging
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from locator.core import config
from locator.core.errors import UserError
from locator.core.places import load as load_places
from locator.predict.predictor import Predictor
from locator.runs import export, runs
from locator.serve.batching import Batcher

log = logging.getLogger("serve")


class VersionNotFound(Exception):
    """The version asked for is not the one loaded (TF Serving: 404 "Servable not found")."""



def load_version(version_dir, table, model=None):
    """A predictor.Predictor on an exported version: same normalisation, unknown rule and place answer as
    predict.py's, with the SavedModel in place of the .h5 (or `model`, e.g. a backend.RemoteModel: any object
    with the Signature's input_shape and predict). UserError/ValueError/OSError if it cannot be used."""
    version_dir = Path(version_dir)
    meta = export.read_metadata(version_dir)
    runs.check_classes(meta, table)
    sig = model or export.Signature(version_dir)
    if list(sig.input_shape[1:3]) != list(meta["input_size"]):
        raise UserError(f"{version_dir}: the signature takes {sig.input_shape[1:3]} images, metadata.json says "
                        f"{meta['input_size']}")
    return Predictor(sig, meta, table, version_dir)


@dataclass
class Loaded:
    version: int
    path: Path
    predictor: object            # predictor.Predictor on the SavedModel
    batcher: Batcher
    signature_defs: dict
    users: int = 0
    retired: bool = False

    def release(self) -> None:
        self.batcher.close()


@dataclass
class BatchOptions:
    max_batch: int = config.SERVE_BATCH_MAX
    window: float = config.SERVE_BATCH_WINDOW
    queue_max: int = config.SERVE_QUEUE_MAX
    batching: bool = True


@dataclass
class ModelStore:
    base: Path                   # models/serving/<name>/
    places: Path                 # the place table, read with each version loaded
    options: BatchOptions = field(default_factory=BatchOptions)
    poll: float = config.RELOAD_POLL
    backend: object = None       # backend.Backend: model calls go to a TF Serving REST endpoint

    def __post_init__(self):
        self.base, self.places = Path(self.base), Path(self.places)
        self.name = self.base.name
        self._lock = threading.Lock()
        self._current = None
        self._states = {}        # version -> (state, error message): the status API's view
        self._failed = {}        # version -> its files when it failed: retried once they change
        self._stop = threading.Event()
        self._thread = None
        self.clients = lambda: 0   # the server sets it: its open connections (batches wait for that many)

    def _clients(self) -> int:
        return self.clients()

    # --- life cycle ---
    def start(self) -> "ModelStore":
        """Load the newest loadable version now (UserError if there is none), then watch for newer ones."""
        self.refresh()
        if self._current is None:
            failed = {v: e for v, (s, e) in self._states.items() if e}
            why = "; ".join(f"version {v}: {e}" for v, e in sorted(failed.items())) or "no exported version"
            raise UserError(f"nothing to serve in {self.base}: {why}")
        if self.poll > 0:
            self._thread = threading.Thread(target=self._watch, daemon=True, name="reload")
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        with self._lock:
            if self._current:
                b = self._current.batcher
                if b.calls:
                    log.info("version %d of %s: %d photos in %d model calls (%.1f a call)", self._current.version,
                             self.name, b.rows, b.calls, b.rows / b.calls)
                self._current.release()

    def _watch(self) -> None:
        while not self._stop.wait(self.poll):
            try:
                self.refresh()
            except Exception:  # noqa: BLE001 - the watcher must outlive any surprise; serving goes on
                log.exception("looking for new versions in %s failed", self.base)

    def refresh(self) -> bool:
        """Load and swap in the newest version newer than the one served, if any loads. True if swapped."""
        served = self._current.version if self._current else 0
        for v in reversed(self.backend.versions() if self.backend else export.versions(self.base)):
            if v <= served:
                break
            if v in self._failed and self._failed[v] == self._files(v):
                continue  # failed, and its files have not changed since: a copy still under way is retried
            self._states[v] = ("LOADING", "")
            try:
                loaded = self._load(v)
            except Exception as e:  # noqa: BLE001 - any broken folder: logged, reported, skipped
                msg = f"{type(e).__name__}: {e}" if not isinstance(e, UserError) else str(e)
                log.error("version %d of %s cannot be served, skipped until its files change: %s", v, self.name,
                          msg)
                self._states[v] = ("END", self._public(msg)[:500])
                self._failed[v] = self._files(v)
                continue
            self._failed.pop(v, None)
            self._swap(loaded)
            return True
        return False

    def _files(self, version: int) -> tuple:
        """What a version folder holds and the place table (name, size, mtime of each file): a change means a
        retry."""
        out = []
        for root, _, files in os.walk(self.base / str(version)):
            for f in files:
                out.append(os.path.join(root, f))
        stats = []
        for f in sorted(out) + [str(self.places)]:
            try:
                st = os.stat(f)
            except OSError:
                continue
            stats.append((f, st.st_size, st.st_mtime_ns))
        return tuple(stats)

    def _public(self, msg: str) -> str:
        """An error for the status API: paths relative to the model folder, no other absolute path (the API may
        face the world; the log keeps the full message)."""
        for root in (str(self.base.resolve()), str(self.base)):
            msg = msg.replace(root + os.sep, "").replace(root, ".")
        return re.sub(r"(?<![\w.])/(?:[^\s'\"/:,;)]+/)*([^\s'\"/:,;)]+)", r"\1", msg)

    def _load(self, version: int) -> Loaded:
        path = self.base / str(version)
        if self.backend and not path.is_dir():
            raise UserError(f"the backend serves version {version}, but {version}/ is not in this model folder: "
                            "give serve.py the same models/serving/ (its metadata.json holds the places)")
        table = load_places(self.places)  # the table of now: a new model may need a changed one
        predictor = load_version(path, table, self.backend.model(version) if self.backend else None)
        predictor.probabilities(np.zeros((1, predictor.size, predictor.size, 3), np.uint8))  # warm up: trace now
        o = self.options

        def run(x):
            return predictor.probabilities(x, batch=o.max_batch)

        return Loaded(version, path, predictor, Batcher(run, o.max_batch, o.window, o.queue_max, o.batching,
                                                        name=f"{self.name}-{version}", clients=self._clients),
                      self.backend.signature_defs(version) if self.backend else export.signature_defs(path))

    def _swap(self, new: Loaded) -> None:
        with self._lock:
            old, self._current = self._current, new
            self._states[new.version] = ("AVAILABLE", "")
            if old is not None:
                old.retired = True
                self._states[old.version] = ("END", "")
                if old.users == 0:
                    old.release()
        log.info("serving version %d of %s%s", new.version, self.name,
                 f" (was {old.version}; requests in flight finish on it)" if old else "")

    # --- requests ---
    def acquire(self, version: int | None = None) -> "_Use":
        """The served version, held (not released while in use) until the `with` block ends. VersionNotFound
        at once if `version` is not the one served."""
        with self._lock:
            loaded = self._current
            if version is not None and version != loaded.version:
                raise VersionNotFound(f"Servable not found for request: Specific({self.name}, {version})")
            loaded.users += 1
        return _Use(self, loaded)

    def _unuse(self, loaded: Loaded) -> None:
        with self._lock:
            loaded.users -= 1
            if loaded.retired and loaded.users == 0:
                loaded.release()

    @property
    def version(self) -> int:
        return self._current.version

    def status(self, version: int | None = None) -> list:
        """TF Serving's model_version_status list (GetModelStatusResponse in its JSON mapping)."""
        states = dict(self._states)
        if version is not None:
            if version not in states:
                raise VersionNotFound(f"Could not find version {version} of model {self.name}")
            states = {version: states[version]}
        return [{"version": str(v), "state": s,
                 "status": {"error_code": "UNKNOWN" if e else "OK", "error_message": e}}
                for v, (s, e) in sorted(states.items(), reverse=True)]


class _Use:
    def __init__(self, store: ModelStore, loaded: Loaded):
        self._store, self.loaded = store, loaded

    def __enter__(self) -> Loaded:
        return self.loaded

    def __exit__(self, *exc) -> None:
        self._store._unuse(self.loaded)
