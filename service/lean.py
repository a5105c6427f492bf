"""The lean path: a POST answered by a message delegate, without Tornado's per-request handler
machinery (handler construction, `_execute`'s task, `finish`/`flush`).

The interface, all a handler sees of it:

    class MyHandler(LeanHandler):          # SignedHandler and WebhookHandler derive from it
        lean = True                        # opt in
        def answer(self) -> Awaitable[Any] # the 200 answer's JSON value, or raise APIError

`LeanHandler.post` (the full handler path) writes `await self.answer()` as JSON; with
`lean = True`, the lean path runs the same `answer()` instead, for a POST to the handler's
exact path without a query string (HEAD, OPTIONS, other methods, a query string go the full
way), and writes the same 200 answer (JSON type, `nosniff`, `no-store`, CORS when the handler
has `cors`, `Date`).

One rule: the lean path runs `answer()` once, driven on the futures it awaits (no Task: each
asyncio future it yields wakes it through a done callback; so it must not need
`asyncio.current_task()`, `asyncio.timeout()` say), and the request stays in flight
meanwhile. If it returns, the lean path answers 200. If it raises, the request is replayed,
unchanged, into the `Application`'s own delegate with that exception, which `LeanHandler.post`
raises again, unrun: every error answer, its log line and its metrics are the full path's,
and nothing `answer()` did (a counted rejection, a stored event) happens twice. (A request
the lean path cannot even describe, a bad Host say, is replayed as it came, and Tornado
answers it as always.)

What the lean path does not run is refused at start-up, not served differently: building the
application (`LeanRoutes.from_routes`) raises `LeanHandlerError` for a `lean` handler that
overrides any of `SKIPPED` (`initialize`, `prepare`, `on_finish`, `set_default_headers`, ...),
streams its body, is routed with arguments or at a pattern, or in an application that
compresses answers or checks XSRF cookies.

When Tornado keeps the connection open (HTTP/1.1 without `Connection: close`: then it adds no
header of its own), the head is written pre-rendered with the body in one
`HTTPConnection.write`, instead of through `write_headers`, which costs about a tenth of a
request (77,000 instructions); else `write_headers` writes it, with Tornado's `Connection`
line. The request still begins and ends in `service/guard.py` (in-flight count, metrics by
handler class); keep-alive, `Expect: 100-continue`, the body limit and timeouts are the
connection's and the guard's, as for every request. The private Tornado and asyncio names this
needs are in `service/internals.py`.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ClassVar, Protocol, cast

from tornado import httputil

from service.base import CORS_ANY_ORIGIN, CORS_HEADER, JSON_CONTENT_TYPE, BaseHandler, json_dumps
from service.internals import (
    LeanRequest,
    bare_handler,
    handler_finished,
    keeps_alive,
    resume_when_done,
    streams_body,
)

#: A path pattern with no regular-expression syntax in it: it matches only itself.
_LITERAL = re.compile(r"/[A-Za-z0-9/_-]*")

_OK = httputil.ResponseStartLine("HTTP/1.1", 200, "OK")

#: What the full handler path runs and the lean path does not: a `lean` handler may not
#: override any of these (`LeanHandler`'s own, or `RequestHandler`'s, are what the lean path
#: reproduces or does without).
SKIPPED = ("__init__", "initialize", "prepare", "on_finish", "on_connection_close",
           "set_default_headers", "clear", "compute_etag", "set_etag_header",
           "check_etag_header", "check_xsrf_cookie", "set_status", "write", "finish", "flush",
           "write_json", "post", "data_received")


class LeanHandlerError(TypeError):
    """A `lean` handler the lean path would serve differently from the full path."""


class LeanHandler(BaseHandler):
    """A handler whose POST answer is the JSON value of `answer()`; `lean = True` lets the lean
    path serve it (see the module's docstring for what that requires)."""

    SUPPORTED_METHODS: tuple[str, ...] = ("POST",)
    lean: ClassVar[bool] = False

    def answer(self) -> Awaitable[Any]:
        """The 200 answer's JSON value (or an exception, which the full path answers)."""
        raise NotImplementedError

    async def post(self, *args: Any) -> None:
        routes: LeanRoutes | None = getattr(self.application, "lean", None)
        if routes is not None and routes.failures:
            failure = routes.failures.pop(self.request.connection, None)
            if failure is not None:  # the lean path ran `answer()` and it raised this
                raise failure
        value = await self.answer()
        if not handler_finished(self):
            self.write_json(value)


def check_lean_handler(cls: Any, settings: dict[str, Any], path: str = "",
                       kwargs: dict[str, Any] | None = None) -> None:
    """Raise `LeanHandlerError` unless the lean path would serve `cls` as the full path does."""
    name = getattr(cls, "__name__", repr(cls))
    if not (isinstance(cls, type) and issubclass(cls, LeanHandler)):
        raise LeanHandlerError(f"{name} sets lean = True but is not a LeanHandler "
                               "(service/lean.py): the lean path runs LeanHandler.answer()")
    overridden = [m for m in SKIPPED if getattr(cls, m) is not getattr(LeanHandler, m)]
    if overridden:
        raise LeanHandlerError(
            f"{name} sets lean = True and overrides {', '.join(overridden)}, which the lean "
            "path does not run: remove the override(s) or set lean = False")
    if streams_body(cls):
        raise LeanHandlerError(f"{name} sets lean = True and streams its body "
                               "(@stream_request_body): the lean path reads it whole")
    if "POST" not in cls.SUPPORTED_METHODS:
        raise LeanHandlerError(f"{name} sets lean = True but does not support POST")
    if kwargs:
        raise LeanHandlerError(f"{name} sets lean = True but its route {path!r} passes "
                               "initialize() arguments, which the lean path does not")
    if path and not _LITERAL.fullmatch(path):
        raise LeanHandlerError(f"{name} sets lean = True but is routed at the pattern {path!r}:"
                               " the lean path routes exact paths only")
    for setting in ("compress_response", "gzip", "xsrf_cookies"):
        if settings.get(setting):
            raise LeanHandlerError(f"{name} sets lean = True in an application with the "
                                   f"{setting} setting, which the lean path does not apply")


class LeanHost(Protocol):
    """What the lean path needs of its application (`service/guard.py`'s)."""

    settings: dict[str, Any]

    def routes_to(self, path: str, method: str = "POST") -> type | None: ...

    def end_request(self, conn: object, handler: str, method: str, status: int,
                    seconds: float) -> None: ...


class LeanRoutes:
    """The lean routes of one application (exact path -> handler class), the failures being
    replayed into the full path, and a `Date` value formatted once a second."""

    def __init__(self, app: LeanHost, routes: dict[str, type[LeanHandler]]) -> None:
        self.app = app
        self.routes = routes
        #: connection -> the exception its lean request raised, until the full path takes it
        self.failures: dict[object, BaseException] = {}
        self._date_second = -1
        self._date = ""
        self._heads: dict[bool, bytes] = {}

    @classmethod
    def from_routes(cls, app: LeanHost, handlers: list[Any]) -> LeanRoutes:
        """The paths of `lean` handlers, each checked (`check_lean_handler`: else
        `LeanHandlerError`), that the application itself routes a POST to (a route an earlier
        pattern shadows is never served, by either path)."""
        routes: dict[str, type[LeanHandler]] = {}
        for rule in handlers:
            if isinstance(rule, (tuple, list)) and 2 <= len(rule) <= 4:
                pattern, target = rule[0], rule[1]
                kwargs = rule[2] if len(rule) > 2 else None
            else:  # a URLSpec or Rule: its target, its kwargs
                pattern = None
                target, kwargs = getattr(rule, "target", None), getattr(rule, "kwargs", None)
            if not getattr(target, "lean", False):
                continue
            if not isinstance(pattern, str):
                raise LeanHandlerError(f"{getattr(target, '__name__', target)} sets lean = "
                                       "True: route it as a (path, handler) tuple")
            check_lean_handler(target, app.settings, pattern, kwargs)
            if app.routes_to(pattern) is target:
                routes[pattern] = cast("type[LeanHandler]", target)
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


def _answer_headers(date: str, cors: bool) -> list[tuple[str, str]]:
    """The headers of a lean 200 answer before its `Content-Length`: those the full path sends
    (JSON type, `Date`, `nosniff`, `no-store`, and CORS for a `cors` handler)."""
    headers = [("Content-Type", JSON_CONTENT_TYPE), ("Date", date),
               ("X-Content-Type-Options", "nosniff"), ("Cache-Control", "no-store")]
    if cors:
        headers.append((CORS_HEADER, CORS_ANY_ORIGIN))
    return headers


class LeanDelegate(httputil.HTTPMessageDelegate):
    __slots__ = ("routes", "target", "conn", "fallback", "start_line", "headers", "chunks",
                 "replayed", "body", "coro", "start", "step")

    def __init__(self, routes: LeanRoutes, target: type[LeanHandler],
                 conn: httputil.HTTPConnection, fallback: httputil.HTTPMessageDelegate) -> None:
        self.routes, self.target, self.conn, self.fallback = routes, target, conn, fallback
        self.start_line: Any = None
        self.headers: httputil.HTTPHeaders | None = None
        self.chunks: list[bytes] = []
        self.replayed = False
        self.body = b""
        self.coro: Coroutine[Any, Any, Any] | None = None
        self.start = 0.0
        self.step: Callable[[object], None] = self._step

    def headers_received(self, start_line: Any, headers: httputil.HTTPHeaders) -> None:
        self.start_line, self.headers = start_line, headers

    def data_received(self, chunk: bytes) -> None:
        self.chunks.append(chunk)

    def finish(self) -> None:
        self.body = b"".join(self.chunks) if len(self.chunks) != 1 else self.chunks[0]
        self.start = time.perf_counter()
        try:
            request = LeanRequest(self.conn, self.start_line,
                                  cast("httputil.HTTPHeaders", self.headers), self.body)
        except Exception:  # a bad Host, say: Tornado answers it as it always does
            self._replay()
            return
        handler = bare_handler(self.target, self.routes.app, request)
        try:
            self.coro = cast("Coroutine[Any, Any, Any]", handler.answer())
        except Exception as exc:  # a check failed before `answer()` awaited anything
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
        if asyncio.isfuture(awaited):
            resume_when_done(awaited, self.step)
        else:  # a bare yield (`asyncio.sleep(0)`): run on at the loop's next turn
            asyncio.get_running_loop().call_soon(self._step)

    def _answer(self, payload: bytes) -> None:
        conn = self.conn
        if keeps_alive(conn, self.start_line, cast("httputil.HTTPHeaders", self.headers)):
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
