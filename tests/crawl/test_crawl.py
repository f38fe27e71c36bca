"""crawl.py against real HTTP servers on 127.0.0.1: tools/search_server.py (Commons API / Bing HTML shapes) for
the search, pytest-httpserver for misbehaving image hosts. Images are generated; nothing is mocked."""
import io
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest
from genphotos import encode, photo
from PIL import Image
from pytest_httpserver import HTTPServer
from werkzeug import Response

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import crawl  # noqa: E402
from locator.core import places
from locator.core.cli import run  # noqa: E402
from locator.core.fsio import TMP_PREFIX, read_jsonl  # noqa: E402
from locator.crawl import crawler, engines  # noqa: E402
from locator.crawl.fetch import Fetcher, HostStopped, build_user_agent, retry_after  # noqa: E402
from locator.crawl.rawstore import sha256  # noqa: E402
from tools.search_server import SearchServer  # noqa: E402

FAST = dict(read_timeout=0.5, connect_timeout=1.0, retries=2, backoff=0.01, max_retry_after=2.0)


# --- helpers -------------------------------------------------------------------------------------------------
def jpeg(seed: int, size=(96, 72), quality=92) -> bytes:
    """A distinct little photo (the shared test generator: a different colour field per seed)."""
    return encode(photo(seed, *size), quality=quality)


def photo_tree(root: Path, folders: dict, seed0: int = 0) -> Path:
    """root/<folder>/NNN.jpg with `n` generated photos per folder."""
    seed = seed0
    for folder, n in folders.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (root / folder / f"{i:03d}.jpg").write_bytes(jpeg(seed))
            seed += 1
    return root


def table(tmp_path, *queries) -> Path:
    """A place table whose places search the given ';'-joined terms."""
    rows = [(f"{i:02x}", q.split(";")[0].title(), q, 37.5 + i / 100, 127.0, "", "") for i, q in enumerate(queries)]
    path = tmp_path / "places.xlsx"
    places.write(path, rows)
    return path


def small_pages(engine, page_size):
    """The same engine asking for `page_size` results a request, so a few photos already need continuation."""
    return SimpleNamespace(NAME=engine.NAME, DEFAULT_ENDPOINT=engine.DEFAULT_ENDPOINT,
                           search=partial(engine.search, page_size=page_size))


def run_crawl(places_xlsx, endpoint, out, per_place, engine="commons", workers=4, **fetch):
    engine = engines.load(engine) if isinstance(engine, str) else engine
    with Fetcher(workers=workers, per_host=workers, **{**FAST, **fetch}) as fetcher:
        return crawler.crawl(places.load(places_xlsx).places, engine, endpoint, out, per_place, fetcher,
                             workers, progress=False)


def check_folder(folder: Path) -> list:
    """The folder's invariants after any run: files == manifest lines, one line each, no temp file, no dup."""
    records = read_jsonl(folder / "manifest.jsonl")
    files = sorted(p.name for p in folder.iterdir() if p.name[:6].isdigit())
    assert sorted(r["file"] for r in records) == files, "a file without its line or a line without its file"
    assert len({r["sha256"] for r in records}) == len(records), "the same photo twice"
    assert len({r["url"] for r in records}) == len(records), "the same URL twice"
    assert not [p for p in folder.iterdir() if p.name.startswith(TMP_PREFIX)], "a partial download was kept"
    for r in records:
        assert sha256((folder / r["file"]).read_bytes()) == r["sha256"]
    return records


def crawl_cli(*args) -> int:
    """crawl.py's main in this process, through cli.run, returning the exit code."""
    with pytest.raises(SystemExit) as e:
        run(lambda: crawl.main([str(a) for a in args] + ["--no-progress"]))
    return e.value.code


# --- fixtures --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def _web_server():
    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    server.start()
    yield server
    server.stop()  # once per module: a werkzeug server takes half a second to stop


@pytest.fixture
def web(_web_server):
    """A threaded pytest-httpserver for image hosts that misbehave (handlers cleared after each test)."""
    yield _web_server
    _web_server.clear()


