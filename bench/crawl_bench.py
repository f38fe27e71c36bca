"""Benchmark: crawl.py's machinery against a plain sequential requests loop, side by side in one run.

A loopback tools/search_server.py (its own process, 50 ms added to every request, as a distant server would)
serves 300 generated photos in the Commons API shape. Each contestant fetches the same 300 photos:
- sequential: requests.get on each results page and each photo, one after the other, bytes written to disk
  (no checks at all: the naive crawler);
- crawl: locator.crawl.crawler.crawl, as crawl.py runs it: pooled session, parallel downloads, every photo fully
  decoded, hashed, fsynced, renamed and listed in the manifest. With the defaults it keeps Wikimedia's limits
  (the stand-in enforces them, as the live service does): API requests one at a time, at most 2 downloads at a
  time from the media host. That cap, not the machinery, sets the speed: it is the point (politeness);
- crawl, media 8: 8 downloads at a time (what a browser opens to one host), against a second stand-in whose
  media cap is lifted (--media-limit 0), to show what the politeness costs; the live service would answer it
  with 429s.

--hostile crawls instead 6 places x 16 photos, with the defaults, from a stand-in that answers about one
request in 16 with a recoverable 429 or 500 (`--flaky 16`) and makes every fourth result a trap (`--traps 4`:
missing, a page, no photo, cut off, slow). It prints each place's seconds and the host's gap between requests
after it: a host that slows down on 429s and never speeds up again drifts towards CRAWL_SLOWDOWN_MAX a request.

    python bench/crawl_bench.py [--images 300] [--latency 0.05]
    python bench/crawl_bench.py --hostile [--give-up 600]
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
from locator.crawl import crawler, engines  # noqa: E402
from locator.crawl.fetch import Fetcher, build_user_agent  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def make_photos(root: Path, n: int, folder: str = "bench_place", seed: int = 0) -> None:
    """n distinct photo-like JPEGs (smooth gradients with a little noise, 320x240, ~15-25 KB)."""
    folder = root / folder
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:240, 0:320]
    for i in range(n):
        a, b, c = rng.uniform(0.2, 1.0, 3)
        base = np.stack([xx * a / 320, yy * b / 240, (xx + yy) * c / 560], axis=-1) * 255
        img = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=85)
        (folder / f"{i:04d}.jpg").write_bytes(buf.getvalue())


def start_server(root: Path, latency: float, media_limit: int = 2, *hostile: str):
    proc = subprocess.Popen([sys.executable, str(REPO / "tools" / "search_server.py"), "--root", str(root),
                             "--port", "0", "--latency", str(latency), "--media-limit", str(media_limit), *hostile],
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


def hostile(latency: float, give_up: float, n_places: int = 6, per_place: int = 16) -> None:
    """The crawl.py defaults against a flaky stand-in with traps, place by place; stops after `give_up` seconds."""
    with tempfile.TemporaryDirectory(prefix="crawl-bench-") as tmp:
        tmp = Path(tmp)
        rows = [(f"{i:02x}", f"Hostile place {i}", f"hostile place {i}", 0.0, 0.0, "", "") for i in range(n_places)]
        for i in range(n_places):  # a few spare photos: a download that fails every retry costs no quota
            make_photos(tmp / "photos", per_place + 6, places.folder_name(f"hostile place {i}"), seed=i)
        places.write(tmp / "places.xlsx", rows)
        proc, api_url = start_server(tmp / "photos", latency, 2, "--flaky", "16", "--traps", "4")
        engine = engines.load("commons")
        print(f"\n{n_places} places x {per_place} photos, {latency * 1000:.0f} ms latency, one request in 16 a "
              "429 or 500, every fourth result a trap; crawl.py's defaults\n", flush=True)
        print(f"{'place':<6} {'saved':>5} {'failed':>6} {'seconds':>8} {'s/photo':>8} {'gap after':>9}", flush=True)
        t0, saved = time.perf_counter(), 0
        try:
            with Fetcher(limits=engines.limits(engine)) as fetcher:
                for place in places.load(tmp / "places.xlsx").places:
                    t = time.perf_counter()
                    [rep] = crawler.crawl([place], engine, api_url, tmp / "raw", per_place, fetcher,
                                          config.CRAWL_WORKERS, progress=False)
                    secs, saved = time.perf_counter() - t, saved + rep.saved
                    print(f"{place.index:<6} {rep.saved:>5} {sum(rep.failed.values()):>6} {secs:>8.1f} "
                          f"{secs / max(rep.saved, 1):>8.2f} {fetcher.host_state(api_url).gap:>8.2f}s", flush=True)
                    if time.perf_counter() - t0 > give_up:
                        print(f"given up after {give_up:g} s", flush=True)
                        break
        finally:
            proc.terminate()
            proc.wait()
        total = time.perf_counter() - t0
        print(f"\n{saved} of {n_places * per_place} photos in {total:.1f} s ({saved / total:.2f} photos/s)")


def main(argv=None) -> int:
    ap = ArgumentParser(description="crawl machinery vs a sequential requests loop on a loopback server")
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--latency", type=float, default=0.05, help="seconds added to every request")
    ap.add_argument("--hostile", action="store_true",
                    help="instead: 6 places x 16 photos from a stand-in with random 429/500s and traps")
    ap.add_argument("--give-up", type=float, default=600, metavar="SECONDS",
                    help="--hostile: start no further place after this many seconds (default %(default)s)")
    args = ap.parse_args(argv)
    if args.hostile:
        hostile(args.latency, args.give_up)
        return 0
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
                           ("crawl, media 8 (stand-in cap lifted)",
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
