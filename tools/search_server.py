"""A local stand-in for Wikimedia Commons and Bing image search, serving a folder of photos over real HTTP.

ROOT holds one subfolder per place, named like Place.folder (e.g. ../shared/datasets/indian_monuments/photos).
A search term finds the subfolder whose name is folder_name(term), so only a place's first term has results,
as the folder engine sees it. Answers are in the real shapes:

  /w/api.php?action=query&generator=search&gsrsearch=...   Commons MediaWiki API JSON (imageinfo, extmetadata,
                                                           thumburl, `continue` with gsroffset)
  /images/async?q=...&first=...&count=...                  Bing results HTML (a.iusc anchors with JSON `m`)
  /files/<folder>/<name>, /thumb/<folder>/<name>/<w>px-<name>   the photo bytes (thumbnails are not scaled)
  /wiki/File:<name>                                        a tiny description page

It enforces what the live services enforce, so that a test fails where Wikimedia would throttle or block us:
- a User-Agent of the policy's shape `<client>/<version> (<contact>) <library>/<version>`, the contact an email
  or a URL; anything else is answered 403, as Wikimedia does (python-requests' default, no contact, ...);
- at most `media_limit` (2, the robot policy's) concurrent requests for photo bytes: more are answered 429
  with Retry-After, as upload.wikimedia.org does;
- thumbnails at the standard widths only (THUMB_WIDTHS): the API rounds iiurlwidth up to the next one (and gives
  the original when that is not smaller), a hand-made /thumb/ URL of another width is refused (400);
- on request (`api_errors`, for tests), MediaWiki's busy answers: HTTP 200 with an error code `maxlag` or
  `ratelimited` and Retry-After, or a plain 429 with Retry-After.
A hostile server, on request (tests, `bench/crawl_bench.py --hostile`):
- `flaky=N`: about one request in N (a seeded draw) is answered with a recoverable 429 (Retry-After
  `flaky_retry_after`) or 500, half each, as a busy server does now and then whatever the client's rate;
- `traps=N`: every Nth search result is a trap, one of TRAPS in turn: a missing file, an HTML page, bytes that
  are no photo, a cut-off JPEG, an answer that takes `trap_delay` seconds and is then missing.
Bing's `first` is 1-based; past the end Bing repeats its last results, and so does this server.

Run it for a demo:   python tools/search_server.py --root DIR --port 8765 --latency 0.05
or in a test:        with SearchServer(root, latency=0.05) as server: server.api_url ...
`extra` puts more results (any URLs: broken, slow, file://) before a folder's own, for fault tests.
`peak` holds the most concurrent requests seen per kind ("media", "api"), `throttled` the 429s sent, `flaked` the
429s and 500s of `flaky`, `log` the (path, query, User-Agent) of every request.
"""
import html
import json
import mimetypes
import random
import re
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

if __package__ in (None, ""):  # run as a script: make the repo's package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from locator.core.places import folder_name  # noqa: E402

LICENCES = ("CC BY-SA 4.0", "CC BY 2.0", "Public domain", "CC BY-SA 3.0")
_KEYWORD = re.compile(r"\b\w+:\S+")  # CirrusSearch keywords such as filetype:bitmap are filters, not words
# mediawiki.org "Common thumbnail sizes": the only widths Wikimedia's CDN serves since 2025
THUMB_WIDTHS = (20, 40, 60, 120, 250, 330, 500, 960, 1280, 1920, 3840)
MEDIA_LIMIT = 2   # Wikimedia's robot policy: a total concurrency of at most 2 on upload.wikimedia.org
# `<client>/<version> (<contact>) <library>/<version>`, the contact an email address or a URL
_USER_AGENT = re.compile(r"^[^\s/()]+/[^\s()]+ \([^()]*(?:[^\s@();]+@[^\s@();]+\.\w+|https?://[^\s();]+)[^()]*\)"
                         r"(?: [^\s/()]+/[^\s()]+)+$")
TRAPS = ("missing", "page", "garbage", "truncated", "slow")
UA_REFUSED = ("Please set a user-agent and respect our robot policy https://w.wiki/4wJS "
              "(format: client/version (contact) library/version)")


