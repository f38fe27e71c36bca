"""serve.py's HTTP service: TensorFlow Serving's REST API, the place endpoint and the upload page.

    GET  /v1/models/<name>[/versions/<v>]            version status       (TF Serving's GetModelStatus)
    GET  /v1/models/<name>[/versions/<v>]/metadata   signature defs       (GetModelMetadata)
    POST /v1/models/<name>[/versions/<v>]:predict    {"instances"|"inputs"} -> {"predictions"|"outputs"}
    POST /v1/locate                                  a photo (multipart or raw body) -> the place answer
    GET  /                                           the upload page

Standard library only (ThreadingHTTPServer): a thread per connection, HTTP/1.1 keep-alive. The model work goes
through a Batcher (locator.serve.batching) and a ModelStore (hot reload). Every error is `{"error": "..."}` with a 4xx
status when the request is at fault; a 500 means a bug here, logged with its traceback and never shown.
"""
import base64
import binascii
import email.parser
import email.policy
import html
import json
import logging
import re
import socket
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from locator.core import config, images
from locator.runs import export
from locator.serve.batching import QueueFull
from locator.serve.modelstore import ModelStore, VersionNotFound

log = logging.getLogger("serve")

PAGE = Path(__file__).with_name("upload_page.html")
_MODEL_PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+))?"
                         r"(?P<verb>/metadata|:predict|:[^/]*)?$")
# what /v1/locate accepts as a raw photo body; curl --data-binary sends x-www-form-urlencoded by default
_RAW_TYPES = ("image/", "application/octet-stream", "application/x-www-form-urlencoded")


class HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


@dataclass
class Limits:
    max_body: int = config.SERVE_MAX_BODY
    request_timeout: float = config.SERVE_REQUEST_TIMEOUT
    read_timeout: float = config.SERVE_READ_TIMEOUT
    max_connections: int = config.SERVE_MAX_CONNECTIONS
    retry_after: int = config.SERVE_RETRY_AFTER


class Service:
    """What the endpoints do, apart from HTTP plumbing. `learn(photo bytes, answer, file name) -> dict` keeps an
    upload for re-learning (predict.py's --learn code, locator.predict.learn.keep_upload) when given."""

    def __init__(self, store: ModelStore, limits: Limits, learn=None, nearby: int = config.NEARBY):
        self.store, self.limits, self.learn, self.nearby = store, limits, learn, nearby
        self._page = PAGE.read_text(encoding="utf-8")

    # --- TF Serving API ---
    def _check_name(self, name: str) -> None:
        if name != self.store.name:
            raise HTTPError(404, f"Servable not found for request: Latest({name})")

    @staticmethod
    def _version(text):
        if text is None:
            return None
        if not text.isdigit() or len(text) > 18:
            raise HTTPError(400, f"Malformed request: version {text!r} is not a whole number")
        return int(text)

    def status(self, name, version) -> dict:
        self._check_name(name)
        try:
            return {"model_version_status": self.store.status(self._version(version))}
        except VersionNotFound as e:
            raise HTTPError(404, str(e))

    def metadata(self, name, version) -> dict:
        self._check_name(name)
        with self._hold(self._version(version)) as loaded:
            return {"model_spec": {"name": name, "signature_name": "", "version": str(loaded.version)},
                    "metadata": {"signature_def": loaded.signature_defs}}

    def predict(self, name, version, body: bytes) -> tuple:
        """TF Serving's predict: row ("instances") or columnar ("inputs") in, same format out. Returns (answer,
        headers)."""
        self._check_name(name)
        req = _json_object(body)
        sig = req.get("signature_name", export.SIGNATURE)
        if sig not in (export.SIGNATURE, "") or not isinstance(sig, str):
            raise HTTPError(400, f"Serving signature name: {sig!r} not found in signature def "
                                 f"(this model has {export.SIGNATURE!r})")
        if ("instances" in req) == ("inputs" in req):
            raise HTTPError(400, 'the request must have exactly one of "instances" (row format) and '
                                 '"inputs" (columnar format)')
        row = "instances" in req
        with self._hold(self._version(version)) as loaded:
            x = _pixel_batch(req["instances"] if row else req["inputs"], row, loaded.predictor)
            with self._admit(loaded, len(x)) as slot:
                probs = self._wait(slot, x)
        return {"predictions" if row else "outputs": probs.tolist()}, _headers(loaded, slot)

    # --- place answer ---
    def locate(self, body: bytes, content_type: str) -> tuple:
        """The place answer for one photo, and the response headers."""
        photo, filename = _photo_from(body, content_type)
        with self._hold() as loaded:
            pred = loaded.predictor
            with self._admit(loaded, 1) as slot:
                x = _normalise(pred, photo)
                probs = self._wait(slot, x[None])
            answer = pred.answer(probs[0], nearby=self.nearby)
            answer["model"] = {"name": self.store.name, "version": loaded.version}
        if self.learn is not None:
            try:
                answer["learned"] = self.learn(photo, answer, filename)
            except OSError as e:  # disk full, permissions: the answer still stands; the operator must know
                log.error("--learn could not keep an upload: %s", e)
                answer["learned"] = {"kept": None, "why": "the server could not store it"}
        return answer, _headers(loaded, slot)

    def page(self) -> bytes:
        with self._hold() as loaded:
            version = loaded.version
        learn = ('<p class="learn" id="learn">Learning is on: photos recognised as one of our places are kept '
                 'to improve the model, and the others are kept for a person to label.</p>'
                 if self.learn is not None else "")
        return (self._page.replace("{{LEARN}}", learn)
                .replace("{{MODEL}}", html.escape(f"{self.store.name} version {version}"))
                .replace("{{NAME}}", html.escape(self.store.name))
                .replace("{{MAX_MB}}", f"{self.limits.max_body / 2**20:.3g}")).encode("utf-8")

    # --- model calls ---
    def _hold(self, version=None):
        try:
            return self.store.acquire(version)
        except VersionNotFound as e:
            raise HTTPError(404, str(e))

    def _admit(self, loaded, rows: int):
        try:
            return loaded.batcher.reserve(rows)
        except QueueFull as e:
            raise HTTPError(503, f"busy: {e}; retry in {self.limits.retry_after} s",
                            {"Retry-After": str(self.limits.retry_after)})

    def _wait(self, slot, x):
        try:
            return slot.run(x, self.limits.request_timeout)
        except TimeoutError:
            raise HTTPError(504, f"the model did not answer within {self.limits.request_timeout:g} s; "
                                 "the server is overloaded, try again later",
                            {"Retry-After": str(self.limits.retry_after)})


