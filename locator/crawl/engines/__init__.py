"""Where photos come from: one module per engine, all behind one tiny interface.

An engine module defines
    NAME              the manifest's `source` value ("commons", "bing", "folder")
    DEFAULT_ENDPOINT  the API URL used without --api-url (None: the engine needs --source DIR instead)
    search(place, term, endpoint, fetcher)
                      an iterator of Candidate, paging until the source has no more results
and may define
    fetch(candidate, fetcher) -> (bytes, ext)
                      how to get a candidate's bytes (default: an http(s) download through the Fetcher)
    LIMITS            {lane: concurrent requests per host} for the Fetcher, e.g. Commons' {"media": 2}: the
                      limits the service itself sets. Search requests use the lane "api" (one at a time).

A new engine is a new module in this package; the crawler finds it by name and nothing else changes.
"""
import importlib
import pkgutil
from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    """One search result: where the photo is, and what the manifest should say about it."""
    url: str
    page: str = ""       # the page describing the photo (its licence, its author)
    licence: str = ""
    author: str = ""


def names() -> list:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def load(name: str):
    if name not in names():
        raise ValueError(f"unknown engine {name!r}; use one of {', '.join(names())}")
    return importlib.import_module(f"{__name__}.{name}")


def fetch(engine, candidate: Candidate, fetcher):
    """(bytes, ext) of a candidate, by the engine's own fetch if it has one."""
    own = getattr(engine, "fetch", None)
    return own(candidate, fetcher) if own else fetcher.get_image(candidate.url)


def limits(engine, per_host: int | None = None) -> dict:
    """The Fetcher's lane limits for an engine; an explicit --per-host replaces the engine's download limits
    (for a mirror of one's own), never the one-at-a-time of search requests."""
    lanes = dict(getattr(engine, "LIMITS", {}))
    return {lane: per_host for lane in lanes} if per_host else lanes
