"""Downloads with manners: one pooled session, bounded concurrency, timeouts, retries, a byte cap.

Every web request of the project goes through a `Fetcher`, so that politeness and safety are decided in one place:
- concurrency per (lane, host): an engine names its lanes' limits (Commons: its media host at most 2 at a time,
  as Wikimedia's robot policy asks; search/API requests one at a time); other hosts get `per_host`;
- a host that answers 429 or Retry-After is paused as a whole (every thread waits), and a Retry-After longer
  than the cap stops that host with a message naming the wait (never shortened);
- each 429 doubles the gap between a host's request starts (up to `CRAWL_SLOWDOWN_MAX`), and every
  `CRAWL_SPEEDUP_AFTER` answers in a row without one halve it, down to none: a host that keeps throttling stays
  slow, one that throttled for a while gets its speed back. Halving, not a fixed step off the gap per answer,
  undoes a doubling in the same number of answers at any gap; with a step, one doubling at gap g takes g/step
  answers to undo, so a 429 now and then that has nothing to do with our rate would ratchet the gap up;
- a host that cannot be reached (DNS, refused, connect timeout) `CRAWL_HOST_DOWN_AFTER` times in a row is given
  up for the run, so an offline crawl ends in seconds with the real cause;
- http/https only, a byte cap while streaming, content type and magic bytes checked.
A failure is a `FetchError` whose `reason` is a short word for the crawl's summary table; `HostStopped` (a
FetchError) means the host will not be asked again in this run.
"""
import email.message
import email.utils
import json
import logging
import os
import random
import re
import threading
import time
from urllib.parse import urlsplit

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter

from locator.core import config
from locator.core.errors import UserError
from locator.core.images import sniff

log = logging.getLogger(__name__)

# Content types a photo may arrive with. Servers that do not know (octet-stream, none) are given the benefit of
# the doubt: the magic bytes decide.
_IMAGE_TYPES = ("image/", "application/octet-stream", "binary/octet-stream")
_JSON_TYPES = ("application/json", "text/javascript", "text/json")
_EMAIL = re.compile(r"^[^@\s();]+@[^@\s();]+\.[^@\s();]+$")
_URL = re.compile(r"^https?://[^\s();]+\.[^\s();]+$")