def _headers(loaded, slot) -> dict:
    """Which version answered, and how many photos shared its model call (batching at work)."""
    return {"X-Model-Version": str(loaded.version), "X-Batch-Size": str(slot.batch)}


# --- request bodies ---
def _json_object(body: bytes) -> dict:
    try:
        req = json.loads(body)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise HTTPError(400, f"the body is not valid JSON ({str(e)[:120]})")
    if not isinstance(req, dict):
        raise HTTPError(400, 'the body must be a JSON object: {"instances": [...]} or {"inputs": ...}')
    return req


def _pixel_batch(value, row: bool, pred) -> np.ndarray:
    """Instances/inputs -> uint8 (N, H, W, 3). Each item: a pixel array H x W x 3 of whole numbers 0..255, or
    {"b64": "<JPEG/PNG bytes>"} normalised like every other photo; in row format an item may also name the input
    ({"pixels": ...}); in columnar format the value may too ({"pixels": [...]})."""
    what = "instances" if row else "inputs"
    if isinstance(value, dict) and set(value) == {export.INPUT}:
        if row:
            raise HTTPError(400, f'"instances" must be a list; for a named input write '
                                 f'[{{"{export.INPUT}": ...}}, ...]')
        value, what = value[export.INPUT], f"inputs.{export.INPUT}"
    elif isinstance(value, dict):
        raise HTTPError(400, f'"{what}" names unknown inputs {sorted(value)[:5]}; this model has one input, '
                             f'"{export.INPUT}"')
    if not isinstance(value, list) or not value:
        raise HTTPError(400, f'"{what}" must be a non-empty list of images')
    size = pred.size
    out = np.empty((len(value), size, size, 3), np.uint8)
    for i, item in enumerate(value):
        if row and isinstance(item, dict) and set(item) == {export.INPUT}:
            item = item[export.INPUT]
        if isinstance(item, dict):
            if set(item) != {"b64"} or not isinstance(item["b64"], str):
                raise HTTPError(400, f'{what}[{i}]: an object must be {{"b64": "<base64 image bytes>"}}')
            try:
                data = base64.b64decode(item["b64"], validate=True)
            except (binascii.Error, ValueError):
                raise HTTPError(400, f"{what}[{i}]: b64 is not valid base64")
            out[i] = _normalise(pred, data, f"{what}[{i}]: ")
        else:
            out[i] = _pixels(item, size, f"{what}[{i}]")
    return out