@pytest.fixture
def search(tmp_path):
    """Factory: a SearchServer over a generated photo tree, stopped at the end of the test."""
    started = []

    def make(folders, latency=0.0, extra=None, seed0=0):
        server = SearchServer(photo_tree(tmp_path / "photos", folders, seed0), latency=latency, extra=extra)
        started.append(server.start())
        return server

    yield make
    for server in started:
        server.stop()


# --- the search server speaks the real shapes ------------------------------------------------------------------
def test_search_server_commons_shape(search):
    server = search({"alpha": 3})
    with Fetcher(**FAST) as f:
        data = f.get_json(server.api_url, {"action": "query", "generator": "search", "gsrnamespace": "6",
                                           "gsrsearch": "filetype:bitmap Alpha", "gsrlimit": "2", "prop": "imageinfo",
                                           "iiprop": "url|size|mime|extmetadata", "iiurlwidth": "640"})
        assert data["continue"] == {"gsroffset": 2, "continue": "gsroffset||"}
        pages = sorted(data["query"]["pages"].values(), key=lambda p: p["index"])  # formatversion 1: a dict
        info = pages[0]["imageinfo"][0]
        assert pages[0]["ns"] == 6 and pages[0]["title"].startswith("File:")
        assert {"url", "thumburl", "descriptionurl", "width", "height", "mime", "size"} <= set(info)
        assert info["extmetadata"]["LicenseShortName"]["value"] and "<a " in info["extmetadata"]["Artist"]["value"]
        body, ext = f.get_image(info["thumburl"])
        assert ext == "jpg" and Image.open(io.BytesIO(body)).size == (96, 72)
        empty = f.get_json(server.api_url, {"action": "query", "generator": "search", "gsrsearch": "alpha extra"})
        assert "query" not in empty and "continue" not in empty  # only the first term names a folder


# --- normal crawls ---------------------------------------------------------------------------------------------
def test_commons_crawl_follows_continuation(tmp_path, search):
    server = search({"alpha": 12, "beta": 7})
    engine = small_pages(engines.load("commons"), 5)  # 12 photos = 3 result pages
    reports = run_crawl(table(tmp_path, "alpha", "beta"), server.api_url, tmp_path / "raw", 10, engine)
    assert [(r.found, r.saved, r.duplicates, dict(r.failed)) for r in reports] == [(10, 10, 0, {}), (7, 7, 0, {})]
    records = check_folder(tmp_path / "raw" / "00")
    assert [r["file"] for r in sorted(records, key=lambda r: r["file"])] == [f"{i:06d}.jpg" for i in range(1, 11)]
    r = records[0]
    assert r["source"] == "commons" and r["licence"] and r["author"].startswith("Photographer")
    assert "<" not in r["author"] and r["page"].startswith(server.base_url + "/wiki/File:")
    assert (r["width"], r["height"]) == (96, 72) and r["bytes"] > 0
    assert len(check_folder(tmp_path / "raw" / "01")) == 7  # the source ran out: fewer than asked, no error


def test_terms_are_used_in_order_until_full(tmp_path, search):
    server = search({"alpha": 3, "alpha_old_name": 4, "alfa": 5})
    run_crawl(table(tmp_path, "alpha;alpha old name;alfa", "beta"), server.api_url, tmp_path / "raw", 6)
    urls = [r["url"] for r in read_jsonl(tmp_path / "raw" / "00" / "manifest.jsonl")]
    assert sum("/alpha/" in u for u in urls) == 3 and sum("/alpha_old_name/" in u for u in urls) == 3
    assert not any("/alfa/" in u for u in urls)  # full before the third term was needed


def test_rerun_tops_up_continues_numbering_and_skips_known(tmp_path, search):
    server = search({"alpha": 8, "beta": 8})
    places_xlsx, out = table(tmp_path, "alpha", "beta"), tmp_path / "raw"
    assert crawl_cli("--places", places_xlsx, "--api-url", server.api_url, "--out", out, "--per-place", 3) == 0
    assert crawl_cli("--places", places_xlsx, "--api-url", server.api_url, "--out", out, "--per-place", 6) == 0
    records = check_folder(out / "00")
    assert sorted(r["file"] for r in records) == [f"{i:06d}.jpg" for i in range(1, 7)]
    reports = run_crawl(places_xlsx, server.api_url, out, 8)
    assert [(r.had, r.saved, r.duplicates) for r in reports] == [(6, 2, 6), (6, 2, 6)]  # known URLs skipped