class FetchError(Exception):
    """A request that gave up. `reason` is one word for the summary (e.g. http_404, timeout, over_byte_cap)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


class HostStopped(FetchError):
    """The host is not asked again in this run: unreachable, or it asked for a longer wait than a crawl makes."""


class _Retry(Exception):
    """Internal: this attempt failed in a way worth another try (after `wait` seconds, if the server said)."""

    def __init__(self, error: FetchError, wait: float | None = None, throttled: bool = False):
        self.error, self.wait, self.throttled = error, wait, throttled


class _Host:
    """What this run has learnt about one host (shared by all threads)."""

    def __init__(self, name: str):
        self.name = name
        self.lock = threading.Lock()
        self.next_start = 0.0      # monotonic time before which no request starts (a pause, or the gap below)
        self.gap = 0.0             # seconds between request starts: doubled by a 429, halved by a run of answers
        self.streak = 0            # answers without a 429 since the gap last changed
        self.warned = False        # the first slowdown is a warning; the ones after a recovery are debug lines
        self.unreachable = 0       # consecutive connection failures
        self.stopped: HostStopped | None = None

    def wait_turn(self) -> None:
        with self.lock:
            now = time.monotonic()
            start = max(now, self.next_start)
            self.next_start = start + self.gap
        if start > now:
            time.sleep(start - now)

    def pause(self, seconds: float) -> None:
        with self.lock:
            self.next_start = max(self.next_start, time.monotonic() + seconds)

    def stop(self, error: HostStopped) -> HostStopped:
        with self.lock:
            if self.stopped is None:
                self.stopped = error
                log.warning("%s", error.detail)
            return self.stopped


class Fetcher:
    """One requests.Session shared by all worker threads, with global and per-(lane, host) concurrency limits."""

    def __init__(self, workers: int = config.CRAWL_WORKERS, per_host: int = config.CRAWL_PER_HOST,
                 connect_timeout: float = config.CRAWL_CONNECT_TIMEOUT, read_timeout: float = config.CRAWL_READ_TIMEOUT,
                 retries: int = config.CRAWL_RETRIES, backoff: float = config.CRAWL_BACKOFF,
                 max_retry_after: float = config.CRAWL_MAX_RETRY_AFTER, max_bytes: int = config.CRAWL_MAX_BYTES,
                 max_redirects: int = config.MAX_REDIRECTS, deadline: float = config.DOWNLOAD_DEADLINE,
                 user_agent: str | None = None, limits: dict | None = None,
                 down_after: int = config.CRAWL_HOST_DOWN_AFTER, slowdown_max: float = config.CRAWL_SLOWDOWN_MAX,
                 speedup_after: int = config.CRAWL_SPEEDUP_AFTER):
        self.timeout = (connect_timeout, read_timeout)
        self.retries, self.backoff, self.max_retry_after = retries, backoff, max_retry_after
        self.max_bytes, self.deadline = max_bytes, deadline
        self.down_after, self.slowdown_max, self.speedup_after = down_after, slowdown_max, speedup_after
        self.session = requests.Session()
        self.session.headers["User-Agent"] = user_agent or build_user_agent(config.CONTACT)
        self.session.max_redirects = max_redirects
        # lane -> concurrency; a request in another lane (plain downloads) gets per_host
        self.limits = {"api": config.API_PER_HOST, **(limits or {})}
        self._per_host = per_host
        # No urllib3 retries: ours below honour Retry-After and release the concurrency slot while waiting.
        pool = max(workers, per_host, *self.limits.values()) + 2
        adapter = HTTPAdapter(pool_connections=16, pool_maxsize=pool, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self._global = threading.BoundedSemaphore(workers)
        self._slots, self._hosts = {}, {}
        self._hosts_lock = threading.Lock()

    def close(self) -> None:
        self.session.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- public ---------------------------------------------------------------------------------------------
    def get_json(self, url: str, params=None, lane: str = "api", busy=()):
        """The parsed JSON answer. An API error whose code is in `busy` (MediaWiki's maxlag, ratelimited: HTTP 200
        with Retry-After) is waited out and retried like a 429, never taken for an empty answer."""
        def parse(body, headers):
            try:
                data = json.loads(body)
            except ValueError as e:
                raise FetchError("bad_json", str(e))
            err = data.get("error") if isinstance(data, dict) else None
            code = err.get("code") if isinstance(err, dict) else None
            if code in busy:
                wait = retry_after(headers.get("Retry-After"))
                raise _Retry(FetchError(f"api_{code}", str(err.get("info", ""))),
                             wait if wait is not None else float(config.MAXLAG), throttled=code == "ratelimited")
            return data
        return self._get(url, params, _JSON_TYPES, lane, parse)

    def get_text(self, url: str, params=None, lane: str = "api") -> str:
        body, ctype = self._get(url, params, ("text/html", "application/xhtml"), lane)
        msg = email.message.Message()
        msg["Content-Type"] = ctype
        return body.decode(msg.get_content_charset() or "utf-8", errors="replace")

    def get_image(self, url: str, lane: str = ""):
        """(bytes, ext) of a photo; the content type and the magic bytes must both say image."""
        body, _ = self._get(url, None, _IMAGE_TYPES, lane)
        return body, image_ext(body)

    def host_state(self, url: str) -> _Host:
        netloc = urlsplit(url).netloc.lower()
        with self._hosts_lock:
            if netloc not in self._hosts:
                self._hosts[netloc] = _Host(netloc)
            return self._hosts[netloc]

    # --- internals ------------------------------------------------------------------------------------------
    def _get(self, url, params, accept, lane, parse=None):
        check_url(url)
        host = self.host_state(url)
        for attempt in range(self.retries + 1):
            if host.stopped:
                raise host.stopped
            try:
                body, ctype, headers = self._attempt(url, params, accept, lane, host)
                return parse(body, headers) if parse else (body, ctype)
            except _Retry as r:
                if host.stopped:
                    raise host.stopped
                if r.throttled:
                    self._slow_down(host)
                if r.wait is not None and r.wait > self.max_retry_after:
                    raise host.stop(HostStopped("retry_after", _long_wait(host.name, r.wait, self.max_retry_after)))
                if attempt == self.retries:
                    raise r.error
                # a little jitter, so that workers turned away together do not come back together
                jitter = random.uniform(0, self.backoff / 4)
                if r.wait is not None:  # the server said how long: the whole host waits, not only this thread
                    host.pause(r.wait + jitter)
                    log.debug("retry %d for %s: %s pauses %.2fs (%s)", attempt + 1, url, host.name, r.wait, r.error)
                else:
                    wait = self.backoff * 2 ** attempt + jitter
                    log.debug("retry %d for %s in %.2fs (%s)", attempt + 1, url, wait, r.error)
                    time.sleep(wait)
        raise AssertionError("unreachable")

    def _slot(self, lane: str, netloc: str) -> threading.BoundedSemaphore:
        with self._hosts_lock:
            key = (lane, netloc)
            if key not in self._slots:
                self._slots[key] = threading.BoundedSemaphore(self.limits.get(lane, self._per_host))
            return self._slots[key]

    def _slow_down(self, host: _Host) -> None:
        with host.lock:
            first = not host.warned
            host.gap = min(max(2 * host.gap, self.backoff), self.slowdown_max)
            host.streak, host.warned = 0, True
        log.debug("%s answers 429: %.2g s between its requests", host.name, host.gap)
        if first:
            log.warning("%s answers 429 (too many requests): its requests are spaced %.2g s apart, more after "
                        "each further 429, less after each %d answers in a row without one",
                        host.name, host.gap, self.speedup_after)

    def _answered(self, host: _Host) -> None:
        """An answer that was no 429: a run of them halves the gap; below the backoff step it is gone."""
        with host.lock:
            if host.gap == 0:
                return
            host.streak += 1
            if host.streak < self.speedup_after:
                return
            host.streak = 0
            host.gap = host.gap / 2 if host.gap / 2 >= self.backoff else 0.0
        log.debug("%s answered %d in a row: %.2g s between its requests", host.name, self.speedup_after, host.gap)

    def _unreachable(self, host: _Host, e: Exception) -> _Retry:
        """A connection failure: counted; after down_after in a row the host is given up for the run."""
        cause = connect_failure(e, self.timeout[0])
        with host.lock:
            host.unreachable += 1
            n = host.unreachable
        if n >= self.down_after:
            host.stop(HostStopped("unreachable", f"cannot reach {host.name}: {cause}"))
        return _Retry(FetchError("unreachable", f"{host.name}: {cause}"))

    def _attempt(self, url, params, accept, lane, host: _Host):
        # Host slot first, then the global one: a thread queued for a busy host holds no global slot.
        with self._slot(lane, host.name):
            host.wait_turn()
            with self._global:
                if host.stopped:
                    raise host.stopped
                try:
                    resp = self.session.get(url, params=params, timeout=self.timeout, stream=True)
                except requests.exceptions.TooManyRedirects as e:
                    raise FetchError("redirects", str(e))
                except requests.exceptions.InvalidSchema as e:  # e.g. a redirect to ftp:// or file://
                    raise FetchError("bad_url", str(e))
                except requests.exceptions.ConnectTimeout as e:
                    raise self._unreachable(host, e)
                except requests.exceptions.ReadTimeout as e:
                    # Not retried: a server slower than the read timeout is usually as slow again, and three
                    # more waits would stall a worker for minutes.
                    raise FetchError("timeout", f"read: {e}")
                except requests.exceptions.ConnectionError as e:
                    if connect_failure(e, self.timeout[0], strict=True):
                        raise self._unreachable(host, e)
                    raise _Retry(FetchError("connection", str(e)))  # e.g. a reset: the host is there
                except requests.exceptions.RequestException as e:
                    raise FetchError("request", f"{type(e).__name__}: {e}")
                with host.lock:
                    host.unreachable = 0
                with resp:
                    return self._read(resp, accept, host)

    def _read(self, resp: requests.Response, accept, host: _Host):
        status = resp.status_code
        if status == 429:
            raise _Retry(FetchError("http_429"), retry_after(resp.headers.get("Retry-After")), throttled=True)
        self._answered(host)
        if status >= 500:
            raise _Retry(FetchError(f"http_{status}"), retry_after(resp.headers.get("Retry-After")))
        if status != 200:
            raise FetchError(f"http_{status}", _first_line(resp))
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
            raise FetchError(reason, str(e))
        except requests.exceptions.RequestException as e:
            raise FetchError("connection", f"{type(e).__name__}: {e}")
        return b"".join(chunks), resp.headers.get("Content-Type", ""), resp.headers


def _first_line(resp) -> str:
    """The start of an error page (e.g. Wikimedia's 'Use thumbnail steps listed on ...'), for the debug log."""
    try:
        return next(iter(resp.iter_content(300)), b"").decode("utf-8", "replace").strip().splitlines()[0][:200]
    except (requests.exceptions.RequestException, IndexError):
        return ""


def _long_wait(host: str, wait: float, cap: float) -> str:
    until = time.strftime("%H:%M", time.localtime(time.time() + wait))
    return (f"{host} asks us to wait {wait:.0f} s (Retry-After), longer than the {cap:g} s a crawl waits: "
            f"stopped asking it; run the crawl again after {until}")


def _causes(e):
    """The exception and everything it wraps (requests -> urllib3 MaxRetryError -> NewConnectionError -> OSError)."""
    seen = []
    while e is not None and e not in seen and len(seen) < 10:
        seen.append(e)
        nxt = getattr(e, "reason", None) if isinstance(e, urllib3.exceptions.MaxRetryError) else None
        if nxt is None and e.args and isinstance(e.args[0], BaseException):
            nxt = e.args[0]
        e = nxt or e.__cause__ or e.__context__
    return seen


def connect_failure(e: Exception, connect_timeout: float, strict: bool = False) -> str:
    """Why a connection could not be made, in words ("name resolution failed ([Errno -2] ...)"), or "" (strict)
    when the failure came after the connection was made (a reset, a closed keep-alive connection)."""
    chain = _causes(e)
    # Order matters: in urllib3 2, NameResolutionError is a NewConnectionError, which is a ConnectTimeoutError.
    for c in chain:
        if isinstance(c, urllib3.exceptions.NameResolutionError):
            errno = re.search(r"\(\[Errno [^\]]*\][^)]*\)", str(c))
            return "name resolution failed" + (f" {errno.group(0)}" if errno else "")
    for c in chain:
        if isinstance(c, ConnectionRefusedError) or "Connection refused" in str(c):
            return "connection refused"
        if isinstance(c, urllib3.exceptions.NewConnectionError):  # unreachable network, no route to host, ...
            return str(c).split("Failed to establish a new connection: ", 1)[-1]
    for c in chain:
        if isinstance(c, (requests.exceptions.ConnectTimeout, urllib3.exceptions.ConnectTimeoutError)):
            return f"no answer within {connect_timeout:g} s (connect timeout)"
    return "" if strict else str(e)


def build_user_agent(contact: str) -> str:
    """Wikimedia's User-Agent shape: `<client>/<version> (<contact>) <library>/<version>`."""
    return f"{config.USER_AGENT_CLIENT} ({contact}) python-requests/{requests.__version__}"


_warned_default = False


def resolve_contact(flag: str | None = None) -> str:
    """The operator's contact: --contact, else $LANDMARK_CONTACT, else the project's page (warned once)."""
    global _warned_default
    value = (flag or os.environ.get(config.CONTACT_ENV) or "").strip() or config.CONTACT
    if not (_EMAIL.match(value) or _URL.match(value)):
        where = "--contact" if flag else f"${config.CONTACT_ENV}"
        raise UserError(f"{where} {value!r}: give an email address or an http(s) URL that you read (it goes into "
                        "the User-Agent, as Wikimedia's User-Agent policy asks)")
    if value == config.CONTACT and not _warned_default:
        _warned_default = True
        log.warning("no --contact or $%s: the User-Agent names the project's page, not you; Wikimedia limits "
                    "clients without an operator contact more strictly (e.g. --contact you@example.org)",
                    config.CONTACT_ENV)
    return value


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