def _pixels(item, size: int, where: str) -> np.ndarray:
    try:
        a = np.asarray(item)
    except (ValueError, TypeError, RecursionError):  # ragged nesting
        a = None
    want = f"{size} x {size} x 3"
    if a is None or a.dtype == object or a.shape != (size, size, 3):
        shape = "ragged lists" if a is None or a.dtype == object else \
            "shape " + " x ".join(map(str, a.shape)) if a.shape else "a single value"
        raise HTTPError(400, f"{where}: expected {want} pixels (whole numbers 0..255) or {{\"b64\": ...}}, "
                             f"got {shape}")
    if a.dtype.kind not in "iuf":
        raise HTTPError(400, f"{where}: pixels must be numbers 0..255, got {a.dtype.name} values")
    if a.dtype.kind == "f" and not (np.isfinite(a).all() and (a == np.round(a)).all()):
        raise HTTPError(400, f"{where}: pixels must be whole numbers 0..255 (uint8), got fractions or NaN")
    if a.size and (a.min() < 0 or a.max() > 255):
        raise HTTPError(400, f"{where}: pixels must be within 0..255 (uint8), got {a.min():g}..{a.max():g}")
    return a.astype(np.uint8)


def _normalise(pred, data: bytes, where: str = "") -> np.ndarray:
    try:
        return pred.pixels(data)
    except images.ImageRejected as e:
        raise HTTPError(400, f"{where}not a usable photo ({e.reason}{': ' + e.detail if e.detail else ''}); "
                             "send a JPEG, PNG, GIF, BMP, WebP or TIFF photo")


def _photo_from(body: bytes, content_type: str) -> bytes:
    """(photo bytes, file name) of a /v1/locate request: the first file of a multipart form, or the raw body."""
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + content_type.encode("latin-1", "replace") + b"\r\n\r\n" + body)
        if not msg.is_multipart():
            raise HTTPError(400, "malformed multipart body (boundary missing or wrong)")
        parts = [p for p in msg.iter_parts() if p.get_filename() or p.get_param("name", header="content-disposition")
                 in ("photo", "image", "file")]
        if not parts:
            raise HTTPError(400, "no file in the form; send the photo as a file field, e.g. curl -F photo=@x.jpg")
        data = parts[0].get_payload(decode=True) or b""
        name = parts[0].get_filename() or "upload"
    elif ctype.startswith(_RAW_TYPES):
        data, name = body, "upload"
    else:
        raise HTTPError(415, f"unsupported content type {ctype or '(none)'!r}: send the photo as the body "
                             "(Content-Type image/jpeg, image/png, ...) or as a multipart/form-data file")
    if not data:
        raise HTTPError(400, "no photo: the body is empty")
    return data, name


