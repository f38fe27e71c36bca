"""One run, one writer: the process training a run (cnn.py) holds a lock inside its folder while it writes.

Two trainings in one folder would interleave their checkpoints, logs and metadata, so a second cnn.py on the
same run (`--resume` of a run still training, or `--run-name` of a folder another process has) stops at once
with one line. pipeline.py chooses its candidate's folder itself and hands it to cnn.py (`--run-name`), so a
cnn.py started by hand meanwhile can never be taken for the candidate. The lock is an fcntl lock (through
locator.core.fsio): the OS drops it with the process, kill -9 included.
"""
import argparse
from pathlib import Path

from locator.core.errors import Busy, UserError
from locator.core.fsio import lock_for
from locator.runs import runs

OWNER = ".owner"           # lock_for(run / OWNER) is the run's lock
LOCK_FILE = OWNER + ".lock"


def run_name(text: str) -> str:
    """cnn.py --run-name: one folder name inside models/runs/ (an argparse type)."""
    if not text or text.startswith(".") or Path(text).name != text or "\\" in text:
        raise argparse.ArgumentTypeError(f"{text!r}: give one folder name inside models/runs/, e.g. 20260101-030000")
    return text


def own(run):
    """Make this process the one writing `run`: returns the held lock (keep it while writing; it goes with the
    process). Busy (a UserError) when another process holds it."""
    from filelock import Timeout

    lock = lock_for(Path(run) / OWNER)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise Busy(f"another process is writing run {run} (lock {lock.lock_file}); wait for it to finish")
    return lock


def claim(models, name=None):
    """(run folder, its held lock) for a new training: models/runs/<name> when the caller chose the name (it may
    exist already, empty: pipeline.py makes it before handing it over), else a fresh folder named by the time."""
    if name is None:
        run = runs.new_run(models)
        return run, own(run)
    run = runs.runs_dir(models) / run_name(name)
    run.mkdir(parents=True, exist_ok=True)
    lock = own(run)
    if _contents(run):
        lock.release()
        raise UserError(f"--run-name {name}: {run} already holds a run; name a new or empty folder "
                        "(--resume continues an interrupted run)")
    return run, lock


def drop_if_empty(run) -> None:
    """Remove a run folder that nothing was written to (its lock file aside): a training that stopped before it
    began leaves no run behind."""
    run = Path(run)
    if not run.is_dir() or _contents(run):
        return
    try:
        lock = own(run)
    except Busy:  # a training has just taken it
        return
    try:
        if not _contents(run):
            (run / LOCK_FILE).unlink(missing_ok=True)
            run.rmdir()
    except OSError:  # something was written meanwhile: the folder stays
        pass
    finally:
        lock.release()


def _contents(run: Path) -> list:
    return [p for p in run.iterdir() if p.name != LOCK_FILE]
