"""The crontab line that runs pipeline.py on a schedule, and installing it with `crontab` (merged, idempotent).

The line is self-contained because cron runs it with an almost empty environment: it changes to the directory the
line was made in (so a config file's relative paths mean the same), calls the virtualenv's python and pipeline.py by
absolute path, and appends everything the run prints to <logs>/cron.log (pipeline.py also keeps a folder per run
under <logs>/). It ends with a marker comment naming the models folder: installing again for the same models folder
replaces that line (a new schedule, new flags) and leaves every other line of the crontab alone.
"""
import re
import shlex
import shutil
import subprocess
from pathlib import Path

from locator.core.errors import UserError

MARKER = "# landmark-locator pipeline"
_NICKNAMES = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly", "@reboot"}
_FIELD = re.compile(r"^[0-9A-Za-z*/,\-]+$")


def check_schedule(schedule: str) -> str:
    """Five cron fields (minute hour day month weekday) or an @nickname; anything else is a UserError."""
    fields = schedule.split()
    if len(fields) == 1 and fields[0] in _NICKNAMES:
        return fields[0]
    if len(fields) != 5 or not all(_FIELD.match(f) for f in fields):
        raise UserError(f"--install-cron {schedule!r}: give five cron fields (minute hour day month weekday), "
                        "e.g. \"0 3 * * 0\" for Sundays at 03:00, or @daily")
    return " ".join(fields)


def _quote(arg) -> str:
    # cron turns an unescaped % into a newline, even inside quotes
    return shlex.quote(str(arg)).replace("%", r"\%")


def marker(models) -> str:
    return f"{MARKER} {Path(models).absolute()}"


def line(schedule: str, workdir, command, logs, models) -> str:
    """`<schedule> cd WORKDIR && mkdir -p LOGS && COMMAND >> LOGS/cron.log 2>&1 # marker` (logs/ must exist before
    the shell opens the redirection, or cron would not run the job at all)."""
    logs = Path(logs).absolute()
    cmd = " ".join(_quote(a) for a in command)
    return (f"{check_schedule(schedule)} cd {_quote(Path(workdir).absolute())} && mkdir -p {_quote(logs)} && "
            f"{cmd} >> {_quote(logs / 'cron.log')} 2>&1 {marker(models)}")


def merge(existing: str, new_line: str, models) -> str:
    """The crontab text with our line for `models` replaced (or appended); every other line kept as it was."""
    mark = marker(models)
    kept = [ln for ln in existing.splitlines() if not ln.rstrip().endswith(mark)]
    while kept and not kept[-1].strip():
        kept.pop()
    return "\n".join(kept + [new_line]) + "\n"


def installed(crontab: str) -> str:
    """The user's crontab as `crontab -l` prints it ("" when there is none yet)."""
    r = subprocess.run([crontab, "-l"], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        if "no crontab" in r.stderr.lower():
            return ""
        raise UserError(f"`crontab -l` failed: {r.stderr.strip() or r.returncode}")
    return r.stdout


def apply(new_line: str, models) -> bool:
    """Install the line with `crontab -` (merged with the existing crontab). False when it was already there."""
    crontab = shutil.which("crontab")
    if crontab is None:
        raise UserError("--apply: no `crontab` command on this machine; add the line above by hand "
                        "(or install cron, e.g. apt-get install cron)")
    old = installed(crontab)
    new = merge(old, new_line, models)
    if new == old:
        return False
    r = subprocess.run([crontab, "-"], input=new, capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise UserError(f"`crontab -` refused the new crontab: {r.stderr.strip() or r.returncode}")
    return True
