"""Wikimedia Commons through the MediaWiki Action API.

One request per page of results: generator=search over the File namespace (6), with prop=imageinfo giving each
file's URLs, size, MIME type and extmetadata (licence, author) and, because of iiurlwidth, a thumbnail URL. We
download the thumbnail: a 500 px JPEG is plenty for 64x64 training and a fraction of an original's bytes (500 is
one of the standard widths Wikimedia serves since 2025; others are rounded up by the API or refused).
Paging follows the API's `continue` object as documented: copy all of it into the next request.

Politeness, as Wikimedia's API etiquette and robot policy ask: API requests one at a time with maxlag=5 (an
answer `maxlag` or `ratelimited` is waited out and retried, not taken for "no results"), and at most
COMMONS_MEDIA_PER_HOST downloads at a time from the media host (the "media" lane below).
"""
from bs4 import BeautifulSoup

from locator.core import config
from locator.crawl.engines import Candidate
from locator.crawl.fetch import FetchError

NAME = "commons"
DEFAULT_ENDPOINT = config.COMMONS_API
LIMITS = {"media": config.COMMONS_MEDIA_PER_HOST}   # lane -> concurrent requests per host (fetch.Fetcher)
BUSY = ("maxlag", "ratelimited")                      # API errors that mean "wait and ask again"


def search(place, term, endpoint, fetcher, page_size: int = config.SEARCH_PAGE):
    params = {
        "action": "query", "format": "json", "formatversion": "2",
        "generator": "search", "gsrnamespace": "6", "gsrlimit": str(page_size),
        # photos only: no PDFs, videos or SVG drawings among the results
        "gsrsearch": f"filetype:bitmap {term}",
        "prop": "imageinfo", "iiprop": "url|size|mime|extmetadata", "iiurlwidth": str(config.THUMB_WIDTH),
        "iiextmetadatafilter": "LicenseShortName|Artist",  # the two fields we keep: smaller answers
        "maxlag": str(config.MAXLAG),
    }
    cont = {}
    for _ in range(config.MAX_SEARCH_PAGES):
        data = fetcher.get_json(endpoint, {**params, **cont}, lane="api", busy=BUSY)
        if not isinstance(data, dict):
            raise FetchError("bad_json", "the API answer is not a JSON object")
        if "error" in data:
            err = data["error"] if isinstance(data["error"], dict) else {"info": data["error"]}
            raise FetchError(f"api_{err.get('code', 'error')}", str(err.get("info", err)))
        pages = (data.get("query") or {}).get("pages") or []
        if isinstance(pages, dict):  # formatversion=1 answers: {pageid: page}
            pages = list(pages.values())
        # the generator's rank is `index`; the pages themselves come in page-id order
        for page in sorted(pages, key=lambda p: p.get("index", 0)):
            candidate = _candidate(page)
            if candidate:
                yield candidate
        if "continue" not in data:
            return
        cont = data["continue"]


def fetch(candidate, fetcher):
    """Thumbnails come from Wikimedia's media host: its own lane, at most COMMONS_MEDIA_PER_HOST at a time."""
    return fetcher.get_image(candidate.url, lane="media")


def _candidate(page):
    info = (page.get("imageinfo") or [{}])[0]
    url = info.get("thumburl") or info.get("url")
    if not url or not str(info.get("mime", "image/")).startswith("image/"):
        return None
    meta = info.get("extmetadata") or {}
    return Candidate(url=url, page=info.get("descriptionurl", ""),
                     licence=_meta_text(meta, "LicenseShortName"), author=_meta_text(meta, "Artist"))


def _meta_text(meta: dict, key: str) -> str:
    """extmetadata values are HTML snippets (Artist is usually a link to a user page): keep the words."""
    value = (meta.get(key) or {}).get("value", "")
    if not isinstance(value, str) or not value:
        return ""
    return " ".join(BeautifulSoup(value, "html.parser").get_text(" ", strip=True).split())[:200]
