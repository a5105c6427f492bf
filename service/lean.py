"""The lean path: a POST answered by a message delegate, without Tornado's per-request handler
machinery (handler construction, `_execute`'s task, `finish`/`flush`).

    routes = LeanRoutes.from_routes(app, handlers)      # in GuardedApplication
    delegate = routes.delegate(start_line, fallback)    # None: not a lean route

Only handlers with `lean = True` are routed here, by exact path, for `POST` only; HEAD, OPTIONS,
other methods, a query string, and any path with arguments go the full way. The lean delegate
runs the handler's own code: it makes the handler object without `RequestHandler.__init__` (its
`application` and an `HTTPServerRequest` (a `LeanRequest`) set, so the shared accessors,
`self.request` and `self.settings` work), runs the coroutine that computes the answer's JSON
value (the handler's `lean_answer()`, or for a signed handler without one the same
`handle(signed_request())` its `post` runs), and writes the same headers the full path writes
(JSON type, `nosniff`, `no-store`, CORS when the handler has `cors`, `Date`). When Tornado
keeps the connection open (HTTP/1.1 without `Connection: close`: then it adds no header of its
own), that head is written pre-rendered with the body in one `HTTPConnection.write`, instead of
through `write_headers`, which costs about a tenth of a request (77,000 instructions); else
`write_headers` writes it, with Tornado's `Connection` line.

Two kinds of lean handlers:

- `lean_awaits = False` (signed reads from memory, `service/signed.py`): the coroutine must
  answer without awaiting. Anything but success (a check fails, it raises, or it awaits after
  all) is answered by the full path: the request is replayed, unchanged, into the
  `Application`'s own delegate (`fallback`), which verifies again and answers as it always
  does. These handlers only read, so a replay changes nothing.
- `lean_awaits = True` (`POST /webhooks`, which awaits its insert): the coroutine is driven on
  the futures it awaits (no task: each asyncio future it yields wakes it through a done
  callback), and the request stays in flight meanwhile. When it raises, the request is replayed
  into the full path with that exception recorded (`take_failure`): the handler's `post`
  raises it again, unrun, so the error answer, its log line and its metrics are the full
  path's own, and nothing the coroutine did (a counted rejection, a stored event) happens
  twice.

The request still begins and ends in `service/guard.py` (in-flight count, metrics by handler
class), and keep-alive, `Expect: 100-continue`, the body limit and timeouts are the
connection's and the guard's, as for every request.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, cast

from tornado import httputil
from tornado.httputil import _ABNF  # the Host rule HTTPServerRequest checks

from service.base import CORS_ANY_ORIGIN, CORS_HEADER, JSON_CONTENT_TYPE, BaseHandler, json_dumps

if TYPE_CHECKING:
    from service.guard import GuardedApplication

log = logging.getLogger("app.http")

#: A path pattern with no regular-expression syntax in it: it matches only itself.
_LITERAL = re.compile(r"/[A-Za-z0-9/_-]*")

_OK = httputil.ResponseStartLine("HTTP/1.1", 200, "OK")


@functools.lru_cache(maxsize=256)
def _host_name(host: str) -> str | None:
    """The host name in a `Host` value (`HTTPServerRequest.host_name`), or None when Tornado
    would refuse the value; remembered per distinct value."""
    if not _ABNF.host.fullmatch(host) or "," in host:
        return None
    return httputil.split_host_and_port(host.lower())[0]


class LeanRequest(httputil.HTTPServerRequest):
    """What a lean handler sees as `self.request`: the `HTTPServerRequest` Tornado would make
    (every attribute its constructor sets, the same `HTTPInputError` for a missing or invalid
    Host), for a POST whose target has no query string, the only kind routed here: so its
    arguments are empty, without parsing and deep-copying an empty query; and the Host is
    checked once per distinct value. `tests/test_lean.py` compares the two."""

    def __init__(self, connection: httputil.HTTPConnection,
                 start_line: httputil.RequestStartLine, headers: httputil.HTTPHeaders,
                 body: bytes) -> None:
        self.method, self.uri, self.version = start_line
        self.headers = headers
        self.body = body
        context = getattr(connection, "context", None)
        self.remote_ip = getattr(context, "remote_ip", None)
        self.protocol = getattr(context, "protocol", "http")
        host = headers.get("Host")
        if host is None:
            if self.version != "HTTP/1.0":
                raise httputil.HTTPInputError("Missing Host header")
            host = "127.0.0.1"
        name = _host_name(host)
        if name is None:
            raise httputil.HTTPInputError(f"Invalid Host header: {host!r}")
        self.host, self.host_name = host, name
        self.files = {}
        self.connection = connection
        self.server_connection = None
        self._start_time = time.time()
        self._finish_time = None
        self.path, self.query = start_line.path, ""
        self.arguments = {}
        self.query_arguments = {}
        self.body_arguments = {}


def take_failure(handler: BaseHandler) -> BaseException | None:
    """The exception the lean path met on this handler's request, if it replayed the request
    into the full path because of it (then the full path raises it instead of running again)."""
    lean: LeanRoutes | None = getattr(handler.application, "lean", None)
    if lean is None or not lean.failures:
        return None
    return lean.failures.pop(handler.request.connection, None)


class LeanRoutes:
    """The lean routes of one application (exact path -> handler class), the failures being
    replayed into the full path, and a `Date` value formatted once a second."""

    def __init__(self, app: GuardedApplication, routes: dict[str, type[BaseHandler]]) -> None:
        self.app = app
        self.routes = routes
        #: connection -> the exception its lean request raised, until the full path takes it
        self.failures: dict[object, BaseException] = {}
        self._date_second = -1
        self._date = ""
        self._heads: dict[bool, bytes] = {}

    @classmethod
    def from_routes(cls, app: GuardedApplication, handlers: list[Any]) -> LeanRoutes:
        """The literal paths of `lean` handlers that the application itself routes a POST to
        that handler (so an earlier pattern that matches the path first keeps it)."""
        routes: dict[str, type[BaseHandler]] = {}
        for rule in handlers:
            if not isinstance(rule, tuple) or len(rule) != 2:
                continue
            pattern, target = rule
            if (isinstance(pattern, str) and getattr(target, "lean", False)
                    and _LITERAL.fullmatch(pattern) and app.routes_to(pattern) is target):
                routes[pattern] = cast("type[BaseHandler]", target)
        return cls(app, routes)

    def date(self) -> str:
        """The `Date` value of an answer now, formatted once a second."""
        now = time.time()
        if int(now) != self._date_second:
            self._date_second = int(now)
            self._date = httputil.format_timestamp(now)
            self._heads = {}
        return self._date

    def head(self, cors: bool) -> bytes:
        """The head of a lean 200 answer up to its `Content-Length` value: the lines
        `write_headers` writes for `_answer_headers`, in their order, rendered once a second
        (for its `Date`)."""
        date = self.date()
        head = self._heads.get(cors)
        if head is None:
            lines = ["HTTP/1.1 200 OK", *(f"{name}: {value}"
                                          for name, value in _answer_headers(date, cors)),
                     "Content-Length: "]
            head = self._heads[cors] = "\r\n".join(lines).encode("latin1")
        return head

    def delegate(self, conn: httputil.HTTPConnection, start_line: httputil.RequestStartLine,
                 fallback: httputil.HTTPMessageDelegate) -> LeanDelegate | None:
        if start_line.method != "POST":
            return None
        target = self.routes.get(start_line.path)
        if target is None:
            return None
        return LeanDelegate(self, target, conn, fallback)


def _answer_coroutine(handler: Any) -> Coroutine[Any, Any, Any]:
    """The coroutine whose value is the handler's 200 JSON answer."""
    lean_answer = getattr(handler, "lean_answer", None)
    if lean_answer is not None:
        return cast("Coroutine[Any, Any, Any]", lean_answer())
    return cast("Coroutine[Any, Any, Any]", handler.handle(handler.signed_request()))


