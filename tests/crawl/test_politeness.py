"""The crawl as the live services would see it: tools/search_server.py on 127.0.0.1 enforces what Wikimedia
enforces (2 concurrent media requests, standard thumbnail widths, a User-Agent with a contact, maxlag and
ratelimited answers, Retry-After) and Bing's paging; a network that is down is a refused port or a name that does
not resolve. Nothing is mocked: each test would fail where the real service would throttle or block us."""
import logging
import sys
import time
from pathlib import Path

import pytest
import requests
from genphotos import encode, photo
from pytest_httpserver import HTTPServer
from werkzeug import Response

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import crawl  # noqa: E402
from locator.core import config, places  # noqa: E402
from locator.core.cli import run  # noqa: E402
from locator.core.fsio import read_jsonl  # noqa: E402
from locator.crawl import crawler, engines  # noqa: E402
from locator.crawl.fetch import Fetcher, FetchError, build_user_agent  # noqa: E402
from tools.search_server import THUMB_WIDTHS, SearchServer  # noqa: E402

FAST = dict(read_timeout=2.0, connect_timeout=1.0, retries=2, backoff=0.05, max_retry_after=2.0)


def photo_tree(root: Path, folders: dict, size=(96, 72)) -> Path:
    seed = 0
    for folder, n in folders.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (root / folder / f"{i:03d}.jpg").write_bytes(encode(photo(seed, *size)))
            seed += 1
    return root


def table(tmp_path, *queries) -> Path:
    """A place table whose places search the given ';'-joined terms (a spare second place: a table needs two;
    run_crawl leaves it out)."""
    queries = queries + ("spare place",) if len(queries) == 1 else queries
    rows = [(f"{i:02x}", q.split(";")[0].title(), q, 37.5 + i / 100, 127.0, "", "") for i, q in enumerate(queries)]
    path = tmp_path / "places.xlsx"
    places.write(path, rows)
    return path


def run_crawl(places_xlsx, endpoint, out, per_place, engine="commons", workers=8, limits=None, **fetch):
    """The crawl loop as crawl.py runs it: the engine's own limits unless `limits` says otherwise."""
    engine = engines.load(engine)
    with Fetcher(workers=workers, limits=engines.limits(engine) if limits is None else limits,
                 **{**FAST, **fetch}) as fetcher:
        chosen = [p for p in places.load(places_xlsx).places if p.name != "Spare Place"]
        return crawler.crawl(chosen, engine, endpoint, out, per_place, fetcher,
                             workers, progress=False)


def crawl_cli(*args) -> int:
    with pytest.raises(SystemExit) as e:
        run(lambda: crawl.main([str(a) for a in args] + ["--no-progress"]))
    return e.value.code


@pytest.fixture
def search(tmp_path):
    started = []

    def make(folders, latency=0.0, size=(96, 72), **kw):
        server = SearchServer(photo_tree(tmp_path / "photos", folders, size), latency=latency, **kw)
        started.append(server.start())
        return server

    yield make
    for server in started:
        server.stop()


def api_calls(server) -> list:
    return [q for path, q, _ in server.log if path == "/w/api.php"]


# --- Wikimedia's media host: at most 2 at a time -----------------------------------------------------------------
def test_commons_downloads_stay_within_the_media_host_s_two(tmp_path, search):
    server = search({"alpha": 24}, latency=0.03)
    [rep] = run_crawl(table(tmp_path, "alpha"), server.api_url, tmp_path / "raw", 24, workers=16)
    assert (rep.saved, dict(rep.failed)) == (24, {})
    assert server.peak["media"] == config.COMMONS_MEDIA_PER_HOST == 2 and server.throttled == 0
    assert server.peak["api"] == 1


def test_the_old_eight_per_host_would_be_throttled(tmp_path, search):
    """The same crawl with the old per-host 8: the stand-in answers 429, as upload.wikimedia.org would."""
    server = search({"alpha": 12}, latency=0.05)
    [rep] = run_crawl(table(tmp_path, "alpha"), server.api_url, tmp_path / "raw", 12, workers=16,
                      limits={"media": 8})
    assert server.throttled > 0 and server.peak["media"] > 2
    assert rep.saved + sum(rep.failed.values()) == 12


