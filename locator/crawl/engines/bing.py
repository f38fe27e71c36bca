"""Bing image search, from the HTML of its results pages.

Each result is an anchor `a.iusc` whose attribute `m` is JSON with the media URL (`murl`) and the page it was
found on (`purl`). Pages are asked for with `first` (offset) and `count`. Bing repeats results once it runs out,
so paging stops at the first page that brings nothing new. Bing states no licence: the manifest leaves it empty.
"""
import json

from bs4 import BeautifulSoup

from locator.core import config
from locator.crawl.engines import Candidate

NAME = "bing"
DEFAULT_ENDPOINT = config.BING_URL
PAGE = 35  # what Bing's own infinite scroll asks for


def search(place, term, endpoint, fetcher, page_size: int = PAGE):
    first, seen = 0, set()
    for _ in range(config.MAX_SEARCH_PAGES):
        html = fetcher.get_text(endpoint, {"q": term, "first": str(first), "count": str(page_size),
                                           "mmasync": "1"})
        anchors = BeautifulSoup(html, "html.parser").select("a.iusc")
        new = 0
        for a in anchors:
            try:
                m = json.loads(a.get("m") or "")
            except ValueError:
                continue  # one malformed result does not spoil the page
            url = m.get("murl") if isinstance(m, dict) else None
            if not url or url in seen:
                continue
            seen.add(url)
            new += 1
            yield Candidate(url=url, page=m.get("purl", ""))
        if not new:
            return
        first += len(anchors)
