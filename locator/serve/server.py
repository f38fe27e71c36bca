"""serve.py's HTTP server: asyncio connections, h11 for HTTP/1.1, the endpoints of locator.serve.api in threads.

Why this stack: h11 parses strictly by construction (one request line and header block, ASCII digits in
Content-Length, a bounded head, a body always read or the connection closed before the next request, no second
request taken from a body), python-multipart parses forms without recursion, and asyncio makes a silent or
trickling client cost a few kB instead of a thread. The deadlines are ours, as no server library has them: a
whole request (head and body) must arrive within `receive_timeout` of its first byte (uvicorn and aiohttp only
time idle keep-alive connections, and a byte every few seconds resets those), and a keep-alive connection may
stay silent `idle_timeout` between requests.

The endpoints block (decode, waiting for the batcher), so each request runs in a worker thread; the batcher and
the model store know nothing of HTTP.
"""
import asyncio
import json
import logging
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import h11

from locator.core import config
from locator.serve.api import HTTPError, Limits, Service, cross_site
from locator.serve.modelstore import ModelStore

__all__ = ["Limits", "Server", "make_server"]

log = logging.getLogger("serve")

_MODEL_PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+))?"
                         r"(?P<verb>/metadata|:predict|:[^/]*)?$")
_LENGTH = re.compile(rb"\r\ncontent-length[ \t]*:[ \t]*([^\r\n]*)", re.I)
_READ = 65536