def test_repeated_429s_space_the_host_s_requests_apart():
    hits = []

    def handler(request):
        hits.append(time.monotonic())
        if len(hits) <= 3:
            return Response("slow down", status=429, headers={"Retry-After": "0"})
        return Response(encode(photo(1)), content_type="image/jpeg")

    web = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    web.expect_request("/p.jpg").respond_with_handler(handler)
    web.start()
    try:
        with Fetcher(**{**FAST, "retries": 3, "backoff": 0.1}) as f:
            f.get_image(web.url_for("/p.jpg"))  # three 429s, then the photo
            gap = f.host_state(web.url_for("/")).gap
            t0 = time.monotonic()
            for _ in range(3):
                f.get_image(web.url_for("/p.jpg"))
            spent = time.monotonic() - t0
    finally:
        web.stop()
    assert gap == pytest.approx(0.4)  # 0.1, doubled per 429
    assert spent >= 2 * gap  # the later requests keep the gap, though they were answered at once


def burst_server(bursts):
    """A server on 127.0.0.1 whose photo is answered 429 (Retry-After: 0) to the requests numbered in `bursts`
    (1-based), and served to every other; `hits` holds when each request came."""
    hits = []

    def handler(request):
        hits.append(time.monotonic())
        if len(hits) in bursts:
            return Response("slow down", status=429, headers={"Retry-After": "0"})
        return Response(encode(photo(1)), content_type="image/jpeg")

    web = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    web.expect_request("/p.jpg").respond_with_handler(handler)
    return web, hits


def test_a_throttled_host_gets_its_speed_back_after_a_run_of_answers():
    """429s for a while, then fine: each 429 doubles the gap, every 4 answers in a row halve it, down to none;
    a later burst slows the host down again."""
    web, hits = burst_server(bursts={1, 2, 3, 22, 23})
    web.start()
    try:
        with Fetcher(**{**FAST, "retries": 3, "backoff": 0.02}, speedup_after=4) as f:
            host = f.host_state(web.url_for("/"))
            gaps = []
            for _ in range(17):  # the first: three 429s, then the photo
                f.get_image(web.url_for("/p.jpg"))
                gaps.append(host.gap)
            f.get_image(web.url_for("/p.jpg"))  # request 21, at full speed
            f.get_image(web.url_for("/p.jpg"))  # requests 22-24: a second burst of two 429s
            after_second = host.gap
    finally:
        web.stop()
    assert gaps[0] == pytest.approx(0.08)  # 0.02, doubled per 429
    # halved after every 4 answers in a row (the photo after the 429s is the first), and gone below the backoff
    assert gaps == pytest.approx([0.08] * 3 + [0.04] * 4 + [0.02] * 4 + [0.0] * 6)
    assert len(hits) == 24 and after_second == pytest.approx(0.04)


def test_answers_between_429s_keep_the_host_slow():
    """A host that keeps throttling (a 429 every third request) never gets a run long enough to speed up."""
    web, hits = burst_server(bursts=set(range(3, 40, 3)))
    web.start()
    try:
        with Fetcher(**{**FAST, "retries": 3, "backoff": 0.01, "slowdown_max": 0.04}, speedup_after=4) as f:
            for _ in range(12):
                f.get_image(web.url_for("/p.jpg"))
            gap = f.host_state(web.url_for("/")).gap
    finally:
        web.stop()
    assert len(hits) == 12 + 5 and gap == pytest.approx(0.04)  # 12 photos, 5 429s between them; the gap at its cap


def test_a_crawl_from_a_flaky_server_with_traps_still_fills_the_folder(tmp_path, search):
    """The stand-in of `bench/crawl_bench.py --hostile`: random 429s and 500s are retried, each trap fails on its
    own reason and costs no quota."""
    server = search({"alpha": 16}, flaky=4, traps=4, seed=1)
    server.flaky_retry_after, server.trap_delay = 0, 0.05
    [rep] = run_crawl(table(tmp_path, "alpha"), server.api_url, tmp_path / "raw", 12, retries=5, speedup_after=4)
    assert rep.saved == 12 and server.flaked > 0
    # the first 15 results hold 3 traps: a missing file, an HTML page, bytes that are no photo
    assert (rep.found, dict(rep.failed)) == (15, {"http_404": 1, "bad_type": 1, "not_image": 1})


