"""What serve.py's endpoints do, apart from HTTP: TensorFlow Serving's REST API in its JSON shape, the place
endpoint and the upload page.

    GET  /v1/models/<name>[/versions/<v>]            version status       (TF Serving's GetModelStatus)
    GET  /v1/models/<name>[/versions/<v>]/metadata   signature defs       (GetModelMetadata)
    POST /v1/models/<name>[/versions/<v>]:predict    {"instances"|"inputs"} -> {"predictions"|"outputs"}
    POST /v1/locate                                  a photo (multipart or raw body) -> the place answer
    GET  /                                           the upload page

Every error is an HTTPError, answered as TF Serving does: `{"error": "..."}` with a 4xx status when the request
is at fault. The methods block (decode, the batcher) and run in the HTTP server's worker threads.
"""
import base64
import binascii
import html
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from locator.core import config, images
from locator.runs import export
from locator.serve.backend import BackendError
from locator.serve.batching import QueueFull
from locator.serve.modelstore import ModelStore, VersionNotFound

log = logging.getLogger("serve")

PAGE = Path(__file__).with_name("upload_page.html")
# what /v1/locate accepts as a raw photo body; curl --data-binary sends x-www-form-urlencoded by default
_RAW_TYPES = ("image/", "application/octet-stream", "application/x-www-form-urlencoded")


class HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


@dataclass
class Limits:
    max_body: int = config.SERVE_MAX_BODY
    max_batch_size: int = config.SERVE_MAX_BATCH_SIZE   # instances a request (TF Serving's max_batch_size)
    request_timeout: float = config.SERVE_REQUEST_TIMEOUT
    receive_timeout: float = config.SERVE_RECEIVE_TIMEOUT  # a whole request, head and body
    idle_timeout: float = config.SERVE_IDLE_TIMEOUT
    max_connections: int = config.SERVE_MAX_CONNECTIONS
    workers: int = config.SERVE_WORKERS
    retry_after: int = config.SERVE_RETRY_AFTER
    allowed_origins: tuple = ()   # scheme://host[:port] besides the server's own that may post (a proxy's name)


class Service:
    """`learn(photo bytes, answer, file name) -> dict` keeps an upload for re-learning (predict.py's --learn
    code, locator.predict.learn.Learner) when given. Its outcome is the answer's "learned" field; a photo it
    cannot keep (a duplicate, a full quota, a disk error) is said so there, and the answer stays a 200."""

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
        if not export.is_version(text):
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
        if not isinstance(sig, str) or sig not in (export.SIGNATURE, ""):
            raise HTTPError(400, f"Serving signature name: {sig!r} not found in signature def "
                                 f"(this model has {export.SIGNATURE!r})")
        if ("instances" in req) == ("inputs" in req):
            raise HTTPError(400, 'the request must have exactly one of "instances" (row format) and '
                                 '"inputs" (columnar format)')
        row = "instances" in req
        with self._hold(self._version(version)) as loaded:
            items = _items(req["instances"] if row else req["inputs"], row)
            if len(items[0]) > self.limits.max_batch_size:  # before a byte is decoded or an array allocated
                raise HTTPError(400, f"Task size {len(items[0])} is larger than maximum input batch size "
                                     f"{self.limits.max_batch_size}")
            with self._admit(loaded, len(items[0])) as slot:
                x = _pixel_batch(*items, loaded.predictor)
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
        except BackendError as e:
            raise HTTPError(502, str(e), {"Retry-After": str(self.limits.retry_after)})


def _headers(loaded, slot) -> dict:
    """Which version answered, and how many photos shared its model call (batching at work)."""
    return {"X-Model-Version": str(loaded.version), "X-Batch-Size": str(slot.batch)}


