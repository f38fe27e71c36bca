"""Bing image search, from the HTML of its results pages.

Each result is an anchor `a.iusc` whose attribute `m` is JSON with the media URL (`murl`) and the page it was
found on (`purl`). Pages are asked for with `first` (1-based, as Bing's own pages do) and `count`, photos only
(`qft=+filterui:photo-photo`). Bing repeats results once it runs out, so paging stops at the first page that brings
nothing new; a page with no result anchors at all is a failure of its own (the layout changed, or Bing refused a
bot), never taken for "no more results". Bing states no licence: the manifest leaves it empty.
Best effort: Bing's terms and its bot detection may refuse an automated client at any time.
"""
import json

from bs4 import BeautifulSoup

from locator.core import config
from locator.crawl.engines import Candidate
from locator.crawl.fetch import FetchError

NAME = "bing"
DEFAULT_ENDPOINT = config.BING_URL
PAGE = 35  # what Bing's own infinite scroll asks for
PHOTOS_ONLY = "+filterui:photo-photo"  # Bing's "Type: Photograph" filter: no clip art, drawings or GIFs
NO_RESULTS = "no results parsed: the page layout may have changed or the request was refused"


def search(place, term, endpoint, fetcher, page_size: int = PAGE):
    first, seen = 1, set()
    for _ in range(config.MAX_SEARCH_PAGES):
        html = fetcher.get_text(endpoint, {"q": term, "first": str(first), "count": str(page_size),
                                           "qft": PHOTOS_ONLY, "mmasync": "1"}, lane="api")
        anchors = BeautifulSoup(html, "html.parser").select("a.iusc")
        if not anchors:
            raise FetchError("no_results_parsed", f"{NO_RESULTS} (first={first})")
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
