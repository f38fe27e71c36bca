"""Step 1: collect photos of every place into data/raw/<index>/ (numbered files + manifest.jsonl).

    python crawl.py                                   # Wikimedia Commons, 300 photos a place
    python crawl.py --api-url http://127.0.0.1:8765/w/api.php --data /tmp/d     # into /tmp/d/raw/
    python crawl.py --engine folder --source ../shared/datasets/indian_monuments/photos
    python crawl.py --no-background                   # places only

After the places, the queries of the table's `background` sheet (photos of none of our places) fill
DATA/background/<folder>/ (beside DATA/raw/) up to --per-query each, with the same engine, checks and manifest.
A re-run tops every folder up to --per-place and skips URLs and contents it already has; after kill -9 it first
tidies what the killed run left. Exit 2 for bad input; 1 when nothing could be collected (no results, a failing
search, or still no photo at all), or when the search host was given up midway (unreachable, or it asked for a
longer wait than the crawl makes); 0 otherwise, also when the source only had photos we already have.
"""
import logging
from pathlib import Path

from tqdm.contrib.logging import logging_redirect_tqdm

from locator.core import config, places
from locator.core.cli import ArgumentParser, at_least, run, setup_logging
from locator.core.errors import UserError
from locator.core.fsio import exclusive
from locator.crawl import engines
from locator.crawl.crawler import crawl, summary_table
from locator.crawl.fetch import Fetcher, FetchError, build_user_agent, check_url, resolve_contact
from locator.crawl.rawstore import RawFolder

log = logging.getLogger("crawl")


def parse_args(argv=None):
    ap = ArgumentParser(description="Collect photos of each place into DATA/raw/<index>/.")
    ap.add_argument("--places", type=Path, default=config.PLACES, help="place table (default %(default)s)")
    ap.add_argument("--engine", choices=engines.names(), default=config.ENGINE, help="default %(default)s")
    ap.add_argument("--api-url", help="the engine's endpoint: a mirror or a local test server")
    ap.add_argument("--source", type=Path, help="--engine folder: a folder with one subfolder per place")
    ap.add_argument("--per-place", type=int, default=config.PER_PLACE,
                    help="photos each place's folder should hold (default %(default)s)")
    ap.add_argument("--per-query", type=int, default=config.PER_QUERY,
                    help="photos each background query's folder should hold (default %(default)s)")
    ap.add_argument("--no-background", action="store_true",
                    help="skip the background sheet's queries (photos of none of our places)")
    ap.add_argument("--only", help="comma list of place indexes, e.g. 00,0a (background queries are crawled too)")
    ap.add_argument("--workers", type=int, default=config.CRAWL_WORKERS,
                    help="parallel downloads (default %(default)s)")
    ap.add_argument("--per-host", type=int,
                    help="parallel downloads from one host (default: the engine's, as the service asks: Commons "
                         f"{config.COMMONS_MEDIA_PER_HOST} on its media host; otherwise {config.CRAWL_PER_HOST}); "
                         "raise it only for a mirror of your own")
    ap.add_argument("--contact", help="your email address or a URL you read, for the User-Agent (Wikimedia's "
                    f"policy asks for one; default ${config.CONTACT_ENV}, else the project's page, with a warning)")
    ap.add_argument("--timeout", type=float, default=config.CRAWL_READ_TIMEOUT,
                    help="read timeout in seconds (default %(default)s)")
    ap.add_argument("--data", type=Path, help=f"data root, as for every step: photos go to DATA/raw/<index>/, "
                    f"background photos to DATA/background/ (default {config.DATA})")
    ap.add_argument("--out", type=Path, metavar="RAW", help="the raw folder itself instead of --data (DATA/raw: "
                    "its parent is the data root)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars (e.g. under cron)")
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args(argv)
    at_least(ap, a, 1, "per_place", "per_query", "workers", "per_host")
    if a.data and a.out:
        ap.error(f"--data and --out both say where photos go; give --data {a.out.parent} or --out alone")
    a.out = a.out or config.raw_dir(a.data or config.DATA)
    a.data = a.out.parent
    if a.timeout <= 0:
        ap.error("--timeout must be positive")
    return a