def _answer_headers(date: str, cors: bool) -> list[tuple[str, str]]:
    """The headers of a lean 200 answer before its `Content-Length`: those the full path sends
    (JSON type, `Date`, `nosniff`, `no-store`, and CORS for a `cors` handler)."""
    headers = [("Content-Type", JSON_CONTENT_TYPE), ("Date", date),
               ("X-Content-Type-Options", "nosniff"), ("Cache-Control", "no-store")]
    if cors:
        headers.append((CORS_HEADER, CORS_ANY_ORIGIN))
    return headers


def _keeps_alive(conn: Any, start_line: Any, headers: Any) -> bool:
    """Whether Tornado keeps `conn` open after this answer, so that it adds no `Connection`
    header to it: its own rule for an HTTP/1.1 request (`HTTP1Connection._can_keep_alive`),
    which is what `write_headers` consults."""
    if start_line.version != "HTTP/1.1" or conn.params.no_keep_alive:
        return False
    connection = headers.get("Connection")
    return connection is None or connection.lower() != "close"


class LeanDelegate(httputil.HTTPMessageDelegate):
    __slots__ = ("routes", "target", "conn", "fallback", "start_line", "headers", "chunks",
                 "replayed", "body", "coro", "start")

    def __init__(self, routes: LeanRoutes, target: type[BaseHandler],
                 conn: httputil.HTTPConnection, fallback: httputil.HTTPMessageDelegate) -> None:
        self.routes, self.target, self.conn, self.fallback = routes, target, conn, fallback
        self.start_line: Any = None
        self.headers: httputil.HTTPHeaders | None = None
        self.chunks: list[bytes] = []
        self.replayed = False
        self.body = b""
        self.coro: Coroutine[Any, Any, Any] | None = None
        self.start = 0.0

    def headers_received(self, start_line: Any, headers: httputil.HTTPHeaders) -> None:
        self.start_line, self.headers = start_line, headers

    def data_received(self, chunk: bytes) -> None:
        self.chunks.append(chunk)

    def finish(self) -> None:
        self.body = b"".join(self.chunks) if len(self.chunks) != 1 else self.chunks[0]
        self.start = time.perf_counter()
        handler = self.target.__new__(self.target)
        try:
            handler.application = self.routes.app
            handler.request = LeanRequest(self.conn, self.start_line,
                                          cast("httputil.HTTPHeaders", self.headers), self.body)
            self.coro = _answer_coroutine(handler)
        except Exception as exc:  # any failure is answered by the full path, as always
            self._failed(exc)
            return
        self._step()

    def _step(self, _: object = None) -> None:
        """Run the coroutine on until it awaits, answers or raises."""
        coro = cast("Coroutine[Any, Any, Any]", self.coro)
        try:
            awaited = coro.send(None)
        except StopIteration as done:
            try:
                payload = json_dumps(done.value)
            except Exception as exc:
                self._failed(exc)
                return
            self._answer(payload)
            return
        except Exception as exc:
            self._failed(exc)
            return
        if not getattr(self.target, "lean_awaits", False):
            coro.close()
            log.warning("%s.handle awaited: a lean handler must answer without awaiting; it is "
                        "answered by the full path", self.target.__name__)
            self._replay()
        elif asyncio.isfuture(awaited):
            awaited._asyncio_future_blocking = False  # as a task does on taking it
            awaited.add_done_callback(self._step)
        else:  # a bare yield (`asyncio.sleep(0)`): run on at the loop's next turn
            asyncio.get_running_loop().call_soon(self._step)

    def _answer(self, payload: bytes) -> None:
        conn = self.conn
        if _keeps_alive(conn, self.start_line, self.headers):
            # What `write_headers` would write, pre-rendered: one `write` of head and body
            # (Tornado's documented way to send a pre-encoded header block).
            conn.write(self.routes.head(self.target.cors) + str(len(payload)).encode()
                       + b"\r\n\r\n" + payload)
        else:  # Tornado adds its `Connection` header: let it write the head
            headers = httputil.HTTPHeaders()
            for name, value in _answer_headers(self.routes.date(), self.target.cors):
                headers[name] = value
            headers["Content-Length"] = str(len(payload))
            conn.write_headers(_OK, headers, payload)
        conn.finish()
        self.routes.app.end_request(conn, self.target.__name__, "POST", 200,
                                    time.perf_counter() - self.start)

    def _failed(self, exc: BaseException) -> None:
        if getattr(self.target, "lean_awaits", False):
            self.routes.failures[self.conn] = exc
        self._replay()

    def _replay(self) -> None:
        self.replayed = True
        self.fallback.headers_received(self.start_line, self.headers)  # type: ignore[arg-type]
        if self.body:
            self.fallback.data_received(self.body)
        self.fallback.finish()

    def on_connection_close(self) -> None:
        if self.replayed:
            self.fallback.on_connection_close()
