"""Where every request begins and ends: body limit, in-flight counting and request metrics.

Tornado builds a handler only once the whole body has arrived, and its own `max_body_size`
answers 400 and drops the connection. `GuardedApplication` wraps each request's delegate so that

- the request counts as in flight from the moment its headers arrive (graceful shutdown waits
  for half-received bodies too), until it ends, exactly once, in one of three ways:
  its handler finishes (any handler class: Tornado's `RequestHandler.finish` calls
  `Application.log_request`, where the request is also counted and timed in the metrics, by
  handler class), the guard answers 413 itself, or the connection closes before the whole
  body arrived;
- a body whose declared `Content-Length` exceeds `MAX_BODY_SIZE` is answered 413 at once, before
  any of it is read, and so is a chunked body as soon as it grows past the limit.
- a request whose headers have not fully arrived `header_timeout` seconds (the application's
  setting, `HEADER_TIMEOUT` by default) after the server began waiting for them, or whose body
  has not fully arrived `BODY_TIMEOUT` seconds after its headers, or whose body has made no
  progress (not one byte) for `BODY_IDLE_TIMEOUT` seconds, gets the connection closed (a
  slow client cannot hold a connection open by trickling its request, nor a stalled one pin
  its half body for a minute; an idle keep-alive connection waits for its next request's
  headers): within the timeout plus at most a quarter of it (and at most 1 s), by one
  periodic sweep over the waiting requests (`Deadlines`), not a timer per request;
- the bytes of unfinished bodies held in the process (received, not yet handed to a handler)
  are bounded by `MAX_BUFFERED_BYTES` (`BufferBudget`): a body that would take them past it
  (by its declared `Content-Length`, or by the chunk that arrives) is answered 503 with
  `Retry-After` and its connection closed; the sender (Stripe) retries, nothing is lost, and
  the process's memory for bodies stays bounded whatever `MAX_CONNECTIONS` is.
The 413 and 503 answers are the same JSON error every handler gives, with CORS when the
handler the path routes to has `cors` set (asked only when refusing, so a request that fits
pays nothing).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import tornado.web
from tornado import httputil

from service.base import (
    CORS_ANY_ORIGIN,
    CORS_HEADER,
    ERROR_CODES,
    JSON_CONTENT_TYPE,
    error_body,
)
from service.connections import HEADER_TIMEOUT
from service.internals import connection_open
from service.lean import LeanRoutes
from service.metrics import Metrics
from service.tracker import RequestTracker

BODY_TIMEOUT = 60.0
#: A body that makes no progress for this long is cut (a slow one that progresses may take up
#: to BODY_TIMEOUT): 10 s, as long as the header timeout; a client that cannot send one byte of
#: its body in 10 s is not sending it.
BODY_IDLE_TIMEOUT = 10.0
#: Seconds a 503 for a full buffer budget asks the sender to wait before retrying.
RETRY_AFTER = 5

_REASONS = {413: "Content Too Large", 503: "Service Unavailable"}


def _refusal(status: int, message: str, cors: bool) -> tuple[httputil.ResponseStartLine,
                                                             httputil.HTTPHeaders, bytes]:
    body = error_body(ERROR_CODES[status], message)
    headers = httputil.HTTPHeaders({"Content-Type": JSON_CONTENT_TYPE,
                                    "Content-Length": str(len(body)), "Connection": "close",
                                    "Cache-Control": "no-store"})
    if status == 503:
        headers["Retry-After"] = str(RETRY_AFTER)
    if cors:
        headers[CORS_HEADER] = CORS_ANY_ORIGIN
    return httputil.ResponseStartLine("HTTP/1.1", status, _REASONS[status]), headers, body


class BufferBudget:
    """The bytes of unfinished request bodies held in this process, against `limit`
    (`MAX_BUFFERED_BYTES`): each request takes what it receives and gives it all back once,
    when its body is handed on whole, refused, or its connection closes."""

    __slots__ = ("limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def fits(self, size: int) -> bool:
        return self.used + size <= self.limit


class Deadlines:
    """The requests waiting for their headers or their body, each with its deadline, and one
    timer that sweeps them: a request costs a dict operation or two instead of a loop timer
    (and, for its headers, two futures) of its own. The timer runs only while some request is
    waiting; each sweep closes the connections whose deadline has passed, and forgets those
    closed meanwhile (a connection closed while waiting for headers tells no delegate)."""

    def __init__(self, header_timeout: float = HEADER_TIMEOUT) -> None:
        if not header_timeout > 0:
            raise ValueError(f"header_timeout must be more than 0 seconds, not {header_timeout}")
        self.header_timeout = header_timeout
        self._due: dict[_Guard, float] = {}
        #: the requests waiting for a body: the bytes it had at the last sweep that saw it
        #: grow, and when
        self._bodies: dict[_Guard, tuple[int, float]] = {}
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._due)

    def wait(self, guard: _Guard, seconds: float) -> None:
        """Close `guard`'s connection unless `discard` is called within `seconds`."""
        self._due[guard] = time.monotonic() + seconds
        if self._timer is None:
            self._schedule()

    def wait_body(self, guard: _Guard) -> None:
        """Close `guard`'s connection unless its body arrives whole within `BODY_TIMEOUT`,
        and making progress at least every `BODY_IDLE_TIMEOUT` seconds."""
        now = time.monotonic()
        self._bodies[guard] = (guard.received, now)
        self._due[guard] = now + BODY_TIMEOUT
        if self._timer is None:
            self._schedule()

    def discard(self, guard: _Guard) -> None:
        self._due.pop(guard, None)
        if self._bodies:
            self._bodies.pop(guard, None)

    def _schedule(self) -> None:
        every = min(1.0, self.header_timeout / 4, BODY_TIMEOUT / 4, BODY_IDLE_TIMEOUT / 4)
        self._timer = asyncio.get_running_loop().call_later(every, self._sweep)

    def _sweep(self) -> None:
        self._timer = None
        now = time.monotonic()
        ended = []
        bodies = self._bodies
        for guard, due in self._due.items():
            if due <= now or not connection_open(guard.conn):
                ended.append(guard)
            elif guard in bodies:
                seen, since = bodies[guard]
                if guard.received != seen:
                    bodies[guard] = (guard.received, now)
                elif now - since >= BODY_IDLE_TIMEOUT:
                    ended.append(guard)
        for guard in ended:
            del self._due[guard]
            bodies.pop(guard, None)
            guard.conn.close()  # type: ignore[attr-defined]
        if self._due:
            self._schedule()