def cross_site(origin: str | None, referer: str | None, host: str, allowed=()) -> str | None:
    """Why a POST comes from a page of another site (a form anywhere on the web can post to us), or None.
    Browsers send Origin (or at least Referer) with a form or fetch POST; API clients (curl, requests) send
    neither and are let through. The page's own origin has our Host."""
    for header, value in (("Origin", origin), ("Referer", referer)):
        if value is None:
            continue
        parts = urlsplit(value)
        own = f"{parts.scheme}://{parts.netloc}"
        if value == "null" or (parts.netloc.lower() != host.lower() and own not in allowed):
            return f"{header} {value[:80]!r} is not this server ({host})"
        return None  # Origin decides when present; Referer only without it
    return None


# --- request bodies ---
def _json_object(body: bytes) -> dict:
    try:
        req = json.loads(body)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise HTTPError(400, f"the body is not valid JSON ({str(e)[:120]})")
    if not isinstance(req, dict):
        raise HTTPError(400, 'the body must be a JSON object: {"instances": [...]} or {"inputs": ...}')
    return req


def _items(value, row: bool) -> tuple:
    """(list of items, where) of instances/inputs; a named input is unwrapped."""
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
    return value, what, row


def _pixel_batch(value: list, what: str, row: bool, pred) -> np.ndarray:
    """Items -> uint8 (N, H, W, 3). Each item: a pixel array H x W x 3 of whole numbers 0..255, or
    {"b64": "<JPEG/PNG bytes>"} normalised like every other photo; in row format an item may also name the input
    ({"pixels": ...}). The caller has bounded N (max_batch_size)."""
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


def _photo_from(body: bytes, content_type: str) -> tuple:
    """(photo bytes, file name) of a /v1/locate request: the first file of a multipart form, or the raw body."""
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        data, name = _form_file(body, content_type)
    elif ctype.startswith(_RAW_TYPES):
        data, name = body, "upload"
    else:
        raise HTTPError(415, f"unsupported content type {ctype or '(none)'!r}: send the photo as the body "
                             "(Content-Type image/jpeg, image/png, ...) or as a multipart/form-data file")
    if not data:
        raise HTTPError(400, "no photo: the body is empty")
    return data, name


def _form_file(body: bytes, content_type: str) -> tuple:
    """The first file field (or a field named photo/image/file) of a multipart/form-data body, by
    python-multipart's streaming parser: flat by construction (a nested multipart part is just bytes, no
    recursion), parts and part headers bounded."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary or len(boundary) > 70:
        raise HTTPError(400, "malformed multipart body (boundary missing or wrong)")
    parts, cur = [], {}

    def begin():
        if len(parts) >= config.SERVE_MAX_PARTS:
            raise HTTPError(400, f"more than {config.SERVE_MAX_PARTS} parts in the form")
        cur.update(headers={}, field=b"", value=b"", data=[])

    def field(d, s, e):
        cur["field"] += d[s:e]

    def value(d, s, e):
        cur["value"] += d[s:e]

    def header_end():
        cur["headers"][cur["field"].lower()] = cur["value"]
        cur["field"] = cur["value"] = b""

    def end():
        parts.append((cur["headers"], b"".join(cur["data"])))

    parser = MultipartParser(boundary, {"on_part_begin": begin, "on_header_field": field,
                                        "on_header_value": value, "on_header_end": header_end,
                                        "on_part_data": lambda d, s, e: cur["data"].append(d[s:e]),
                                        "on_part_end": end})
    try:
        parser.write(body)
        parser.finalize()
    except FormParserError as e:
        if not parts:
            raise HTTPError(400, f"malformed multipart body (boundary missing or wrong: {str(e)[:80]})")
    for headers, data in parts:
        _, disp = parse_options_header(headers.get(b"content-disposition", b""))
        filename, name = disp.get(b"filename"), disp.get(b"name")
        if filename is not None or name in (b"photo", b"image", b"file"):
            return data, (filename or b"upload").decode("utf-8", "replace") or "upload"
    raise HTTPError(400, "no file in the form; send the photo as a file field, e.g. curl -F photo=@x.jpg")
