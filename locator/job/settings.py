"""pipeline.py's settings: a TOML config file read as flags (so argparse checks its values as it checks the
command line's), and the flags a crontab line must carry."""
import shlex
import sys
from pathlib import Path

from locator.core.errors import UserError
from locator.job.steps import REPO

NOT_SETTINGS = ("help", "config", "install_cron", "apply", "rollback")  # flags that are actions, not settings
PATHS = ("places", "data", "models", "logs")


def _settings(parser) -> dict:
    return {a.dest: a for a in parser._actions if a.option_strings and a.dest not in NOT_SETTINGS}


def _flag(action) -> str:
    return max(action.option_strings, key=len)


def config_argv(path, parser) -> list:
    """A TOML config file as pipeline.py flags (so argparse checks its values like the command line's). Keys are
    the long flags without dashes (`per-place = 60` or `per_place = 60`); relative paths are relative to the
    file's folder; a *-args setting may be a string or a list."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: tomllib is the tomli package taken into the standard library
        import tomli as tomllib

    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"--config {path}: not found")
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise UserError(f"--config {path}: {e}")
    settings, argv = _settings(parser), []
    for key, value in data.items():
        a = settings.get(key.replace("-", "_"))
        if a is None:
            raise UserError(f"--config {path}: unknown setting {key!r}; settings are pipeline.py's long flags "
                            f"without the dashes: {', '.join(sorted(_flag(a)[2:] for a in settings.values()))}")
        if a.nargs == 0:
            if not isinstance(value, bool):
                raise UserError(f"--config {path}: {key} must be true or false")
            argv += [_flag(a)] if value else []
            continue
        if isinstance(value, list) and a.dest.endswith("_args"):
            value = shlex.join(map(str, value))
        elif a.type is Path:
            value = path.parent / str(value)
        argv += [f"{_flag(a)}={value}"]  # '=': a value starting with '-' (e.g. --cnn-args) stays a value
    return argv


def cron_argv(parser, args, base) -> list:
    """pipeline.py's flags for the crontab line: --config (absolute) if one was used, the four folders as absolute
    paths, and every other setting the command line gave beyond the config file (`base`)."""
    out = ["--config", str(Path(args.config).absolute())] if args.config else []
    for dest, a in _settings(parser).items():
        v, b = getattr(args, dest), getattr(base, dest)
        if dest in PATHS:
            out += [_flag(a), str(Path(v).absolute())]
        elif v != b and v not in (None, False) and dest != "no_progress":
            out += [_flag(a)] if a.nargs == 0 else [f"{_flag(a)}={Path(v).absolute() if isinstance(v, Path) else v}"]
    return out + ["--no-progress"]


def venv_python() -> Path:
    """The python that has the project's packages: the running virtualenv's, else the repo's .venv."""
    if sys.prefix != sys.base_prefix:
        return Path(sys.prefix) / "bin" / "python"
    local = REPO / ".venv" / "bin" / "python"
    return local if local.exists() else Path(sys.executable)
