"""The scheduled job: crawl -> preprocess -> dataset -> cnn -> evaluate, and promote only a model that is not worse.

    python pipeline.py                                   # one run with the defaults (what cron runs)
    python pipeline.py --config pipeline.toml            # settings from a file (keys = flags without dashes)
    python pipeline.py --force                           # train even if there are no new photos
    python pipeline.py --rollback                        # the previous good model becomes current again
    python pipeline.py --install-cron "0 3 * * 0"        # print the crontab line; add --apply to install it

Each step runs as its script in a child process; logs/<run>/ holds their logs, pipeline.log and report.json
(photos added per place, time per step, old and new metrics, decision). Exit 0: done (promoted, rejected, nothing
new) or another run is still going; 1: a step failed (models/current unchanged); 2: bad input.
"""
import logging
import sys
from pathlib import Path

from tqdm.contrib.logging import logging_redirect_tqdm

from locator.core import config
from locator.core.cli import ArgumentParser, add_data_flags, add_models_flag, at_least, run, setup_logging
from locator.core.errors import UserError
from locator.crawl import engines
from locator.job import cron, job, settings, steps

log = logging.getLogger("pipeline")


def build_parser() -> ArgumentParser:
    ap = ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, help="TOML file of settings (flags given as well override it)")
    add_data_flags(ap)
    add_models_flag(ap)
    ap.add_argument("--logs", type=Path, default=config.LOGS, help="run logs and reports (default %(default)s)")
    g = ap.add_argument_group("steps (unset: the step's own default)")
    g.add_argument("--engine", choices=engines.names(), help=f"crawl.py --engine ({config.ENGINE})")
    g.add_argument("--api-url", help="crawl.py --api-url: a mirror or a local search server")
    g.add_argument("--source", type=Path, help="crawl.py --source (for --engine folder)")
    g.add_argument("--contact", help=f"crawl.py --contact: your email or a URL you read, for the User-Agent "
                   f"(default ${config.CONTACT_ENV}, else the project's page)")
    g.add_argument("--per-place", type=int, help=f"crawl.py --per-place: photos a place should have "
                   f"({config.PER_PLACE}); raise it to collect more")
    g.add_argument("--per-query", type=int, help=f"crawl.py --per-query: photos a background query should have "
                   f"({config.PER_QUERY})")
    g.add_argument("--no-background", action="store_true",
                   help="crawl.py --no-background: skip the background sheet's queries")
    g.add_argument("--no-crawl", action="store_true", help="skip the crawl: use the photos in data/raw as they are")
    g.add_argument("--size", type=int, help=f"preprocess.py --size ({config.SIZE})")
    g.add_argument("--resize-mode", choices=config.RESIZE_MODES, help=f"preprocess.py ({config.RESIZE_MODE})")
    g.add_argument("--arch", choices=config.ARCHS, help=f"cnn.py --arch ({config.ARCH})")
    g.add_argument("--epochs", type=int, help=f"cnn.py --epochs ({config.EPOCHS})")
    g.add_argument("--train-minutes", type=float, metavar="M", help="cnn.py --minutes: the nightly job's training "
                   "budget; epochs are planned from the current model's measured speed (unset: --epochs)")
    g.add_argument("--runner", choices=config.EMBED_RUNNERS, help=f"cnn.py --runner ({config.EMBED_RUNNER}): where "
                   "the embedding model's photos are embedded; ray: on a Ray cluster (--cnn-args '--ray-address A')")
    for step, script in (("crawl", "crawl.py"), ("preprocess", "preprocess.py"), ("dataset", "dataset.py"),
                         ("cnn", "cnn.py")):
        g.add_argument(f"--{step}-args", metavar="ARGS", help=f"more flags for {script} (one string; "
                       f"--{step}-args=--flag for a single flag), e.g. "
                       + {"crawl": "'--only 00,0a --per-host 16'", "preprocess": "'--near-dup-distance 6'",
                          "dataset": "'--min-per-class 20'",
                          "cnn": "'--batch 32 --shuffle-labels' (the latter: testing only)"}[step])
    g = ap.add_argument_group("promotion")
    g.add_argument("--tolerance", type=float, default=config.PROMOTE_TOLERANCE,
                   help="the candidate may trail the current model by this much in accuracy and in macro F1 "
                        "(default %(default)s)")
    g.add_argument("--gate-tolerance", type=float, default=config.PROMOTE_GATE_TOLERANCE,
                   help="... and may accept this much more of the validation background photos (none of our "
                        "places) as one of ours (default %(default)s)")
    g.add_argument("--force", action="store_true", help="train even when no photo is new")
    g.add_argument("--rollback", action="store_true", help="make the previous good run current again, and stop")
    g = ap.add_argument_group("cron")
    g.add_argument("--install-cron", metavar="SCHEDULE",
                   help=f"print the crontab line running pipeline.py with these settings, e.g. "
                        f"\"{config.CRON_SCHEDULE}\" (Sundays 03:00) or @daily")
    g.add_argument("--apply", action="store_true", help="with --install-cron: install the line with `crontab`")
    return ap


def parse_args(argv=None):
    """(args, base, parser): base holds the defaults plus the config file, args the command line on top."""
    argv = sys.argv[1:] if argv is None else list(argv)
    ap = build_parser()
    pre, _ = ap.parse_known_args(argv)
    file_argv = settings.config_argv(pre.config, ap) if pre.config else []
    try:
        base = ap.parse_args(file_argv)
    except UserError as e:
        raise UserError(f"--config {pre.config}: {e}")
    args = ap.parse_args(file_argv + argv)
    args.config = pre.config
    at_least(ap, args, 1, "per_place", "per_query", "epochs", "size")
    if args.train_minutes is not None and args.train_minutes <= 0:
        ap.error("--train-minutes must be positive")
    for flag in ("tolerance", "gate_tolerance"):
        if not 0 <= getattr(args, flag) < 1:
            ap.error(f"--{flag.replace('_', '-')} must be at least 0 and below 1")
    if args.apply and not args.install_cron:
        ap.error("--apply goes with --install-cron SCHEDULE")
    if args.rollback and args.install_cron:
        ap.error("--rollback and --install-cron do not go together")
    return args, base, ap


def main(argv=None) -> int:
    args, base, ap = parse_args(argv)
    setup_logging(args.verbose)
    if args.install_cron:
        command = [settings.venv_python(), steps.REPO / "pipeline.py", *settings.cron_argv(ap, args, base)]
        line = cron.line(args.install_cron, Path.cwd(), command, args.logs, args.models)
        print(line)
        if args.apply:
            changed = cron.apply(line, args.models)
            log.info("crontab: %s", "line installed" if changed else "already installed; nothing to do")
        return 0
    if args.rollback:
        return job.rollback(args)
    with logging_redirect_tqdm():
        return job.run(args)


if __name__ == "__main__":
    run(main)
