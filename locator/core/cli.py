"""What every script shares at its edges: logging, and turning a user mistake into one line and exit code 2.

Flag checks, one way in every script: what the flags alone can tell is checked in parse_args through ap.error
(`error: ... (see X --help)`, exit 2, before any work or logging starts); what needs the place table, a folder or
a model run raises UserError where it is found (`error: ...`, exit 2). Both end in run() below."""
import argparse
import logging
import sys
from pathlib import Path

from locator.core import config
from locator.core.errors import UserError


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def run(main) -> None:
    """Call main(); a UserError becomes `error: ...` on stderr and exit 2, Ctrl-C exit 130."""
    try:
        code = main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose mistakes are UserErrors too: one line on stderr and exit 2, like every other mistake."""

    def error(self, message):
        raise UserError(f"{message} (see {self.prog} --help)")


def at_least(ap, args, minimum, *flags) -> None:
    """ap.error for the first of `flags` (attribute names; None = not given) below `minimum`."""
    for flag in flags:
        value = getattr(args, flag)
        if value is not None and value < minimum:
            ap.error(f"--{flag.replace('_', '-')} must be at least {minimum}")


def add_models_flag(ap) -> None:
    """--models: the models folder (runs/, current, serving/), for every script that reads or writes models."""
    ap.add_argument("--models", type=Path, default=config.MODELS, help="models folder (default %(default)s)")


def add_data_flags(ap) -> None:
    """The flags every data step takes: --places, --data, --no-progress, -v."""
    ap.add_argument("--places", type=Path, default=config.PLACES, help="place table (default %(default)s)")
    ap.add_argument("--data", type=Path, default=config.DATA, help="data root (default %(default)s)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar (e.g. under cron)")
    ap.add_argument("-v", "--verbose", action="store_true")