class _Close(Exception):
    """Answer this error, then close the connection (the rest of the request is not read)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class Server:
    """Bound at construction (an address in use fails here, not later); serve_forever() runs the event loop in
    the calling thread until shutdown() is called from another one (or Ctrl-C)."""

    def __init__(self, service: Service, host: str, port: int):
        self.service, self.limits = service, service.limits
        self.sock = socket.create_server((host, port), backlog=128)  # bursts wait in the kernel, not refused
        self.sock.setblocking(False)
        self.pool = ThreadPoolExecutor(self.limits.workers, thread_name_prefix="request")
        self.connections = 0       # open connections: the batcher waits for that many photos at most
        self._loop = self._stop = None
        self._done = threading.Event()

    @property
    def url(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"http://{host}:{port}"

    def serve_forever(self) -> None:
        self._done.clear()
        try:
            asyncio.run(self._main())
        finally:
            self._done.set()

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        server = await asyncio.start_server(self._connection, sock=self.sock, limit=_READ)
        async with server:
            await self._stop.wait()
        server.close()

    def shutdown(self) -> None:
        if self._loop is not None and not self._done.is_set():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._done.wait(10)

    def server_close(self) -> None:
        self.sock.close()
        self.pool.shutdown(wait=False, cancel_futures=True)

    # --- one connection ---
    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.connections >= self.limits.max_connections:
            writer.write(_raw_response(503, f"busy: {self.limits.max_connections} connections open; retry in "
                                            f"{self.limits.retry_after} s", self.limits.retry_after))
            await _close(writer)
            return
        self.connections += 1
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # small JSON answers, no Nagle wait
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=config.SERVE_MAX_HEADER)
        stopping = False
        try:
            while await self._one(conn, reader, writer):
                conn.start_next_cycle()
        except (ConnectionError, OSError, h11.LocalProtocolError):
            pass
        except asyncio.CancelledError:  # shutdown: end quietly (asyncio logs a handler that stays cancelled)
            stopping = True
        finally:
            self.connections -= 1
            if stopping:
                writer.close()
            else:
                await _close(writer)

    async def _one(self, conn: h11.Connection, reader, writer) -> bool:
        """One request and its answer; False when the connection is to be closed."""
        head = bytearray(conn.trailing_data[0])
        if not head:  # keep-alive: the next request may take idle_timeout to start
            try:
                data = await asyncio.wait_for(reader.read(_READ), self.limits.idle_timeout)
            except asyncio.TimeoutError:  # Python 3.10's is not the built-in TimeoutError
                return False
            if not data:
                return False
            head += data
            conn.receive_data(data)
        t0 = time.perf_counter()
        try:  # one deadline for head and body, from the first byte: a byte now and then does not extend it
            got = await asyncio.wait_for(self._receive(conn, reader, head, writer), self.limits.receive_timeout)
        except asyncio.TimeoutError:
            return await self._error(conn, writer, 408, f"timed out: the request did not arrive within "
                                                        f"{self.limits.receive_timeout:g} s", t0)
        except h11.RemoteProtocolError as e:
            return await self._error(conn, writer, e.error_status_hint, f"malformed request: {e}", t0)
        except _Close as e:
            return await self._error(conn, writer, e.status, e.message, t0)
        if got is None:
            return False
        req, body = got
        if req.method in (b"GET", b"HEAD"):  # status, metadata, the page: a lock and a dict, no thread hop
            status, headers, payload = self._route(req, body)
        else:  # decoding and the batcher block: a worker thread
            status, headers, payload = await self._loop.run_in_executor(self.pool, self._route, req, body)
        await self._send(conn, writer, req.method == b"HEAD", status, headers, payload)
        log.debug("%s %s -> %d in %.1f ms", req.method.decode(), req.target.decode("latin-1")[:200], status,
                  (time.perf_counter() - t0) * 1e3)
        return conn.our_state is h11.DONE and conn.their_state is h11.DONE

    async def _receive(self, conn, reader, head: bytearray, writer):
        """(request, body), or None when the client has gone before a request."""
        req = await self._event(conn, reader, head)
        if req is None:
            return None
        return req, await self._body(conn, reader, req, head, writer)

    async def _event(self, conn, reader, head: bytearray):
        """The next h11 event (reading as needed); None when the client has gone."""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(_READ)
                if head is not None and len(head) < 2 * config.SERVE_MAX_HEADER:
                    head += data
                conn.receive_data(data)  # b"": the client closed; h11 then says ConnectionClosed
                continue
            if isinstance(event, h11.ConnectionClosed):
                return None
            return event

    async def _body(self, conn, reader, req: h11.Request, head: bytearray, writer) -> bytes:
        """The whole body, read even where no route wants one (a body left unread would be taken for the next
        request: smuggling behind a proxy)."""
        lengths = _LENGTH.findall(bytes(head).split(b"\r\n\r\n", 1)[0])
        if len(lengths) > 1 or (lengths and b"," in lengths[0]):
            raise _Close(400, "more than one Content-Length: refused (request smuggling)")
        headers = dict(req.headers)
        if headers.get(b"transfer-encoding", b"identity").lower() != b"identity":
            raise _Close(411, "chunked bodies are not accepted; send a Content-Length")
        if req.method == b"POST" and b"content-length" not in headers:
            raise _Close(411, "a Content-Length header is required")
        n = int(headers.get(b"content-length", b"0"))  # h11 has checked it: ASCII digits, at most 20
        if n > self.limits.max_body:
            raise _Close(413, f"the body is {n:,} bytes; at most {self.limits.max_body:,} are accepted")
        if conn.they_are_waiting_for_100_continue:
            writer.write(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
        parts = []
        while True:
            event = await self._event(conn, reader, None)
            if event is None:
                raise ConnectionResetError("the client left mid-body")
            if isinstance(event, h11.Data):
                parts.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return b"".join(parts)

    async def _error(self, conn, writer, status: int, message: str, t0: float) -> bool:
        log.debug("refused with %d after %.1f ms: %s", status, (time.perf_counter() - t0) * 1e3, message)
        if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            try:
                await self._send(conn, writer, False, status, {"Connection": "close"},
                                 _json({"error": message}))
            except (h11.LocalProtocolError, ConnectionError, OSError):
                pass
        return False

    async def _send(self, conn, writer, head_only: bool, status: int, headers: dict, payload: bytes) -> None:
        headers = {"Content-Length": str(len(payload)), "Cache-Control": "no-store",
                   "Server": "LandmarkLocator", **headers}
        if "Content-Type" not in headers:
            headers["Content-Type"] = "application/json"
        out = conn.send(h11.Response(status_code=status, headers=list(headers.items())))
        if payload and not head_only:
            out += conn.send(h11.Data(data=payload))
        out += conn.send(h11.EndOfMessage())
        writer.write(out)
        await writer.drain()

    # --- routing (a worker thread) ---
    def _route(self, req: h11.Request, body: bytes) -> tuple:
        """(status, headers, payload bytes). A 500 means a bug here, logged with its traceback, never shown."""
        method, target = req.method.decode("ascii", "replace"), req.target.decode("latin-1")
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in req.headers}
        try:
            obj, status, extra = self._dispatch(method, urlsplit(target).path, headers, body)
        except HTTPError as e:
            obj, status, extra = {"error": e.message}, e.status, e.headers
        except Exception:  # noqa: BLE001 - a bug: logged in full, the client gets one generic line
            log.exception("%s %s failed", method, target[:200])
            obj, status, extra = {"error": "internal error; the server log has the details"}, 500, {}
        if isinstance(obj, bytes):
            return status, extra, obj
        return status, extra, _json(obj)

    def _dispatch(self, method: str, path: str, headers: dict, body: bytes) -> tuple:
        svc = self.service
        if method == "POST":
            why = cross_site(headers.get("origin"), headers.get("referer"), headers.get("host", ""),
                             self.limits.allowed_origins)
            if why:
                raise HTTPError(403, f"refused: this request comes from a page on another site ({why}); upload "
                                     "from this server's own page, or call the API without Origin/Referer")
        m = _MODEL_PATH.match(path)
        if path in ("/", "/index.html"):
            _only(method, "GET", "HEAD")
            return svc.page(), 200, {"Content-Type": "text/html; charset=utf-8"}
        if path == "/v1/locate":
            _only(method, "POST")
            answer, extra = svc.locate(body, headers.get("content-type", ""))
            return answer, 200, extra
        if m:
            name, version, verb = m["name"], m["version"], m["verb"]
            if verb == ":predict":
                _only(method, "POST")
                out, extra = svc.predict(name, version, body)
                return out, 200, extra
            if verb == "/metadata":
                _only(method, "GET")
                return svc.metadata(name, version), 200, {}
            if verb is None:
                _only(method, "GET")
                return svc.status(name, version), 200, {}
            raise HTTPError(404, f"Malformed request: {method} {path} (verbs: :predict, /metadata)")
        raise HTTPError(404, f"no such path {path!r}: see GET / for the upload page, /v1/locate, /v1/models/"
                             f"{svc.store.name}")


def _only(method: str, *methods) -> None:
    if method not in methods:
        raise HTTPError(405, f"{method} is not allowed here; use {' or '.join(methods)}",
                        {"Allow": ", ".join(methods)})


def _json(obj) -> bytes:
    return (json.dumps(obj, ensure_ascii=False, allow_nan=True) + "\n").encode("utf-8")


def _raw_response(status: int, message: str, retry_after: int) -> bytes:
    body = _json({"error": message})
    return (b"HTTP/1.1 %d Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: %d\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (status, retry_after, len(body), body))


async def _close(writer) -> None:
    try:
        writer.close()
        await asyncio.wait_for(writer.wait_closed(), 1)
    except (ConnectionError, OSError, asyncio.TimeoutError):
        pass


def make_server(store: ModelStore, host: str = config.SERVE_HOST, port: int = config.SERVE_PORT,
                limits: Limits | None = None, learn=None) -> Server:
    """A server bound to host:port (0 = any free port) around a started ModelStore; call serve_forever()."""
    service = Service(store, limits or Limits(), learn)
    server = Server(service, host, port)
    store.clients = lambda: server.connections
    return server