class _Guard(httputil.HTTPMessageDelegate):
    __slots__ = ("app", "inner", "conn", "limit", "received", "held", "refused", "start_line",
                 "headers")

    def __init__(self, app: GuardedApplication, inner: httputil.HTTPMessageDelegate,
                 conn: httputil.HTTPConnection) -> None:
        self.app, self.inner, self.conn = app, inner, conn
        self.limit = app.settings["config"].max_body_size
        self.received = 0
        #: bytes of this body counted in the application's `BufferBudget`
        self.held = 0
        self.refused = False
        self.start_line: Any = None
        self.headers: httputil.HTTPHeaders | None = None
        # Waiting for the headers; Tornado also starts a request on a connection that has just
        # closed (after a `Connection: close` answer), which needs no deadline.
        if connection_open(conn):
            app.deadlines.wait(self, app.deadlines.header_timeout)

    def headers_received(self, start_line: Any, headers: httputil.HTTPHeaders) -> Any:
        self.app.tracker.begin(self.conn)
        self.start_line, self.headers = start_line, headers
        declared = headers.get("Content-Length")
        # ASCII digits only ("\xb2" passes str.isdigit, not int): Tornado answers 400 to the rest
        if declared is not None and declared.isascii() and declared.isdigit():
            size = int(declared)
            if size > self.limit:
                self.app.deadlines.discard(self)
                self._refuse(413)
                return None
        else:
            size = 0
        if declared not in (None, "0") or "Transfer-Encoding" in headers:
            if not self.app.buffers.fits(size):
                self.app.deadlines.discard(self)
                self._refuse(503)
                return None
            self.app.deadlines.wait_body(self)  # now waiting for the body
        else:
            self.app.deadlines.discard(self)
        lean = self.app.lean
        if lean is not None:
            delegate = lean.delegate(self.conn, start_line, self.inner)
            if delegate is not None:
                self.inner = delegate
        return self.inner.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Any:
        if self.refused:
            return None
        size = len(chunk)
        self.received += size
        if self.received > self.limit:
            self._refuse(413)
            return None
        buffers = self.app.buffers
        if buffers.used + size > buffers.limit:
            self._refuse(503)
            return None
        buffers.used += size
        self.held += size
        return self.inner.data_received(chunk)

    def finish(self) -> None:
        self.app.deadlines.discard(self)
        if self.held:
            self._release()
        if not self.refused:
            self.inner.finish()

    def on_connection_close(self) -> None:
        self.app.deadlines.discard(self)
        if self.held:
            self._release()
        if not self.refused:  # a refused request has ended already
            self.app.tracker.end(self.conn)
        self.inner.on_connection_close()

    def _release(self) -> None:
        self.app.buffers.used -= self.held
        self.held = 0

    def _refuse(self, status: int) -> None:
        self.refused = True
        if self.held:
            self._release()
        cors = self.app.route_has_cors(self.start_line, self.headers)
        if status == 413:
            message, handler = f"request body over {self.limit} bytes", "BodyLimit"
        else:
            message, handler = ("the server is receiving too many request bodies at once; "
                                "please retry"), "BufferLimit"
        start, headers, body = _refusal(status, message, cors)
        # Read the rest of this body (if any) without storing it, until the connection closes
        # right after this answer is written.
        self.conn.set_max_body_size(1 << 62)  # type: ignore[attr-defined]
        self.conn.write_headers(start, headers, body)
        self.conn.finish()
        self.app.end_request(self.conn, handler, "", status, 0.0)


