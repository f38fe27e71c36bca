"""A local photo collection: one subfolder per place, named by the place's first search term
(lower case, spaces as underscores: Place.folder), e.g. ../shared/datasets/indian_monuments/photos. A background
query (Background.folder) maps to a subfolder by the same rule, so one --source may hold both kinds of folder
(symlinks to several collections are fine).

Only a term that names an existing subfolder has results, which in practice is the first term. The manifest's
`url` is the file's file:// URI, so that a re-run skips files it has already imported.
"""
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

from locator.core.places import folder_name
from locator.crawl.engines import Candidate
from locator.crawl.fetch import FetchError, image_ext

NAME = "folder"
DEFAULT_ENDPOINT = None  # the collection is given with --source DIR


def search(place, term, endpoint, fetcher):
    sub = Path(endpoint) / folder_name(term)
    if not sub.is_dir():
        return
    for path in sorted(sub.iterdir()):
        if path.is_file() and not path.name.startswith("."):
            yield Candidate(url=path.resolve().as_uri())


def fetch(candidate, fetcher):
    path = Path(url2pathname(urlsplit(candidate.url).path))
    try:
        if path.stat().st_size > fetcher.max_bytes:  # the same cap as a download
            raise FetchError("over_byte_cap", f"{path.stat().st_size} > {fetcher.max_bytes} bytes")
        data = path.read_bytes()
    except OSError as e:
        raise FetchError("unreadable", str(e)[:100])
    return data, image_ext(data)