# --- thumbnails: standard widths only ----------------------------------------------------------------------------
def test_thumbnails_are_asked_at_a_standard_width(tmp_path, search):
    server = search({"alpha": 3}, size=(1200, 900))
    assert config.THUMB_WIDTH in THUMB_WIDTHS and tuple(config.THUMB_WIDTHS) == THUMB_WIDTHS
    [rep] = run_crawl(table(tmp_path, "alpha"), server.api_url, tmp_path / "raw", 3)
    assert (rep.saved, dict(rep.failed)) == (3, {})
    urls = [r["url"] for r in read_jsonl(tmp_path / "raw" / "00" / "manifest.jsonl")]
    assert all(f"/{config.THUMB_WIDTH}px-" in u for u in urls), urls
    ua = {"User-Agent": build_user_agent("ops@example.org")}
    odd = requests.get(urls[0].replace("/500px-", "/640px-"), headers=ua, timeout=5)
    assert odd.status_code == 400 and "thumbnail steps" in odd.text  # a hand-made width is refused
    api = requests.get(server.api_url, headers=ua, timeout=5, params={
        "action": "query", "generator": "search", "gsrsearch": "alpha", "prop": "imageinfo", "iiurlwidth": "640",
        "formatversion": "2", "format": "json"}).json()
    assert "/960px-" in api["query"]["pages"][0]["imageinfo"][0]["thumburl"]  # 640 is rounded up by the API


# --- User-Agent: the policy's shape, with the operator's contact -------------------------------------------------
def test_user_agent_carries_the_contact_and_a_bare_one_is_refused(tmp_path, search, monkeypatch, caplog):
    server = search({"alpha": 2, "beta": 2})
    with Fetcher(**FAST, user_agent=f"python-requests/{requests.__version__}") as f, \
            pytest.raises(FetchError) as e:
        f.get_json(server.api_url, {"action": "query"})
    assert e.value.reason == "http_403"  # what Wikimedia answers to a client without a proper User-Agent
    args = ("--places", table(tmp_path, "alpha", "beta"), "--api-url", server.api_url, "--out", tmp_path / "raw")
    assert crawl_cli(*args, "--per-place", 1, "--contact", "ops@example.org") == 0
    assert {ua for *_, ua in server.log[1:]} == {build_user_agent("ops@example.org")}
    assert "no --contact" not in caplog.text
    monkeypatch.setenv(config.CONTACT_ENV, "https://example.org/landmarks")
    assert crawl_cli(*args, "--per-place", 2) == 0
    assert server.log[-1][2] == build_user_agent("https://example.org/landmarks")


def test_a_contact_that_is_no_address_is_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(config.CONTACT_ENV, raising=False)
    assert crawl_cli("--places", table(tmp_path, "alpha", "beta"), "--contact", "call me (maybe)") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --contact ") and "email address or an http(s) URL" in err[0]


def test_the_project_default_contact_is_warned_about_once(tmp_path, search, monkeypatch, caplog):
    import locator.crawl.fetch as fetch

    monkeypatch.delenv(config.CONTACT_ENV, raising=False)
    monkeypatch.setattr(fetch, "_warned_default", False)
    server = search({"alpha": 2, "beta": 2})
    args = ("--places", table(tmp_path, "alpha", "beta"), "--api-url", server.api_url, "--out", tmp_path / "raw")
    assert crawl_cli(*args, "--per-place", 1) == 0 and crawl_cli(*args, "--per-place", 2) == 0
    assert caplog.text.count("no --contact or $LANDMARK_CONTACT") == 1
    assert server.log[-1][2] == build_user_agent(config.CONTACT)


