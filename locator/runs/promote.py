"""Promotion: the one way a run becomes models/current. It makes the serving export, swaps models/current, and
records the decision in models/history.jsonl, the journal --rollback reads to find the previous good run.

cnn.py, pipeline.py (promote and --rollback) and serve.py (a current run promoted before exports existed) all come
here. Crash-safety: the export is made first, so if it fails nothing has changed; models/current is replaced
atomically (a one-line file); each history line is one fsynced append under the file's lock. A kill -9 between
the swap and the history line is repaired by `adopt` at the next run.
"""
import logging
from pathlib import Path

from locator.core.errors import UserError
from locator.core.fsio import append_jsonl, atomic_write_text, now_iso, read_jsonl
from locator.runs import export, runs

log = logging.getLogger(__name__)

HISTORY = "history.jsonl"
CURRENT_CHANGES = ("promoted", "rollback", "adopted")  # history actions after which `run` is current


def promote(models, run) -> Path:
    """Make `run` current: export it for serving, then replace the one-line file atomically. Returns the
    serving version folder (models/serving/<name>/<version>/). Export first: if it fails, nothing has changed, and
    serve.py never lags behind predict.py's current model."""
    run = Path(run)
    if not (run / "model.h5").exists():
        raise UserError(f"{run} has no model.h5; only a finished run can be made current")
    version = export.write_version(models, run)
    atomic_write_text(Path(models) / runs.CURRENT, run.name + "\n")
    return version


def ensure_exported(models, run) -> Path:
    """The serving export of the current run, made now if it was promoted before exports existed."""
    return export.write_version(models, run)


def history_path(models) -> Path:
    return Path(models) / HISTORY


def read_history(models) -> list:
    return read_jsonl(history_path(models))


def record(models, entry: dict) -> None:
    """Append one decision to models/history.jsonl (one fsynced write under the file's lock)."""
    append_jsonl(history_path(models), [{"time": now_iso(), **entry}])


def finished(run) -> bool:
    return run is not None and (Path(run) / "model.h5").exists() and (Path(run) / "metadata.json").exists()


def previous_good(models, history, current_name):
    """The run --rollback goes back to: the newest run made current before (by promotion, rollback or adoption)
    that is not the current one, was never rolled back from, and still has its model. None if there is none."""
    bad = {e.get("previous") for e in history if e["action"] == "rollback"}
    for e in reversed(history):
        name = e.get("run")
        if e["action"] in CURRENT_CHANGES and name != current_name and name not in bad \
                and finished(runs.runs_dir(models) / name):
            return runs.runs_dir(models) / name
    return None


def adopt(models, history) -> list:
    """Record a current model the history does not know (made current by cnn.py without --no-promote, or by a run
    killed between promoting and writing history), so that history's idea of "current" is models/current's."""
    cur = runs.current(models)
    last = next((e for e in reversed(history) if e["action"] in CURRENT_CHANGES), None)
    if cur is None or (last and last["run"] == cur.name):
        return history
    entry = {"action": "adopted", "run": cur.name, "previous": last["run"] if last else None,
             "dataset_fingerprint": metadata_or_empty(cur).get("dataset_fingerprint"),
             "reason": "current, but not by pipeline.py's hand (cnn.py without --no-promote, or a run killed "
                       "right after promoting)"}
    record(models, entry)
    log.info("history: %s is current without a record of it; recorded as adopted", cur.name)
    return read_history(models)


def metadata_or_empty(run) -> dict:
    try:
        return runs.read_metadata(run) if run else {}
    except UserError as e:
        log.warning("%s", e)
        return {}