def test_rerun_with_all_folders_full_does_nothing(tmp_path, search, caplog):
    caplog.set_level(logging.INFO)
    server = search({"alpha": 3, "beta": 3})
    args = ("--places", table(tmp_path, "alpha", "beta"), "--out", tmp_path / "raw", "--per-place", 3)
    assert crawl_cli(*args, "--api-url", server.api_url) == 0
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "raw").rglob("*")}
    # nobody listens on port 9: had the crawl asked the source anything, it would have failed
    assert crawl_cli(*args, "--api-url", "http://127.0.0.1:9/w/api.php") == 0
    assert "nothing to do" in caplog.text
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "raw").rglob("*")} == before


def test_only_limits_the_places(tmp_path, search):
    server = search({"alpha": 3, "beta": 3})
    assert crawl_cli("--places", table(tmp_path, "alpha", "beta"), "--api-url", server.api_url,
                     "--out", tmp_path / "raw", "--per-place", 2, "--only", "01") == 0
    assert not (tmp_path / "raw" / "00").exists() and len(check_folder(tmp_path / "raw" / "01")) == 2


def test_same_image_under_two_urls_is_saved_once(tmp_path, search):
    server = search({"alpha": 4})
    copy = (tmp_path / "photos" / "alpha" / "000.jpg").read_bytes()
    (tmp_path / "photos" / "alpha" / "000-copy.jpg").write_bytes(copy)  # listed: the server lists lazily
    [rep] = run_crawl(table(tmp_path, "alpha", "zeta"), server.api_url, tmp_path / "raw", 10)[:1]
    assert (rep.found, rep.saved, rep.duplicates) == (5, 4, 1)
    assert len(check_folder(tmp_path / "raw" / "00")) == 4


def test_bing_engine(tmp_path, search):
    server = search({"alpha": 40, "beta": 2})
    reports = run_crawl(table(tmp_path, "alpha", "beta"), server.bing_url, tmp_path / "raw", 38, "bing")
    assert [r.saved for r in reports] == [38, 2]  # 38 needs a second results page of 35
    r = check_folder(tmp_path / "raw" / "00")[0]
    assert r["source"] == "bing" and r["page"].startswith(server.base_url + "/wiki/File:") and r["licence"] == ""


def test_folder_engine(tmp_path):
    photo_tree(tmp_path / "collection", {"alpha": 4, "beta": 2})
    (tmp_path / "collection" / "alpha" / "notes.txt").write_text("not a photo")
    args = ("--places", table(tmp_path, "alpha;alpha second", "beta"), "--engine", "folder",
            "--source", tmp_path / "collection", "--out", tmp_path / "raw", "--per-place", 10)
    assert crawl_cli(*args) == 0
    records = check_folder(tmp_path / "raw" / "00")
    assert len(records) == 4 and records[0]["source"] == "folder" and records[0]["url"].startswith("file://")
    assert len(check_folder(tmp_path / "raw" / "01")) == 2
    assert crawl_cli(*args) == 0  # every file already imported: nothing new, which is no failure
    assert len(check_folder(tmp_path / "raw" / "00")) == 4


# --- bad results never cost quota ------------------------------------------------------------------------------
def _html(web):
    web.expect_request("/html.jpg").respond_with_data("<html><body>not found</body></html>",
                                                      content_type="image/jpeg")
    return web.url_for("/html.jpg")


