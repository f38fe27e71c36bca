"""pipeline.py's steps as child processes: the argv of each step's script, spawning it with its output in a log
file, and reading back why it failed.

Crash-safety: a child is killed with the pipeline (PR_SET_PDEATHSIG), so a kill -9 of the pipeline never leaves
a training running, unlocked, beside the next run; Ctrl-C or an error of ours kills the child too.
"""
import ctypes
import os
import shlex
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path

from locator.core import config
from locator.core.errors import UserError

REPO = Path(__file__).resolve().parents[2]   # the scripts live at the repository root
SCRIPTS = {"crawl": "crawl.py", "preprocess": "preprocess.py", "dataset": "dataset.py", "train": "cnn.py"}
EXTRA = {"crawl": "crawl_args", "preprocess": "preprocess_args", "dataset": "dataset_args", "train": "cnn_args"}
# pipeline flags handed on to a step when given (else the step's own default, from config.py, applies)
# (a switch such as no_background is handed on when set)
PASSED = {"crawl": ("engine", "api_url", "source", "per_place", "per_query", "no_background", "contact"),
          "preprocess": ("size", "resize_mode"), "dataset": (),
          "train": ("arch", "epochs", "train_minutes", "runner")}


class StepFailed(Exception):
    """A step exited with an error: the run stops, models/current stays as it was."""



def split_args(text, flag: str) -> list:
    try:
        return shlex.split(text or "")
    except ValueError as e:
        raise UserError(f"{flag} {text!r}: {e}")


def commands(cfg) -> dict:
    """step -> argv of its script, from the pipeline's settings (every step writes its output to a log file)."""
    common = ["--no-progress"] + (["-v"] if cfg.verbose else [])
    where = {"crawl": ["--places", cfg.places, "--out", config.raw_dir(cfg.data)],
             "preprocess": ["--places", cfg.places, "--data", cfg.data],
             "dataset": ["--places", cfg.places, "--data", cfg.data],
             "train": ["--data", cfg.data, "--models", cfg.models, "--no-promote"]}
    out = {}
    for step, script in SCRIPTS.items():
        passed = [a for name in PASSED[step] for a in _flag(name, getattr(cfg, name, None))]
        extra = split_args(getattr(cfg, EXTRA[step], None), "--" + EXTRA[step].replace("_", "-"))
        out[step] = [str(a) for a in (sys.executable, REPO / script, *where[step], *passed, *common, *extra)]
    return out


def _flag(name: str, value) -> list:
    """A pipeline setting as its step's flag: [] when unset, ["--x"] for a switch that is on, else ["--x", v]."""
    if value is None or value is False:
        return []
    return ["--" + name.replace("_", "-")] + ([] if value is True else [value])


_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _die_with(parent: int) -> None:
    """In the child, before exec: be killed when the pipeline dies, even by kill -9."""
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the pipeline died before prctl took effect
        os._exit(1)


def spawn(argv, log_path: Path, poll=None) -> int:
    """Run argv with stdout and stderr appended to log_path; call poll() about once a second while it runs."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        out.write(f"$ {shlex.join(argv)}\n".encode())
        out.flush()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                preexec_fn=partial(_die_with, os.getpid()) if _LIBC else None)
        try:
            while True:
                try:
                    return proc.wait(timeout=1.0)
                except subprocess.TimeoutExpired:
                    if poll:
                        poll()
        except BaseException:  # Ctrl-C or an error of ours: never leave the step running on its own
            proc.kill()
            proc.wait()
            raise


def last_error(log_path: Path) -> str:
    """The step's own explanation: its last `error: ...` line, else its last line."""
    try:
        lines = [ln.strip() for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    errors = [ln for ln in lines if ln.startswith("error:") or " ERROR " in ln]
    return (errors or lines or [""])[-1]


def crawl_cause(log_path: Path) -> str:
    """Why crawl.py collected nothing, from its last error line ("nothing could be collected: <cause>")."""
    line = last_error(log_path)
    for marker in ("nothing could be collected: ", "the crawl stopped early: "):
        if marker in line:
            return line.split(marker, 1)[1]
    return line.split(": ", 1)[-1] if " ERROR " in line else line or "no reason logged"


def epochs_logged(run: Path) -> int:
    """Epochs cnn.py has finished in a run (rows of its CSV training log)."""
    try:
        with open(run / "logs" / "history.csv", "rb") as f:
            return max(0, sum(1 for _ in f) - 1)
    except OSError:
        return 0