def endpoint_for(engine, args) -> str:
    """The engine's endpoint from the flags; a wrong combination is a UserError."""
    if engine.DEFAULT_ENDPOINT is None:  # a local engine: reads --source
        if not args.source:
            raise UserError(f"--engine {engine.NAME} needs --source DIR (one subfolder per place)")
        if not args.source.is_dir():
            raise UserError(f"--source {args.source} is not a folder")
        return str(args.source)
    if args.source:
        raise UserError(f"--source is for --engine folder; --engine {engine.NAME} searches {engine.NAME}")
    url = args.api_url or engine.DEFAULT_ENDPOINT
    try:
        check_url(url)
    except FetchError:
        raise UserError(f"--api-url {url!r} is not an http(s) URL")
    return url


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    table = places.load(args.places)
    chosen = table.select(args.only)
    background = [] if args.no_background else table.background
    bg_root = config.background_dir(args.out.parent)  # data/background beside data/raw
    engine = engines.load(args.engine)
    endpoint = endpoint_for(engine, args)
    user_agent = build_user_agent(resolve_contact(args.contact)) if engine.DEFAULT_ENDPOINT else None

    args.out.mkdir(parents=True, exist_ok=True)
    # two crawls filling the same folders would race for numbers and delete each other's temp files
    with exclusive(args.out / ".crawl", f"another crawl is writing to {args.out}"):
        # Finish what a killed run left: partial downloads removed, files without a manifest line set aside.
        for place in chosen:
            for moved in RawFolder(args.out / place.index).reconcile(args.out.parent):
                log.warning("%s: a file without a manifest line (interrupted run) moved to %s", place.index, moved)
        for b in background:
            for moved in RawFolder(bg_root / b.folder).reconcile(args.out.parent):
                log.warning("background/%s: a file without a manifest line (interrupted run) moved to %s",
                            b.folder, moved)

        todo = [p for p in chosen if RawFolder(args.out / p.index).count() < args.per_place]
        bg_todo = [b for b in background if RawFolder(bg_root / b.folder).count() < args.per_query]
        if not todo and not bg_todo:
            log.info("all %d folders already hold %d photos%s; nothing to do", len(chosen), args.per_place,
                     f", all {len(background)} background folders {args.per_query}" if background else "")
            return 0
        log.info("%s: %d of %d places need photos (%d each) from %s", args.out, len(todo), len(chosen),
                 args.per_place, endpoint)
        if background:
            log.info("%s: %d of %d background queries need photos (%d each)", bg_root, len(bg_todo),
                     len(background), args.per_query)
        with Fetcher(workers=args.workers, per_host=args.per_host or config.CRAWL_PER_HOST,
                     limits=engines.limits(engine, args.per_host), read_timeout=args.timeout,
                     user_agent=user_agent) as fetcher, logging_redirect_tqdm():
            reports = crawl(todo, engine, endpoint, args.out, args.per_place, fetcher, args.workers,
                            progress=not args.no_progress) if todo else []
            bg_reports = crawl(bg_todo, engine, endpoint, bg_root, args.per_query, fetcher, args.workers,
                               progress=not args.no_progress, folder_of=lambda b: b.folder) if bg_todo else []
    if reports:
        log.info("summary\n%s", summary_table(reports, args.per_place))
    if bg_reports:
        log.info("background (index = kind)\n%s", summary_table(bg_reports, args.per_query))
        empty = [r.name for r in bg_reports if not r.total]
        if empty:
            log.warning("%d background quer%s found no photo at %s: %s%s", len(empty),
                        "y" if len(empty) == 1 else "ies", endpoint, ", ".join(empty[:5]),
                        ", ..." if len(empty) > 5 else "")
    reports = reports + bg_reports
    stopped = next((r.stopped for r in reports if r.stopped), "")
    if not any(r.saved for r in reports):
        search_failed = any(k.startswith("search_") for r in reports for k in r.failed)
        searched = any(r.found for r in reports) and not search_failed
        if searched and any(r.total for r in reports):
            # The source answered, but with photos we have (or that fail every time): an exhausted source on a
            # re-run, which is no failure for a nightly job.
            log.info("the source has nothing new for these places")
            return 0
        # the pipeline quotes the text after "nothing could be collected: " as the cause
        log.error("nothing could be collected: %s", stopped or f"{endpoint} gave no usable photo")
        return 1
    if stopped:
        log.error("the crawl stopped early: %s", stopped)
        return 1
    return 0


if __name__ == "__main__":
    run(main)