def _truncated(web):
    data = jpeg(999, size=(200, 150))
    web.expect_request("/truncated.jpg").respond_with_data(data[: len(data) // 2], content_type="image/jpeg")
    return web.url_for("/truncated.jpg")


def _loop(web):
    web.expect_request("/loop.jpg").respond_with_data("", status=302, headers={"Location": "/loop.jpg"})
    return web.url_for("/loop.jpg")


def _redirect_to_file(web):
    web.expect_request("/moved.jpg").respond_with_data("", status=301, headers={"Location": "file:///etc/hostname"})
    return web.url_for("/moved.jpg")


def _big(web):
    web.expect_request("/big.jpg").respond_with_data(jpeg(998, size=(500, 400), quality=98),
                                                     content_type="image/jpeg")
    return web.url_for("/big.jpg")


def _big_no_length(web):
    data = jpeg(997, size=(500, 400), quality=98)

    def stream(request):  # chunked, no Content-Length: only the streaming cap can stop it
        return Response((data[i:i + 8192] for i in range(0, len(data), 8192)), content_type="image/jpeg")
    web.expect_request("/stream.jpg").respond_with_handler(stream)
    return web.url_for("/stream.jpg")


def _slow(web):
    def slow(request):
        time.sleep(1.5)
        return Response(jpeg(996), content_type="image/jpeg")
    web.expect_request("/slow.jpg").respond_with_handler(slow)
    return web.url_for("/slow.jpg")


def _not_found(web):
    web.expect_request("/gone.jpg").respond_with_data("gone", status=404)
    return web.url_for("/gone.jpg")


def _server_error(web):
    web.expect_request("/broken.jpg").respond_with_data("oops", status=503)
    return web.url_for("/broken.jpg")


def _tiny(web):
    web.expect_request("/tiny.jpg").respond_with_data(jpeg(995, size=(16, 16)), content_type="image/jpeg")
    return web.url_for("/tiny.jpg")


def _text_type(web):
    web.expect_request("/page").respond_with_data("<html></html>", content_type="text/html")
    return web.url_for("/page")


BAD = {  # a bad result -> the reason it is counted under
    "404": (_not_found, "http_404"),
    "503_every_time": (_server_error, "http_503"),
    "slower_than_timeout": (_slow, "timeout"),
    "over_byte_cap": (_big, "over_byte_cap"),
    "over_byte_cap_streamed": (_big_no_length, "over_byte_cap"),
    "html_as_image_jpeg": (_html, "not_image"),
    "text_html_type": (_text_type, "bad_type"),
    "truncated_jpeg": (_truncated, "truncated"),
    "too_small": (_tiny, "too_small"),
    "redirect_loop": (_loop, "redirects"),
    "file_url": (lambda web: "file:///etc/hostname", "bad_url"),
    "redirect_to_file_url": (_redirect_to_file, "bad_url"),
    "ftp_url": (lambda web: "ftp://127.0.0.1/photo.jpg", "bad_url"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_result_is_counted_and_costs_no_quota(tmp_path, search, web, case):
    make, reason = BAD[case]
    server = search({"alpha": 3}, extra={"alpha": [make(web)]})
    [rep] = run_crawl(table(tmp_path, "alpha", "beta"), server.api_url, tmp_path / "raw", 3, max_bytes=20_000)[:1]
    assert (rep.found, rep.saved, dict(rep.failed)) == (4, 3, {reason: 1})
    assert len(check_folder(tmp_path / "raw" / "00")) == 3


def test_quota_filled_despite_every_kind_of_failure(tmp_path, search, web):
    bad = [make(web) for make, _ in BAD.values()]
    server = search({"alpha": 5, "beta": 2}, extra={"alpha": bad})
    t0 = time.monotonic()
    reports = run_crawl(table(tmp_path, "alpha", "beta"), server.api_url, tmp_path / "raw", 5, max_bytes=20_000)
    assert reports[0].saved == 5 and sum(reports[0].failed.values()) == len(bad)
    assert sorted(reports[0].failed.elements()) == sorted(reason for _, reason in BAD.values())
    assert len(check_folder(tmp_path / "raw" / "00")) == 5
    assert time.monotonic() - t0 < 10


def test_500_then_success_is_retried(tmp_path, search, web):
    web.expect_oneshot_request("/flaky.jpg").respond_with_data("busy", status=500)
    web.expect_request("/flaky.jpg").respond_with_data(jpeg(500), content_type="image/jpeg")
    server = search({"alpha": 2}, extra={"alpha": [web.url_for("/flaky.jpg")]})
    [rep] = run_crawl(table(tmp_path, "alpha", "beta"), server.api_url, tmp_path / "raw", 3)[:1]
    assert (rep.saved, dict(rep.failed)) == (3, {})
    assert web.url_for("/flaky.jpg") in {r["url"] for r in check_folder(tmp_path / "raw" / "00")}


def test_429_retry_after_is_honoured(tmp_path, search, web):
    web.expect_oneshot_request("/busy.jpg").respond_with_data("slow down", status=429, headers={"Retry-After": "1"})
    web.expect_request("/busy.jpg").respond_with_data(jpeg(429), content_type="image/jpeg")
    t0 = time.monotonic()
    with Fetcher(**FAST) as f:
        body, ext = f.get_image(web.url_for("/busy.jpg"))
    assert ext == "jpg" and 0.95 <= time.monotonic() - t0 < 3


def test_a_retry_after_over_the_cap_stops_the_host_and_is_never_shortened(web):
    web.expect_request("/never.jpg").respond_with_data("later", status=429, headers={"Retry-After": "3600"})
    t0 = time.monotonic()
    with Fetcher(**{**FAST, "max_retry_after": 0.1}) as f:
        with pytest.raises(HostStopped) as e:
            f.get_image(web.url_for("/never.jpg"))
        assert e.value.reason == "retry_after" and "asks us to wait 3600 s (Retry-After)" in e.value.detail
        with pytest.raises(HostStopped):  # not asked again in this run: no second request
            f.get_image(web.url_for("/never.jpg"))
    assert time.monotonic() - t0 < 2 and len(web.log) == 1


def test_retry_after_header_forms():
    assert retry_after("7") == 7.0 and retry_after(None) is None and retry_after("soon") is None
    assert 50 < retry_after(time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 60))) <= 61


def test_connection_refused_is_retried_then_counted(tmp_path, search):
    dead = HTTPServer(host="127.0.0.1", port=0)
    dead.start()
    url = dead.url_for("/photo.jpg")
    dead.stop()  # nobody listens on that port any more
    server = search({"alpha": 2}, extra={"alpha": [url]})
    [rep] = run_crawl(table(tmp_path, "alpha", "beta"), server.api_url, tmp_path / "raw", 2)[:1]
    assert (rep.saved, dict(rep.failed)) == (2, {"unreachable": 1})  # a download host down is no search failure


def test_user_agent_names_the_project(web):
    ua = build_user_agent(crawl.config.CONTACT)
    web.expect_request("/ua.jpg", headers={"User-Agent": ua}).respond_with_data(jpeg(1), content_type="image/jpeg")
    with Fetcher(**FAST) as f:
        f.get_image(web.url_for("/ua.jpg"))
    assert ua.startswith("LandmarkLocator/") and f"({crawl.config.CONTACT}) python-requests/" in ua


def test_concurrency_is_bounded_per_host_and_globally():
    peak, now, lock = [0], [0], threading.Lock()

    def handler(request):
        with lock:
            now[0] += 1
            peak[0] = max(peak[0], now[0])
        time.sleep(0.1)
        with lock:
            now[0] -= 1
        return Response(jpeg(7), content_type="image/jpeg")

    for workers, per_host, expect in ((8, 2, 2), (3, 8, 3)):
        server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
        server.expect_request("/p.jpg").respond_with_handler(handler)
        server.start()
        peak[0] = 0
        with Fetcher(workers=workers, per_host=per_host, **FAST) as f:
            threads = [threading.Thread(target=f.get_image, args=(server.url_for("/p.jpg"),)) for _ in range(8)]
            [t.start() for t in threads]
            [t.join() for t in threads]
        server.stop()
        assert peak[0] == expect, (workers, per_host, peak[0])


# --- search failures and exit codes ----------------------------------------------------------------------------
def test_search_failure_moves_on_to_next_term(tmp_path, web):
    def api(request):  # the first term's search is down; the second term's works
        if request.args["gsrsearch"] == "filetype:bitmap alpha":
            return Response("down", status=500)
        return Response(json.dumps({"batchcomplete": True, "query": {"pages": [
            {"index": 1, "title": "File:a.jpg", "imageinfo": [{"url": web.url_for("/a.jpg"), "mime": "image/jpeg"}]}
        ]}}), content_type="application/json")
    web.expect_request("/w/api.php").respond_with_handler(api)
    web.expect_request("/a.jpg").respond_with_data(jpeg(11), content_type="image/jpeg")
    [rep] = run_crawl(table(tmp_path, "alpha;alpha two", "beta"), web.url_for("/w/api.php"), tmp_path / "raw", 1)[:1]
    assert rep.saved == 1 and dict(rep.failed) == {"search_http_500": 1}


def test_nothing_collected_exits_1(tmp_path, search, caplog):
    server = search({"unrelated": 2})
    assert crawl_cli("--places", table(tmp_path, "alpha", "beta"), "--api-url", server.api_url,
                     "--out", tmp_path / "raw", "--per-place", 2) == 1
    assert "nothing could be collected" in caplog.text


def test_exhausted_source_is_exit_0_but_a_failing_search_exit_1(tmp_path, search, caplog):
    caplog.set_level(logging.INFO)
    server = search({"alpha": 2, "beta": 2})
    args = ("--places", table(tmp_path, "alpha", "beta"), "--out", tmp_path / "raw", "--per-place", 5)
    assert crawl_cli(*args, "--api-url", server.api_url) == 0
    assert crawl_cli(*args, "--api-url", server.api_url) == 0  # found only photos we have: not a failure
    assert "the source has nothing new" in caplog.text
    assert crawl_cli(*args, "--api-url", server.base_url + "/moved/api.php") == 1  # the search answers 404
    assert "nothing could be collected" in caplog.text


@pytest.mark.parametrize("args, message", [
    (["--only", "07"], "--only: no place with index 07"),
    (["--per-place", "0"], "--per-place must be at least 1"),
    (["--api-url", "ftp://example.org/api"], "is not an http(s) URL"),
    (["--engine", "folder"], "--engine folder needs --source DIR"),
    (["--engine", "folder", "--source", "/nonexistent/photos"], "is not a folder"),
    (["--source", "."], "--source is for --engine folder"),
])
def test_bad_flags_are_one_line_exit_2(tmp_path, capsys, args, message):
    assert crawl_cli("--places", table(tmp_path, "alpha", "beta"), "--out", tmp_path / "raw", *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_unknown_engine_is_exit_2(tmp_path):
    p = subprocess.run([sys.executable, "crawl.py", "--engine", "google", "--places", str(table(tmp_path, "a", "b"))],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "'google'" in lines[0]


# --- interrupted runs ------------------------------------------------------------------------------------------
def test_leftovers_of_a_killed_run_are_tidied(tmp_path, search):
    server = search({"alpha": 6, "beta": 2})
    places_xlsx, out = table(tmp_path, "alpha", "beta"), tmp_path / "raw"
    run_crawl(places_xlsx, server.api_url, out, 2)
    folder = out / "00"
    # What kill -9 can leave: a partial download of a dead process, a renamed file whose line was never
    # written, and a manifest line torn in the middle.
    (folder / f"{TMP_PREFIX}999999999-partial.jpg").write_bytes(b"\xff\xd8\xff half a photo")
    (folder / "000003.jpg").write_bytes(jpeg(4))
    with open(folder / "manifest.jsonl", "a") as f:
        f.write('{"file": "000004.jpg", "sha2')
    assert crawl_cli("--places", places_xlsx, "--api-url", server.api_url, "--out", out, "--per-place", 5) == 0
    records = check_folder(folder)
    assert len(records) == 5
    rejected = (tmp_path / "rejected.csv").read_text()
    assert "raw/00/000003.jpg,orphan," in rejected and (tmp_path / "rejected" / "orphan" / "00_000003.jpg").exists()
    assert all(line.endswith("}") for line in (folder / "manifest.jsonl").read_text().splitlines())


def test_kill_9_mid_run_then_resume(tmp_path, search):
    server = search({"alpha": 14, "beta": 14}, latency=0.15)
    places_xlsx, out = table(tmp_path, "alpha", "beta"), tmp_path / "raw"
    cmd = [sys.executable, "crawl.py", "--places", str(places_xlsx), "--api-url", server.api_url, "--out", str(out),
           "--per-place", "12", "--workers", "3", "--per-host", "3", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(list((out / "00").glob("0*.jpg"))) < 4:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    saved_before = len(list((out / "00").glob("0*.jpg")))
    assert 4 <= saved_before < 12, "the crawl was not killed mid-run"
    server.latency = 0
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    for index in ("00", "01"):
        assert len(check_folder(out / index)) == 12
    listed = {r["url"] for r in read_jsonl(out / "00" / "manifest.jsonl")}
    assert len(listed) == 12


def test_a_second_crawl_on_the_same_folders_is_refused(tmp_path):
    from filelock import FileLock
    out = tmp_path / "raw"
    out.mkdir()
    with FileLock(str(out / ".crawl.lock")):
        code = subprocess.run([sys.executable, "crawl.py", "--places", str(table(tmp_path, "a", "b")),
                               "--out", str(out), "--api-url", "http://127.0.0.1:9/w/api.php"],
                              cwd=REPO, capture_output=True, text=True, timeout=60)
    assert code.returncode == 2 and "another crawl is writing to" in code.stderr


def test_manifest_is_json_lines_with_the_contract_keys(tmp_path, search):
    server = search({"alpha": 2, "beta": 1})
    run_crawl(table(tmp_path, "alpha", "beta"), server.api_url, tmp_path / "raw", 2)
    for line in (tmp_path / "raw" / "00" / "manifest.jsonl").read_text().splitlines():
        record = json.loads(line)
        assert set(record) == {"file", "sha256", "bytes", "width", "height", "source", "url", "page", "licence",
                               "author", "added"}


# --- the raw store under concurrency ---------------------------------------------------------------------------
def test_threads_adding_the_same_bytes_store_them_once(tmp_path):
    from locator.crawl.rawstore import RawFolder
    folder, data = RawFolder(tmp_path / "00"), jpeg(1)
    barrier = threading.Barrier(8)
    results = []

    def add(i):
        barrier.wait()
        results.append(folder.add(data, "jpg", 96, 72, "commons", url=f"http://h/{i}.jpg"))

    threads = [threading.Thread(target=add, args=(i,)) for i in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sum(r is not None for r in results) == 1
    assert len(check_folder(tmp_path / "00")) == 1


def test_a_second_writer_s_lines_are_seen(tmp_path):
    from locator.crawl.rawstore import RawFolder
    mine, other = RawFolder(tmp_path / "00"), RawFolder(tmp_path / "00")
    mine.add(jpeg(1), "jpg", 96, 72, "commons", url="http://h/1.jpg")
    assert mine.count() == 1
    other.add(jpeg(2), "jpg", 96, 72, "user")  # e.g. serve.py storing a user's photo meanwhile
    assert mine.count() == 2 and mine.known_urls() == {"http://h/1.jpg"}
    assert mine.add(jpeg(2), "jpg", 96, 72, "commons", url="http://h/2.jpg") is None  # its bytes are known
    assert mine.add(jpeg(3), "jpg", 96, 72, "commons")["file"] == "000003.jpg"


def test_reconcile_spares_a_live_writer_s_temp_file(tmp_path):
    from locator.crawl.rawstore import RawFolder
    folder = RawFolder(tmp_path / "raw" / "00")
    folder.add(jpeg(1), "jpg", 96, 72, "commons")
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        live = tmp_path / "raw" / "00" / f"{TMP_PREFIX}{writer.pid}-abc.jpg"
        live.write_bytes(b"being written")
        folder.reconcile(tmp_path)
        assert live.exists()
    finally:
        writer.kill()
        writer.wait()
    folder.reconcile(tmp_path)
    assert not live.exists()


def test_the_summary_has_a_row_a_place_and_totals_the_failures_by_reason(tmp_path, search):
    server = search({"alpha": 3, "beta": 2}, extra={"alpha": ["http://127.0.0.1:9/gone.jpg"]})  # port 9: refused
    reports = run_crawl(table(tmp_path, "alpha", "beta"), server.api_url, tmp_path / "raw", 3)
    lines = crawler.summary_table(reports, 3).splitlines()
    assert lines[0].split() == ["index", "place", "had", "found", "saved", "dups", "failed", "now/3", "failed",
                                "by", "reason"]
    assert [line.split() for line in lines[2:4]] == [["00", "Alpha", "0", "4", "3", "0", "1", "3", "unreachable:1"],
                                                      ["01", "Beta", "0", "2", "2", "0", "0", "2"]]
    assert set(lines[1]) == set(lines[4]) == {"-", " "}  # a rule under the heading and above the total
    assert lines[5].split() == ["total", "0", "6", "5", "0", "1", "5", "unreachable:1"]
    end = lines[0].index("now/3") + len("now/3")  # numbers right-aligned under their heading, as in every step
    assert [line[:end][-2:] for line in lines[2:4] + lines[5:]] == [" 3", " 2", " 5"]
