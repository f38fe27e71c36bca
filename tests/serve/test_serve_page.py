"""The upload page in a real browser: headless Chromium (Debian's chromium + chromium-driver) driven by selenium
against a real server on 127.0.0.1. Picks a photo, drops another, sends a file that is not a photo; screenshots.

.ci/run installs chromium and chromium-driver, so in CI (CI=true) a missing browser fails instead of skipping.
UPLOAD_PAGE_SCREENSHOT=path also saves the phone-sized screenshot there (docs/upload_page.png: docs/serving.md).
"""
import base64
import os
import shutil

import pytest
import servekit

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=480,1200"]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (CHROMIUM and DRIVER):
        msg = "chromium and chromium-driver are needed (apt-get install -y chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for f in FLAGS + [f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"]:
        opts.add_argument(f)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)  # explicit paths: nothing is downloaded
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    models = tmp_path_factory.mktemp("page") / "models"
    servekit.promoted(models)
    with servekit.Running(models, servekit.table_path()) as srv:
        yield srv


def _text(driver, css):
    return driver.find_element("css selector", css).text


def _wait_for(driver, css, text):
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 30).until(lambda d: text in _text(d, css))


def test_pick_a_photo_see_the_place_and_screenshot(browser, served, tmp_path):
    photo = tmp_path / "holiday.jpg"
    photo.write_bytes(servekit.jpeg(servekit.place_photo(0, 4242, 640, 480)))
    browser.get(served.url + "/")
    assert browser.title == "Landmark Locator"
    assert "Learning is on" not in browser.page_source
    browser.find_element("id", "file").send_keys(str(photo))
    _wait_for(browser, "#place", "Place 0")
    assert "% confident" in _text(browser, "#conf")
    assert "0 Test Road, Seoul" in _text(browser, "#address")
    osm = browser.find_element("id", "osm").get_attribute("href")
    assert osm.startswith("https://www.openstreetmap.org/?mlat=37.5&mlon=127#map=17/37.5/127")
    nearby = [li.text for li in browser.find_elements("css selector", "#nearby li")]
    assert nearby[0].startswith("Museum (museum)") and nearby[0].endswith("1.1 km")
    assert len(nearby) == 3  # Tower is beyond NEARBY_KM
    assert browser.execute_script("return document.getElementById('photo').naturalWidth") == 640
    shot = tmp_path / "upload_page.png"
    assert browser.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 5000
    if os.environ.get("UPLOAD_PAGE_SCREENSHOT"):
        shutil.copy(shot, os.environ["UPLOAD_PAGE_SCREENSHOT"])


def _drop(driver, data: bytes, name: str, mime: str):
    """A file dropped on the drop zone, as a person dragging it from their file manager would."""
    driver.execute_script("""
        const [b64, name, mime] = arguments;
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], name, {type: mime}));
        const zone = document.getElementById('drop');
        for (const type of ['dragenter', 'dragover', 'drop'])
          zone.dispatchEvent(new DragEvent(type, {dataTransfer: dt, bubbles: true, cancelable: true}));
    """, base64.b64encode(data).decode(), name, mime)


def test_drop_a_photo_then_a_file_that_is_not_one(browser, served):
    browser.get(served.url + "/")
    _drop(browser, servekit.jpeg(servekit.place_photo(2, 99)), "temple.jpg", "image/jpeg")
    _wait_for(browser, "#place", "Place 2")
    _drop(browser, b"these are my notes", "notes.txt", "text/plain")
    _wait_for(browser, "#status", "unsupported content type")
    assert "error" in browser.find_element("id", "status").get_attribute("class")
    _drop(browser, b"\xff\xd8\xff broken", "broken.jpg", "image/jpeg")
    _wait_for(browser, "#status", "not a usable photo")


def test_another_site_cannot_post_photos_to_a_learning_server(browser, tmp_path):
    """A page on another origin posts a JPEG with a CORS-safelisted type (no preflight) from the visitor's browser:
    refused (403), nothing kept. The server's own page, in the same browser, still uploads."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import serve

    models, data = tmp_path / "models", tmp_path / "data"
    servekit.promoted(models)
    photo = servekit.jpeg(servekit.place_photo(0, 4243))
    with servekit.Running(models, servekit.table_path(), learn=serve.learner(data)) as srv:
        evil_page = (f"<script>fetch('{srv.url}/v1/locate', {{method: 'POST', mode: 'no-cors', "
                     "headers: {'Content-Type': 'application/x-www-form-urlencoded'}, body: new Blob([Uint8Array.from("
                     f"atob('{base64.b64encode(photo).decode()}'), c => c.charCodeAt(0))])}})"
                     ".then(() => document.title = 'sent', () => document.title = 'failed');</script>").encode()

        class Evil(BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(evil_page)))
                self.end_headers()
                self.wfile.write(evil_page)

            def log_message(self, *a):
                pass

        evil = ThreadingHTTPServer(("127.0.0.1", 0), Evil)
        threading.Thread(target=evil.serve_forever, daemon=True).start()
        try:
            browser.get(f"http://localhost:{evil.server_address[1]}/")   # another origin than 127.0.0.1:port
            from selenium.webdriver.support.ui import WebDriverWait

            WebDriverWait(browser, 30).until(lambda d: d.title in ("sent", "failed"))
        finally:
            evil.shutdown()
            evil.server_close()
        assert not data.exists(), list(data.rglob("*"))
        shot = tmp_path / "mine.jpg"
        shot.write_bytes(photo)
        browser.get(srv.url + "/")
        browser.find_element("id", "file").send_keys(str(shot))
        _wait_for(browser, "#place", "Place")
    assert data.exists()