# --- the API says "busy": maxlag, ratelimited, Retry-After --------------------------------------------------------
def test_maxlag_and_ratelimited_answers_are_waited_out_and_retried(tmp_path, search):
    server = search({"alpha": 3, "beta": 3})
    server.api_errors = [("maxlag", 1), ("ratelimited", 1)]
    t0 = time.monotonic()
    reports = run_crawl(table(tmp_path, "alpha", "beta"), server.api_url, tmp_path / "raw", 3)
    assert [(r.saved, dict(r.failed)) for r in reports] == [(3, {}), (3, {})]
    assert time.monotonic() - t0 >= 2  # both Retry-After waits were kept
    assert all(q.get("maxlag") == str(config.MAXLAG) for q in api_calls(server))


def test_an_api_that_stays_busy_is_a_search_failure_not_an_empty_answer(tmp_path, search):
    server = search({"alpha": 3, "beta": 3})
    server.api_errors = [("maxlag", 0)] * 3  # the first search's three tries
    reports = run_crawl(table(tmp_path, "alpha", "beta"), server.api_url, tmp_path / "raw", 3)
    assert [(r.saved, dict(r.failed)) for r in reports] == [(0, {"search_api_maxlag": 1}), (3, {})]


@pytest.mark.parametrize("error", [(429, 3600), ("ratelimited", 3600)])
def test_a_long_retry_after_stops_the_crawl_with_the_wait_named(tmp_path, search, caplog, error):
    server = search({"alpha": 3, "beta": 3})
    server.api_errors = [error]
    t0 = time.monotonic()
    assert crawl_cli("--places", table(tmp_path, "alpha", "beta"), "--api-url", server.api_url,
                     "--out", tmp_path / "raw", "--per-place", 3) == 1
    assert time.monotonic() - t0 < 5  # neither slept for an hour nor shortened the wait to 30 s
    assert len(api_calls(server)) == 1  # and nothing asked again: not the next term, not the next place
    line = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR][-1]
    assert line.startswith("nothing could be collected: 127.0.0.1") and "asks us to wait 3600 s" in line


# --- Bing ----------------------------------------------------------------------------------------------------------
def test_bing_pages_from_1_with_the_photo_filter(tmp_path, search):
    server = search({"alpha": 40})
    [rep] = run_crawl(table(tmp_path, "alpha"), server.bing_url, tmp_path / "raw", 40, "bing")
    assert rep.saved == 40
    pages = [q for path, q, _ in server.log if path == "/images/async"]
    assert [q["first"] for q in pages[:2]] == ["1", "36"] and all(q["qft"] == "+filterui:photo-photo" for q in pages)


def test_a_bing_page_without_results_is_its_own_failure(tmp_path):
    web = HTTPServer(host="127.0.0.1", port=0)
    # what a changed layout or a bot wall looks like: a page, but no a.iusc result anchors
    web.expect_request("/images/async").respond_with_data("<html><body><div id='b_captcha'></div></body></html>",
                                                          content_type="text/html")
    web.start()
    try:
        [rep] = run_crawl(table(tmp_path, "alpha;alpha two"), web.url_for("/images/async"), tmp_path / "raw", 3,
                          "bing")
    finally:
        web.stop()
    assert rep.found == 0 and dict(rep.failed) == {"search_no_results_parsed": 2}


# --- the network is down -------------------------------------------------------------------------------------------
def _refused_url() -> tuple:
    dead = HTTPServer(host="127.0.0.1", port=0)
    dead.start()
    url = dead.url_for("/w/api.php")
    dead.stop()
    host = url.split("/")[2]
    return url, f"cannot reach {host}: connection refused"


@pytest.mark.parametrize("down", ["refused", "unresolvable"])
def test_a_network_that_is_down_ends_the_crawl_within_seconds(tmp_path, caplog, down):
    url, cause = _refused_url() if down == "refused" else (
        "http://landmark-locator.invalid/w/api.php", "cannot reach landmark-locator.invalid: name resolution failed")
    queries = [f"place {i};place {i} old;place {i} other" for i in range(8)]
    t0 = time.monotonic()
    assert crawl_cli("--places", table(tmp_path, *queries), "--api-url", url, "--out", tmp_path / "raw") == 1
    assert time.monotonic() - t0 < 8  # not 8 places x 3 terms x 4 tries (about 30 s refused, minutes hanging)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors and errors[-1].startswith(f"nothing could be collected: {cause}")
    assert sum("search for" in r.getMessage() for r in caplog.records) == 1  # one search, then the host is given up
