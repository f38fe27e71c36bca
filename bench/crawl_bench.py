"""Benchmark: crawl.py's machinery against a plain sequential requests loop, side by side in one run.

A loopback tools/search_server.py (its own process, 50 ms added to every request, as a distant server would)
serves 300 generated photos in the Commons API shape. Each contestant fetches the same 300 photos:
- sequential: requests.get on each results page and each photo, one after the other, bytes written to disk
  (no checks at all: the naive crawler);
- crawl: locator.crawl.crawler.crawl, as crawl.py runs it: pooled session, parallel downloads, every photo fully
  decoded, hashed, fsynced, renamed and listed in the manifest. With the defaults it keeps Wikimedia's limits
  (the stand-in enforces them, as the live service does): API requests one at a time, at most 2 downloads at a
  time from the media host. That cap, not the machinery, sets the speed: it is the point (politeness);
- crawl, media 8: the old per-host 8, against a second stand-in whose media cap is lifted (--media-limit 0), to
  show what the politeness costs; the live service would answer it with 429s.

    python bench/crawl_bench.py [--images 300] [--latency 0.05]
"""
import io
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from locator.core import config, places  # noqa: E402
from locator.core.cli import ArgumentParser, run  # noqa: E402
from locator.crawl import crawler, engines
from locator.crawl.fetch import Fetcher, build_user_agent  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def make_photos(root: Path, n: int) -> None:
    """n distinct photo-like JPEGs (smooth gradients with a little noise, 320x240, ~15-25 KB)."""
    folder = root / "bench_place"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:240, 0:320]
    for i in range(n):
        a, b, c = rng.uniform(0.2, 1.0, 3)
        base = np.stack([xx * a / 320, yy * b / 240, (xx + yy) * c / 560], axis=-1) * 255
        img = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=85)
        (folder / f"{i:04d}.jpg").write_bytes(buf.getvalue())


def start_server(root: Path, latency: float, media_limit: int = 2):
    proc = subprocess.Popen([sys.executable, str(REPO / "tools" / "search_server.py"), "--root", str(root),
                             "--port", "0", "--latency", str(latency), "--media-limit", str(media_limit)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    return proc, proc.stdout.readline().strip()  # its first line is the API URL


def sequential(api_url: str, n: int, out: Path) -> int:
    """The plain loop: page through the results, then GET each photo and write it."""
    out.mkdir(parents=True)
    params = {"action": "query", "format": "json", "formatversion": "2", "generator": "search",
              "gsrsearch": "bench place", "gsrnamespace": "6", "gsrlimit": str(config.SEARCH_PAGE),
              "prop": "imageinfo", "iiprop": "url|size|mime|extmetadata", "iiurlwidth": str(config.THUMB_WIDTH)}
    saved, cont = 0, {}
    ua = {"User-Agent": build_user_agent(config.CONTACT)}  # the stand-in refuses a bare python-requests
    while saved < n:
        data = requests.get(api_url, params={**params, **cont}, headers=ua, timeout=20).json()
        for page in data["query"]["pages"]:
            r = requests.get(page["imageinfo"][0]["thumburl"], headers=ua, timeout=20)
            saved += 1
            (out / f"{saved:06d}.jpg").write_bytes(r.content)
        if "continue" not in data:
            break
        cont = data["continue"]
    return saved


def machinery(api_url: str, n: int, out: Path, workers: int, media: int | None) -> int:
    table = out.parent / f"places-{out.name}.xlsx"
    places.write(table, [("00", "Bench place", "bench place", 0.0, 0.0, "", ""),
                         ("01", "Unused", "unused", 0.0, 0.0, "", "")])
    engine = engines.load("commons")
    with Fetcher(workers=workers, limits=engines.limits(engine, media)) as fetcher:
        [rep] = crawler.crawl(places.load(table).places[:1], engine, api_url, out, n, fetcher, workers,
                              progress=False)
    assert not rep.failed, dict(rep.failed)  # a 429 from the stand-in would be a politeness bug
    return rep.saved


def main(argv=None) -> int:
    ap = ArgumentParser(description="crawl machinery vs a sequential requests loop on a loopback server")
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--latency", type=float, default=0.05, help="seconds added to every request")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="crawl-bench-") as tmp:
        tmp = Path(tmp)
        make_photos(tmp / "photos", args.images)
        proc, api_url = start_server(tmp / "photos", args.latency)
        free, free_url = start_server(tmp / "photos", args.latency, media_limit=0)
        try:
            rows = []
            contestants = [("sequential requests loop", lambda out: sequential(api_url, args.images, out)),
                           (f"crawl, defaults: API 1, media host {config.COMMONS_MEDIA_PER_HOST} (Wikimedia's)",
                            lambda out: machinery(api_url, args.images, out, config.CRAWL_WORKERS, None)),
                           ("crawl, media 8 (old default; stand-in cap lifted)",
                            lambda out: machinery(free_url, args.images, out, config.CRAWL_WORKERS, 8))]
            for n, (name, fn) in enumerate(contestants):
                t0 = time.perf_counter()
                saved = fn(tmp / f"out{n}")
                rows.append((name, saved, time.perf_counter() - t0))
        finally:
            for p in (proc, free):
                p.terminate()
                p.wait()
    base = rows[0][1] / rows[0][2]
    print(f"\n{args.images} images, {args.latency * 1000:.0f} ms latency per request, loopback server\n")
    print(f"{'contestant':<54} {'images':>6} {'seconds':>8} {'images/s':>9} {'ratio':>6}")
    for name, saved, secs in rows:
        print(f"{name:<54} {saved:>6} {secs:>8.2f} {saved / secs:>9.1f} {saved / secs / base:>5.1f}x")
    return 0


if __name__ == "__main__":
    run(main)
