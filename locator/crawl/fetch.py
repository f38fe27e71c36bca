"""Downloads with manners: one pooled session, bounded concurrency, timeouts, retries, a byte cap.

Every web request of the project goes through a `Fetcher`, so that politeness (User-Agent, concurrency per host,
Retry-After) and safety (http/https only, byte cap while streaming, content type and magic bytes) are decided in
one place. A failure is a `FetchError` whose `reason` is a short word for the crawl's summary table.
"""
import email.message
import email.utils
import json
import logging
import random
import threading
import time
from collections import defaultdict
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

from locator.core import config
from locator.core.images import sniff

log = logging.getLogger(__name__)

# Content types a photo may arrive with. Servers that do not know (octet-stream, none) are given the benefit of
# the doubt: the magic bytes decide.
_IMAGE_TYPES = ("image/", "application/octet-stream", "binary/octet-stream")


class FetchError(Exception):
    """A request that gave up. `reason` is one word for the summary (e.g. http_404, timeout, over_byte_cap)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


class _Retry(Exception):
    """Internal: this attempt failed in a way worth another try (after `wait` seconds, if given)."""

    def __init__(self, error: FetchError, wait: float | None = None):
        self.error, self.wait = error, wait


class Fetcher:
    """One requests.Session shared by all worker threads, with global and per-host concurrency limits."""

    def __init__(self, workers: int = config.CRAWL_WORKERS, per_host: int = config.CRAWL_PER_HOST,
                 connect_timeout: float = config.CRAWL_CONNECT_TIMEOUT, read_timeout: float = config.CRAWL_READ_TIMEOUT,
                 retries: int = config.CRAWL_RETRIES, backoff: float = config.CRAWL_BACKOFF,
                 max_retry_after: float = config.CRAWL_MAX_RETRY_AFTER, max_bytes: int = config.CRAWL_MAX_BYTES,
                 max_redirects: int = config.MAX_REDIRECTS, deadline: float = config.DOWNLOAD_DEADLINE,
                 user_agent: str = config.USER_AGENT):
        self.timeout = (connect_timeout, read_timeout)
        self.retries, self.backoff, self.max_retry_after = retries, backoff, max_retry_after
        self.max_bytes, self.deadline = max_bytes, deadline
        self.session = requests.Session()
        self.session.headers["User-Agent"] = user_agent
        self.session.max_redirects = max_redirects
        # No urllib3 retries: ours below honour Retry-After and release the concurrency slot while waiting.
        adapter = HTTPAdapter(pool_connections=16, pool_maxsize=max(workers, per_host) + 2, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self._global = threading.BoundedSemaphore(workers)
        self._per_host = per_host
        self._hosts = defaultdict(lambda: threading.BoundedSemaphore(self._per_host))
        self._hosts_lock = threading.Lock()

    def close(self) -> None:
        self.session.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- public ---------------------------------------------------------------------------------------------
    def get_json(self, url: str, params=None):
        body, _ = self.get(url, params, accept=("application/json", "text/javascript", "text/json"))
        try:
            return json.loads(body)
        except ValueError as e:
            raise FetchError("bad_json", str(e)[:100])

    def get_text(self, url: str, params=None) -> str:
        body, ctype = self.get(url, params, accept=("text/html", "application/xhtml"))
        msg = email.message.Message()
        msg["Content-Type"] = ctype
        return body.decode(msg.get_content_charset() or "utf-8", errors="replace")

    def get_image(self, url: str):
        """(bytes, ext) of a photo; the content type and the magic bytes must both say image."""
        body, _ = self.get(url, accept=_IMAGE_TYPES)
        return body, image_ext(body)

    def get(self, url: str, params=None, accept=None):
        """(body bytes, Content-Type header) of a GET, with retries. Raises FetchError."""
        check_url(url)
        for attempt in range(self.retries + 1):
            try:
                return self._attempt(url, params, accept)
            except _Retry as r:
                if attempt == self.retries:
                    raise r.error
                wait = r.wait if r.wait is not None else self.backoff * 2 ** attempt
                # a little jitter, so that workers turned away together do not come back together
                wait = min(wait, self.max_retry_after) + random.uniform(0, self.backoff / 4)
                log.debug("retry %d for %s in %.2fs (%s)", attempt + 1, url, wait, r.error)
                time.sleep(wait)
        raise AssertionError("unreachable")

    # --- internals ------------------------------------------------------------------------------------------
    def _host_slot(self, url: str) -> threading.BoundedSemaphore:
        with self._hosts_lock:
            return self._hosts[urlsplit(url).netloc.lower()]

    def _attempt(self, url, params, accept):
        # Host slot first, then the global one: a thread queued for a busy host holds no global slot.
        with self._host_slot(url), self._global:
            try:
                resp = self.session.get(url, params=params, timeout=self.timeout, stream=True)
            except requests.exceptions.TooManyRedirects as e:
                raise FetchError("redirects", str(e)[:100])
            except requests.exceptions.InvalidSchema as e:  # e.g. a redirect to ftp:// or file://
                raise FetchError("bad_url", str(e)[:100])
            except requests.exceptions.ConnectTimeout as e:
                raise _Retry(FetchError("timeout", f"connect: {str(e)[:80]}"))
            except requests.exceptions.ReadTimeout as e:
                # Not retried: a server slower than the read timeout is usually as slow again, and three more
                # waits would stall a worker for minutes.
                raise FetchError("timeout", f"read: {str(e)[:80]}")
            except requests.exceptions.ConnectionError as e:
                raise _Retry(FetchError("connection", str(e)[:100]))
            except requests.exceptions.RequestException as e:
                raise FetchError("request", f"{type(e).__name__}: {str(e)[:100]}")
            with resp:
                return self._read(resp, accept)

    def _read(self, resp: requests.Response, accept):
        status = resp.status_code
        if status == 429 or status >= 500:
            raise _Retry(FetchError(f"http_{status}"), retry_after(resp.headers.get("Retry-After")))
        if status != 200:
            raise FetchError(f"http_{status}")
        ctype = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if accept and ctype and not ctype.startswith(tuple(accept)):
            raise FetchError("bad_type", ctype)
        length = resp.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > self.max_bytes:
            raise FetchError("over_byte_cap", f"Content-Length {length} > {self.max_bytes}")
        # Stream: the cap holds even when the server lies about (or omits) the length.
        chunks, size, start = [], 0, time.monotonic()
        try:
            for chunk in resp.iter_content(64 * 1024):
                size += len(chunk)
                if size > self.max_bytes:
                    raise FetchError("over_byte_cap", f"more than {self.max_bytes} bytes")
                if time.monotonic() - start > self.deadline:
                    raise FetchError("timeout", f"body took over {self.deadline:g}s")
                chunks.append(chunk)
        except requests.exceptions.ConnectionError as e:  # urllib3 wraps read timeouts mid-body in this
            reason = "timeout" if "timed out" in str(e).lower() else "connection"
            raise FetchError(reason, str(e)[:100])
        except requests.exceptions.RequestException as e:
            raise FetchError("connection", f"{type(e).__name__}: {str(e)[:100]}")
        return b"".join(chunks), resp.headers.get("Content-Type", "")


def check_url(url: str) -> None:
    """Only http(s) URLs with a host are fetched: file://, ftp://, data: and the like are refused."""
    parts = urlsplit(url or "")
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise FetchError("bad_url", f"not an http(s) URL: {str(url)[:80]}")


def retry_after(value) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def image_ext(data: bytes) -> str:
    """File extension from the magic bytes; FetchError('not_image') when they name no photo format."""
    ext = sniff(data[:16])
    if ext is None:
        raise FetchError("not_image", "the bytes are not JPEG/PNG/GIF/BMP/WebP/TIFF")
    return ext
