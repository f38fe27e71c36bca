"""The crawl loop: search a place's terms in order, download in parallel, keep what decodes, until the folder is full.

The main thread pages through the engine's results while worker threads download, decode and store, so that
the wait for the next results page overlaps the downloads. Two rules shape the loop:
- a failed result never costs quota: the loop keeps paging (and moves on to the next term) until the folder
  holds `per_place` photos or the source has nothing more;
- never more downloads in flight than photos still missing, so a full folder is never overshot.
"""
import logging
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from locator.core.images import ImageRejected, decode
from locator.core.tables import format_table, totals
from locator.crawl import engines
from locator.crawl.fetch import FetchError, HostStopped
from locator.crawl.rawstore import RawFolder

log = logging.getLogger(__name__)


@dataclass
class PlaceReport:
    index: str
    name: str
    had: int = 0          # photos in the folder before this run
    found: int = 0        # results the source returned
    saved: int = 0
    duplicates: int = 0   # a URL or content (sha256) the folder already has
    failed: Counter = field(default_factory=Counter)  # reason -> count
    stopped: str = ""     # why the crawl stopped here: the search host is unreachable or asks for a long wait

    @property
    def total(self) -> int:
        return self.had + self.saved


def crawl(places, engine, endpoint, out, per_place: int, fetcher, workers: int, progress: bool = True,
          folder_of=None) -> list:
    """Fill out/<index>/ for each place; returns a PlaceReport per place. `folder_of(place)`: another folder name
    under out (background queries: places.Background, filed by their folder name)."""
    out = Path(out)
    folder_of = folder_of or (lambda place: place.index)
    reports = []
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="download") as pool:
        for place in places:
            reports.append(crawl_place(place, engine, endpoint, RawFolder(out / folder_of(place)), per_place,
                                       fetcher, pool, queue=2 * workers, progress=progress))
            if reports[-1].stopped:  # every further search would fail the same way at once
                break
    return reports


def crawl_place(place, engine, endpoint, folder: RawFolder, per_place: int, fetcher, pool, queue: int,
                progress: bool = True) -> PlaceReport:
    rep = PlaceReport(place.index, place.name, had=folder.count())
    need = per_place - rep.had
    if need <= 0:
        return rep
    seen = folder.known_urls()
    pending = set()
    bar = tqdm(total=per_place, initial=rep.had, desc=f"{place.index} {place.name[:24]}", unit="photo",
               disable=not progress, leave=True)

    def settle():
        """Wait for at least one download and count how it went."""
        done, _ = wait(pending, return_when=FIRST_COMPLETED)
        for future in done:
            pending.discard(future)
            outcome, reason = future.result()
            if outcome == "saved":
                rep.saved += 1
                bar.update(1)
            elif outcome == "duplicate":
                rep.duplicates += 1
            else:
                rep.failed[reason] += 1
                bar.set_postfix(failed=sum(rep.failed.values()), refresh=False)

    try:
        for term in place.queries:
            results = iter(engine.search(place, term, endpoint, fetcher))
            while True:
                # Before asking for another result: wait while the downloads in flight could already fill the
                # folder (no overshoot, and no results page fetched for nothing), or the queue is deep.
                while pending and (rep.saved + len(pending) >= need or len(pending) >= queue):
                    settle()
                if rep.saved >= need:
                    break
                try:
                    cand = next(results, None)
                except FetchError as e:  # the search itself failed: the next term may still work
                    rep.failed[f"search_{e.reason}"] += 1
                    if isinstance(e, HostStopped):  # ...unless the search host itself is given up
                        rep.stopped = e.detail
                    log.warning("%s %s: search for %r failed: %s", place.index, place.name, term, e)
                    break
                if cand is None:
                    break
                rep.found += 1
                if cand.url in seen:
                    rep.duplicates += 1
                    continue
                seen.add(cand.url)
                pending.add(pool.submit(_download, engine, cand, fetcher, folder))
            getattr(results, "close", lambda: None)()  # a generator left early: let it clean up
            if rep.stopped:
                break
            # On to the next term without waiting for this one's downloads: the wait at the top of the loop
            # holds the next search back for as long as those downloads could still fill the folder.
        while pending:
            settle()
    finally:
        for future in pending:  # Ctrl-C: do not start queued downloads; running ones finish whole
            future.cancel()
        bar.close()
    if rep.saved < need:
        log.info("%s %s: the source ran out at %d of %d photos", place.index, place.name, rep.total, per_place)
    return rep


def _download(engine, cand, fetcher, folder: RawFolder):
    """Runs in a worker: fetch, fully decode (pixel cap), store. Returns (outcome, reason)."""
    try:
        data, ext = engines.fetch(engine, cand, fetcher)
        _, (width, height) = decode(data)
    except FetchError as e:
        log.debug("failed %s: %s", cand.url, e)
        return "failed", e.reason
    except ImageRejected as e:
        log.debug("rejected %s: %s", cand.url, e)
        return "failed", e.reason
    record = folder.add(data, ext, width, height, engine.NAME, url=cand.url, page=cand.page,
                        licence=cand.licence, author=cand.author)
    return ("saved", "") if record else ("duplicate", "")


def summary_table(reports, per_place: int) -> str:
    """Plain-text table: one row per place and a total row."""
    head = ["index", "place", "had", "found", "saved", "dups", "failed", f"now/{per_place}", "failed by reason"]
    rows = [[r.index, r.name[:32], r.had, r.found, r.saved, r.duplicates, sum(r.failed.values()), r.total,
             _reasons(r.failed)] for r in reports]
    failed = sum((r.failed for r in reports), Counter())
    return format_table(head, rows, totals(head[:-1], rows) + [_reasons(failed)])


def _reasons(failed: Counter) -> str:
    return " ".join(f"{k}:{v}" for k, v in sorted(failed.items()))
