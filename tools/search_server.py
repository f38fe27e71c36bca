"""A local stand-in for Wikimedia Commons and Bing image search, serving a folder of photos over real HTTP.

ROOT holds one subfolder per place, named like Place.folder (e.g. ../shared/datasets/indian_monuments/photos).
A search term finds the subfolder whose name is folder_name(term), so only a place's first term has results,
as the folder engine sees it. Answers are in the real shapes:

  /w/api.php?action=query&generator=search&gsrsearch=...   Commons MediaWiki API JSON (imageinfo, extmetadata,
                                                           thumburl, `continue` with gsroffset)
  /images/async?q=...&first=...&count=...                  Bing results HTML (a.iusc anchors with JSON `m`)
  /files/<folder>/<name>, /thumb/<folder>/<name>/<w>px-<name>   the photo bytes (thumbnails are not scaled)
  /wiki/File:<name>                                        a tiny description page

Run it for a demo:   python tools/search_server.py --root DIR --port 8765 --latency 0.05
or in a test:        with SearchServer(root, latency=0.05) as server: server.api_url ...
`extra` puts more results (any URLs: broken, slow, file://) before a folder's own, for fault tests.
"""
import html
import json
import mimetypes
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
                 verbose: bool = False):
        super().__init__((host, port), _Handler)
        self.library = Library(root)
        self.latency = latency          # seconds added to every request (may be changed while running)
        self.extra = extra or {}        # folder -> [url, ...] listed before the folder's own photos
        self.verbose = verbose
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
        out += [(f"{self.base_url}/files/{quote(folder)}/{quote(name)}", folder, name)
                for name in self.library.files(folder)]
        return out


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
        if self.server.latency:
            time.sleep(self.server.latency)
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        path = unquote(parts.path)
        if path == "/w/api.php":
            self._commons(query)
        elif path in ("/images/async", "/images/search"):
            self._bing(query)
        elif path.startswith(("/files/", "/thumb/")):
            self._file(path)
        elif path.startswith("/wiki/File:"):
            name = html.escape(path[len("/wiki/File:"):])
            self._send(200, "text/html; charset=utf-8", f"<html><body><h1>File:{name}</h1></body></html>")
        else:
            self._send(404, "text/plain", "not found")

    def _send(self, status: int, ctype: str, body):
        body = body.encode("utf-8") if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _file(self, path: str):
        bits = path.split("/")  # /files/<folder>/<name> or /thumb/<folder>/<name>/<w>px-<name>
        file = self.server.library.path(bits[2], bits[3]) if len(bits) >= 4 else None
        if file is None:
            return self._send(404, "text/plain", "no such file")
        ctype = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        self._send(200, ctype, file.read_bytes())

    def _commons(self, q: dict):
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
        if width and name:  # Commons adds a thumbnail when iiurlwidth is given
            tw = min(width, w) or width
            info.update(thumburl=f"{base}/thumb/{quote(folder)}/{quote(name)}/{tw}px-{quote(name)}",
                        thumbwidth=tw, thumbheight=round(h * tw / w) if w else 0)
        elif width:
            info.update(thumburl=url, thumbwidth=width, thumbheight=width * 3 // 4)
        return {"pageid": 1000 + rank, "ns": 6, "title": f"File:{title}", "index": rank + 1,
                "imagerepository": "local", "imageinfo": [info]}

    def _bing(self, q: dict):
        first = int(q["first"]) if q.get("first", "").isdigit() else 0
        count = min(int(q["count"]) if q.get("count", "").isdigit() else 35, 150)
        items = []
        for url, folder, name in self.server.results(q.get("q", ""))[first:first + count]:
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
    ap.add_argument("-v", "--verbose", action="store_true", help="log every request")
    args = ap.parse_args(argv)
    setup_logging(args.verbose)
    if not args.root.is_dir():
        raise UserError(f"--root {args.root} is not a folder")
    server = SearchServer(args.root, args.host, args.port, args.latency, verbose=args.verbose)
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