class Library:
    """The photos under root, by folder, with their sizes read lazily from the headers (cached)."""

    def __init__(self, root):
        self.root = Path(root)
        self._files, self._sizes, self._lock = {}, {}, threading.Lock()

    def files(self, folder: str) -> list:
        with self._lock:
            if folder not in self._files:
                d = self.root / folder
                self._files[folder] = sorted(p.name for p in d.iterdir()
                                             if p.is_file() and not p.name.startswith(".")) \
                    if folder and "/" not in folder and d.is_dir() else []
            return self._files[folder]

    def path(self, folder: str, name: str):
        return self.root / folder / name if name in self.files(folder) else None

    def size(self, folder: str, name: str):
        key = (folder, name)
        if key not in self._sizes:
            from PIL import Image
            try:
                with Image.open(self.root / folder / name) as im:
                    self._sizes[key] = im.size
            except OSError:  # a broken file is still listed: the crawler must cope with it
                self._sizes[key] = (0, 0)
        return self._sizes[key]


class SearchServer(ThreadingHTTPServer):
    daemon_threads = True  # a slow handler never keeps a test process alive

    def __init__(self, root, host: str = "127.0.0.1", port: int = 0, latency: float = 0.0, extra=None,
                 verbose: bool = False, media_limit: int = MEDIA_LIMIT, flaky: int = 0, traps: int = 0,
                 seed: int = 0):
        super().__init__((host, port), _Handler)
        self.library = Library(root)
        self.latency = latency          # seconds added to every request (may be changed while running)
        self.extra = extra or {}        # folder -> [url, ...] listed before the folder's own photos
        self.verbose = verbose
        self.media_limit = media_limit  # concurrent photo requests above this get 429 (0: no limit)
        self.api_errors = []            # [(code, retry_after)] answered to the next API requests, in order:
                                        # code "maxlag" | "ratelimited" (HTTP 200 + error) or 429 (HTTP 429)
        self.flaky, self.flaky_retry_after = flaky, 1  # one request in `flaky` gets a 429 or 500 (0: none)
        self.traps, self.trap_delay = traps, 1.0        # every `traps`th result is a trap (0: none)
        self._draw = random.Random(seed)
        self.peak, self.throttled, self.flaked, self.log = {"media": 0, "api": 0}, 0, 0, []
        self._busy, self._count_lock = {"media": 0, "api": 0}, threading.Lock()
        self._thread = None

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def api_url(self) -> str:
        return self.base_url + "/w/api.php"

    @property
    def bing_url(self) -> str:
        return self.base_url + "/images/async"

    def start(self):
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self.shutdown()
        self.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # --- what a search returns ------------------------------------------------------------------------------
    def results(self, term: str) -> list:
        """[(url, folder, name)] for a search term: extras first, then the folder's photos."""
        folder = folder_name(_KEYWORD.sub(" ", term))
        out = [(url, folder, "") for url in self.extra.get(folder, ())]
        for name in self.library.files(folder):
            if self.traps and len(out) % self.traps == self.traps - 1:
                kind = TRAPS[len(out) // self.traps % len(TRAPS)]
                out.append((f"{self.base_url}/trap/{kind}/{quote(folder)}-{len(out)}.jpg", folder, ""))
            out.append((f"{self.base_url}/files/{quote(folder)}/{quote(name)}", folder, name))
        return out

    def flakes(self) -> int:
        """The status of a flaky answer to this request: 429, 500, or 0 (answer it properly)."""
        if not self.flaky:
            return 0
        with self._count_lock:
            if self._draw.randrange(self.flaky):
                return 0
            self.flaked += 1
            return 429 if self._draw.random() < 0.5 else 500


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a real server: connection pooling then matters
    # Headers and body go out in two writes; with Nagle on, the body waits for the client's delayed ACK
    # (~40 ms a response on Linux), an artefact no real server has. --latency is the only delay we want.
    disable_nagle_algorithm = True
    server: SearchServer

    def log_message(self, fmt, *args):
        if self.server.verbose:
            super().log_message(fmt, *args)

    def do_GET(self):
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        path = unquote(parts.path)
        srv = self.server
        srv.log.append((path, query, self.headers.get("User-Agent", "")))
        if not _USER_AGENT.match(self.headers.get("User-Agent", "")):
            return self._send(403, "text/plain; charset=utf-8", UA_REFUSED)
        kind = "media" if path.startswith(("/files/", "/thumb/")) else "api" if path == "/w/api.php" else None
        if kind:
            with srv._count_lock:
                srv._busy[kind] += 1
                srv.peak[kind] = max(srv.peak[kind], srv._busy[kind])
                over = kind == "media" and srv.media_limit and srv._busy[kind] > srv.media_limit
                if over:
                    srv.throttled += 1
        try:
            if kind == "media" and over:
                return self._send(429, "text/plain", "Too many concurrent requests (robot policy: at most "
                                  f"{srv.media_limit})", {"Retry-After": "1"})
            flake = srv.flakes()
            if flake == 429:
                return self._send(429, "text/plain", "Too many requests",
                                  {"Retry-After": str(srv.flaky_retry_after)})
            if flake:
                return self._send(500, "text/plain", "Internal error, try again")
            if srv.latency:
                time.sleep(srv.latency)
            self._route(path, query)
        finally:
            if kind:
                with srv._count_lock:
                    srv._busy[kind] -= 1

    def _route(self, path: str, query: dict):
        if path == "/w/api.php":
            self._commons(query)
        elif path in ("/images/async", "/images/search"):
            self._bing(query)
        elif path.startswith(("/files/", "/thumb/")):
            self._file(path)
        elif path.startswith("/trap/"):
            self._trap(path.split("/")[2])
        elif path.startswith("/wiki/File:"):
            name = html.escape(path[len("/wiki/File:"):])
            self._send(200, "text/html; charset=utf-8", f"<html><body><h1>File:{name}</h1></body></html>")
        else:
            self._send(404, "text/plain", "not found")

    def _send(self, status: int, ctype: str, body, headers=None):
        body = body.encode("utf-8") if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _file(self, path: str):
        bits = path.split("/")  # /files/<folder>/<name> or /thumb/<folder>/<name>/<w>px-<name>
        file = self.server.library.path(bits[2], bits[3]) if len(bits) >= 4 else None
        if file is None:
            return self._send(404, "text/plain", "no such file")
        if bits[1] == "thumb":
            width = re.match(r"^(\d+)px-", bits[4]) if len(bits) >= 5 else None
            if not width or int(width.group(1)) not in THUMB_WIDTHS:
                return self._send(400, "text/plain; charset=utf-8", "Use thumbnail steps listed on "
                                  "https://w.wiki/GHai. Please contact noc@wikimedia.org for further information")
        ctype = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        self._send(200, ctype, file.read_bytes())

    def _trap(self, kind: str):
        if kind == "page":
            return self._send(200, "text/html; charset=utf-8", "<html><body>a page, not a photo</body></html>")
        if kind == "garbage":
            return self._send(200, "image/jpeg", bytes(range(256)) * 8)
        if kind == "truncated":
            return self._send(200, "image/jpeg", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(500))
        if kind == "slow":
            time.sleep(self.server.trap_delay)
        self._send(404, "text/plain", "no such file")

    def _commons(self, q: dict):
        if self.server.api_errors:
            code, wait = self.server.api_errors.pop(0)
            if code == 429:
                self.server.throttled += 1
                return self._send(429, "text/plain", "Too many requests", {"Retry-After": str(wait)})
            info = {"maxlag": "Waiting for 10.64.0.1: 6 seconds lagged",
                    "ratelimited": "You've exceeded your rate limit. Please wait some time and try again."}[code]
            err = {"code": code, "info": info, "*": "See https://commons.wikimedia.org/w/api.php for API usage."}
            if code == "maxlag":
                err.update(host="10.64.0.1", lag=6)
            return self._send(200, "application/json; charset=utf-8", json.dumps({"error": err}),
                              {"Retry-After": str(wait), **({"X-Database-Lag": "6"} if code == "maxlag" else {})})
        if q.get("action") != "query" or q.get("generator") != "search" or "gsrsearch" not in q:
            return self._send(200, "application/json; charset=utf-8", json.dumps(
                {"error": {"code": "badparams", "info": "this mirror only answers generator=search queries"}}))
        limit = min(int(q["gsrlimit"]) if q.get("gsrlimit", "").isdigit() else 10, 500)
        offset = int(q["gsroffset"]) if q.get("gsroffset", "").isdigit() else 0
        width = int(q["iiurlwidth"]) if q.get("iiurlwidth", "").isdigit() else 0
        results = self.server.results(q["gsrsearch"])
        pages = [self._commons_page(offset + i, url, folder, name, width)
                 for i, (url, folder, name) in enumerate(results[offset:offset + limit])]
        answer = {"batchcomplete": True} if q.get("formatversion") == "2" else {"batchcomplete": ""}
        if offset + limit < len(results):
            answer["continue"] = {"gsroffset": offset + limit, "continue": "gsroffset||"}
        if pages:
            answer["query"] = {"pages": pages if q.get("formatversion") == "2"
                               else {str(p["pageid"]): p for p in pages}}
        self._send(200, "application/json; charset=utf-8", json.dumps(answer))

    def _commons_page(self, rank: int, url: str, folder: str, name: str, width: int) -> dict:
        base = self.server.base_url
        title = name or url.rsplit("/", 1)[-1] or "unnamed"
        w, h = self.server.library.size(folder, name) if name else (640, 480)
        info = {"url": url, "descriptionurl": f"{base}/wiki/File:{quote(title)}",
                "descriptionshorturl": f"{base}/w/index.php?curid={1000 + rank}",
                "size": (self.server.library.path(folder, name).stat().st_size if name else 0),
                "width": w, "height": h, "mime": mimetypes.guess_type(title)[0] or "image/jpeg",
                "extmetadata": {
                    "LicenseShortName": {"value": LICENCES[rank % len(LICENCES)], "source": "commons-desc-page",
                                         "hidden": ""},
                    "Artist": {"value": f'<a href="//commons.wikimedia.org/wiki/User:Photographer{rank % 7}" '
                                        f'title="User:Photographer{rank % 7}">Photographer {rank % 7}</a>',
                               "source": "commons-desc-page"}}}
        if width and name:  # Commons adds a thumbnail when iiurlwidth is given, at the next standard width up
            step = next((s for s in THUMB_WIDTHS if s >= width), THUMB_WIDTHS[-1])
            if w and step < w:  # thumbwidth says the asked width, not the step's (Phabricator T388792)
                info.update(thumburl=f"{base}/thumb/{quote(folder)}/{quote(name)}/{step}px-{quote(name)}",
                            thumbwidth=width, thumbheight=round(h * width / w))
            else:  # not smaller than the original: the original itself
                info.update(thumburl=url, thumbwidth=w, thumbheight=h)
        elif width:
            info.update(thumburl=url, thumbwidth=width, thumbheight=width * 3 // 4)
        return {"pageid": 1000 + rank, "ns": 6, "title": f"File:{title}", "index": rank + 1,
                "imagerepository": "local", "imageinfo": [info]}

    def _bing(self, q: dict):
        first = max(int(q["first"]) if q.get("first", "").isdigit() else 1, 1)  # 1-based, as Bing's own pages
        count = min(int(q["count"]) if q.get("count", "").isdigit() else 35, 150)
        results = self.server.results(q.get("q", ""))
        start = min(first - 1, max(len(results) - count, 0))  # past the end, Bing repeats its last results
        items = []
        for url, folder, name in results[start:start + count]:
            m = {"cid": f"{zlib.crc32(url.encode()):08x}", "purl": f"{self.server.base_url}/wiki/File:{quote(name)}",
                 "murl": url, "turl": url, "t": name}
            items.append(f'<li><div class="iuscp"><div class="imgpt"><a class="iusc" '
                         f'm="{html.escape(json.dumps(m), quote=True)}" href="/images/search?view=detailV2">'
                         f'<img class="mimg" src="{html.escape(url)}" alt=""></a></div></div></li>')
        self._send(200, "text/html; charset=utf-8",
                   '<!DOCTYPE html><html><head><meta charset="utf-8"></head><body>'
                   f'<ul class="dgControl_list">{"".join(items)}</ul></body></html>')


def main(argv=None) -> int:
    from locator.core.cli import ArgumentParser, setup_logging
    from locator.core.errors import UserError

    ap = ArgumentParser(description="Serve a folder of photos as the Commons API and Bing HTML.")
    ap.add_argument("--root", type=Path, required=True, help="one subfolder per place")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8765, help="0 picks a free port (printed on stdout)")
    ap.add_argument("--latency", type=float, default=0.0, help="seconds added to every request")
    ap.add_argument("--media-limit", type=int, default=MEDIA_LIMIT,
                    help="concurrent photo requests above this are answered 429 (default %(default)s, Wikimedia's "
                         "robot policy; 0: no limit)")
    ap.add_argument("--flaky", type=int, default=0, metavar="N",
                    help="answer about one request in N with a recoverable 429 or 500 (default 0: none)")
    ap.add_argument("--traps", type=int, default=0, metavar="N",
                    help="make every Nth search result a trap (missing, a page, no photo, cut off, slow; 0: none)")
    ap.add_argument("-v", "--verbose", action="store_true", help="log every request")
    args = ap.parse_args(argv)
    setup_logging(args.verbose)
    if not args.root.is_dir():
        raise UserError(f"--root {args.root} is not a folder")
    server = SearchServer(args.root, args.host, args.port, args.latency, verbose=args.verbose,
                          media_limit=args.media_limit, flaky=args.flaky, traps=args.traps)
    # The first stdout line is the API URL, so that a script that started us with --port 0 can read it.
    print(server.api_url, flush=True)
    print(f"serving {args.root} (Commons API {server.api_url}, Bing {server.bing_url}); Ctrl-C stops",
          file=sys.stderr, flush=True)
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    from locator.core.cli import run
    run(main)