# --- HTTP ---
class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"          # keep-alive: a client's next request skips the TCP handshake
    default_request_version = "HTTP/1.0"   # a garbled request line still gets a status line and JSON, not 0.9
    server_version = "LandmarkLocator"
    sys_version = ""
    service: Service                       # set on the subclass made by make_server

    def setup(self):
        super().setup()
        self.connection.settimeout(self.service.limits.read_timeout)  # a silent client cannot hold a thread
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # small JSON answers, no Nagle wait

    # Every method name lands here: GET and POST are routed, anything else is a 405, never http.server's 501.
    def __getattr__(self, name):
        if name.startswith("do_"):
            return self._dispatch
        raise AttributeError(name)

    def _dispatch(self):
        t0 = time.perf_counter()
        status, headers = 500, {}
        try:
            obj, status, headers = self._route()
        except HTTPError as e:
            obj, status, headers = {"error": e.message}, e.status, e.headers
        except (socket.timeout, TimeoutError):
            obj, status = {"error": f"timed out reading the request ({self.service.limits.read_timeout:g} s)"}, 408
            self.close_connection = True
        except (ConnectionError, BrokenPipeError):
            self.close_connection = True
            return
        except Exception:  # noqa: BLE001 - a bug: logged in full, the client gets one generic line
            log.exception("%s %s failed", self.command, self.path)
            obj, status = {"error": "internal error; the server log has the details"}, 500
        try:
            self._send(status, obj, headers)
        except (ConnectionError, BrokenPipeError, socket.timeout, TimeoutError):
            self.close_connection = True
        log.debug("%s %s -> %d in %.1f ms", self.command, self.path, status, (time.perf_counter() - t0) * 1e3)

    def _route(self):
        path = urlsplit(self.path).path
        svc = self.service
        method = self.command
        m = _MODEL_PATH.match(path)
        if path in ("/", "/index.html"):
            self._only("GET", "HEAD")
            return svc.page(), 200, {"Content-Type": "text/html; charset=utf-8"}
        if path == "/v1/locate":
            self._only("POST")
            answer, headers = svc.locate(self._body(), self.headers.get("Content-Type", ""))
            return answer, 200, headers
        if m:
            name, version, verb = m["name"], m["version"], m["verb"]
            if verb == ":predict":
                self._only("POST")
                out, headers = svc.predict(name, version, self._body())
                return out, 200, headers
            if verb == "/metadata":
                self._only("GET")
                return svc.metadata(name, version), 200, {}
            if verb is None:
                self._only("GET")
                return svc.status(name, version), 200, {}
            raise HTTPError(404, f"Malformed request: {method} {path} (verbs: :predict, /metadata)")
        raise HTTPError(404, f"no such path {path!r}: see GET / for the upload page, /v1/locate, /v1/models/"
                             f"{svc.store.name}")

    def _only(self, *methods):
        if self.command not in methods:
            self.close_connection = True  # a body we will not read may follow
            raise HTTPError(405, f"{self.command} is not allowed here; use {' or '.join(methods)}",
                            {"Allow": ", ".join(methods)})

    def _body(self) -> bytes:
        """The request body, within the size limit. Errors before it is read close the connection (the unread
        bytes would otherwise be taken for the next request)."""
        if self.headers.get("Transfer-Encoding", "").lower() not in ("", "identity"):
            self.close_connection = True
            raise HTTPError(411, "chunked bodies are not accepted; send a Content-Length")
        length = self.headers.get("Content-Length")
        if length is None:
            self.close_connection = True
            raise HTTPError(411, "a Content-Length header is required")
        if not length.strip().isdigit():
            self.close_connection = True
            raise HTTPError(400, f"bad Content-Length {length[:40]!r}")
        n = int(length)
        limit = self.service.limits.max_body
        if n > limit:
            self.close_connection = True
            raise HTTPError(413, f"the body is {n:,} bytes; at most {limit:,} are accepted")
        data = self.rfile.read(n)
        if len(data) < n:
            self.close_connection = True
            raise HTTPError(400, f"the body ended after {len(data):,} of {n:,} bytes")
        return data

    def handle_expect_100(self):
        """curl asks before sending a large body: refuse an oversized one before it is sent."""
        length = self.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > self.service.limits.max_body:
            self.close_connection = True
            self._send(413, {"error": f"the body is {int(length):,} bytes; at most "
                                      f"{self.service.limits.max_body:,} are accepted"}, {})
            return False
        return super().handle_expect_100()

    def _send(self, status: int, obj, headers: dict) -> None:
        if isinstance(obj, bytes):
            body = obj
        else:
            body = (json.dumps(obj, ensure_ascii=False, allow_nan=True) + "\n").encode("utf-8")
            headers = {"Content-Type": "application/json", **headers}
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_error(self, code, message=None, explain=None):
        """http.server's own errors (bad request line, header too long) in our JSON shape."""
        self.close_connection = True
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "error"
        status = 400 if code >= 500 else code  # 501/505 from the parser: the request was at fault
        if not hasattr(self, "command") or self.command is None:
            self.command = "GET"
        try:
            self._send(status, {"error": f"{phrase}: {message or explain or ''}".rstrip(": ")}, {})
        except OSError:
            pass

    def version_string(self):
        return self.server_version

    def log_message(self, fmt, *args):
        log.debug("%s %s", self.address_string(), fmt % args)


class Server(ThreadingHTTPServer):
    daemon_threads = True       # a stuck client never blocks shutdown
    request_queue_size = 128    # listen backlog: bursts wait in the kernel, not refused

    def __init__(self, address, handler, max_connections: int, retry_after: int):
        super().__init__(address, handler)
        self.max_connections, self.retry_after = max_connections, retry_after
        self._active = 0
        self._active_lock = threading.Lock()

    def process_request(self, request, client_address):
        with self._active_lock:
            busy = self._active >= self.max_connections
            if not busy:
                self._active += 1
        if busy:  # every connection costs a thread: past the cap, answer 503 at once and close
            body = json.dumps({"error": f"busy: {self.max_connections} connections open; retry in "
                                        f"{self.retry_after} s"}).encode()
            try:
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                                b"Retry-After: %d\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                                % (self.retry_after, len(body), body))
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._active_lock:
                self._active -= 1

    @property
    def connections(self) -> int:
        """Open connections (keep-alive clients included): the batcher waits for that many photos at most."""
        return self._active

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


def make_server(store: ModelStore, host: str = config.SERVE_HOST, port: int = config.SERVE_PORT,
                limits: Limits | None = None,
                learn=None) -> Server:
    """A server bound to host:port (0 = any free port) around a started ModelStore; call serve_forever()."""
    limits = limits or Limits()
    service = Service(store, limits, learn)
    handler = type("BoundHandler", (Handler,), {"service": service})
    server = Server((host, port), handler, limits.max_connections, limits.retry_after)
    store.clients = lambda: server.connections
    return server