class GuardedApplication(tornado.web.Application):
    """A Tornado application whose settings hold `tracker` and `metrics` (see `make_app`), and
    perhaps `header_timeout` (seconds; `HEADER_TIMEOUT` by default)."""

    def __init__(self, handlers: list[Any], **settings: Any) -> None:
        super().__init__(handlers, **settings)
        self.tracker: RequestTracker = self.settings["tracker"]
        self.metrics: Metrics = self.settings["metrics"]
        self.deadlines = Deadlines(self.settings.get("header_timeout", HEADER_TIMEOUT))
        self.buffers = BufferBudget(self.settings["config"].max_buffered_bytes)
        #: POSTs to `lean` handlers (signed reads, `/webhooks`) skip the handler machinery
        #: (`service/lean.py`); the `lean_path=False` setting turns that off.
        #: (Its handlers are checked either way: one the lean path would serve differently
        #: is refused, `LeanHandlerError`.)
        lean = LeanRoutes.from_routes(self, handlers)
        self.lean = lean if self.settings.get("lean_path", True) else None

    def end_request(self, conn: object, handler: str, method: str, status: int,
                    seconds: float) -> None:
        """The request on `conn` is answered: no longer in flight, counted and timed."""
        self.tracker.end(conn)
        self.metrics.observe_request(handler, method, status, seconds)

    def route_has_cors(self, start_line: Any, headers: httputil.HTTPHeaders | None) -> bool:
        """Whether the handler this request routes to answers with CORS (its `cors` flag)."""
        try:
            request = httputil.HTTPServerRequest(start_line=start_line, headers=headers)
        except httputil.HTTPInputError:  # e.g. no Host: routing needs one
            return False
        target = getattr(self.find_handler(request), "handler_class", None)
        return bool(getattr(target, "cors", False))

    def routes_to(self, path: str, method: str = "POST") -> type | None:
        """The handler class this application routes `method path` to."""
        request = httputil.HTTPServerRequest(
            start_line=httputil.RequestStartLine(method, path, "HTTP/1.1"),
            headers=httputil.HTTPHeaders({"Host": "localhost"}))
        return getattr(self.find_handler(request), "handler_class", None)

    def log_request(self, handler: tornado.web.RequestHandler) -> None:
        # Tornado's hook for every finished handler, whatever its class (the `log_function`
        # setting is the other way to reach it); access lines are left to the metrics.
        request = handler.request
        self.end_request(request.connection, type(handler).__name__, request.method or "",
                         handler.get_status(), request.request_time())

    def start_request(self, server_conn: object,
                      request_conn: httputil.HTTPConnection) -> httputil.HTTPMessageDelegate:
        return _Guard(self, super().start_request(server_conn, request_conn), request_conn)
