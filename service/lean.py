"""The lean path: a successful signed POST answered by a message delegate, without Tornado's
per-request handler machinery (handler construction, `_execute`'s task, `finish`/`flush`).

    routes = LeanRoutes.from_routes(app, handlers)      # in GuardedApplication
    delegate = routes.delegate(start_line, fallback)    # None: not a lean route

Only handlers with `lean = True` (`service/signed.py`) are routed here, by exact path, for
`POST` only; HEAD, OPTIONS, other methods, a query string, and any path with arguments go the
full way. The lean delegate runs the handler's own code: it makes the handler object without
`RequestHandler.__init__` (its `application` and a real `HTTPServerRequest` set, so the shared
accessors, `self.request` and `self.settings` work), calls the same `signed_request()` (every
check: signature, body rules, roles, installation) and the same `handle()`, and writes the same
headers the full path writes (JSON type, `nosniff`, `no-store`, CORS, `Date`).

Anything but success is answered by the full path, so there is one implementation of errors:
when a check fails, `handle()` raises, or `handle()` awaits (a lean handler must not), the
request is replayed, unchanged, into the `Application`'s own delegate (`fallback`), which
verifies again and answers as it always does. Lean handlers only read, so a replay changes
nothing. The request still begins and ends in `service/guard.py` (in-flight count, metrics by
handler class), and keep-alive, `Expect: 100-continue`, the body limit and timeouts are the
connection's and the guard's, as for every request.
"""

from __future__ import annotations

import logging
import re
import time
from typing import TYPE_CHECKING, Any, cast

from tornado import httputil

from service.base import CORS_ANY_ORIGIN, CORS_HEADER, JSON_CONTENT_TYPE, json_dumps

if TYPE_CHECKING:
    from service.guard import GuardedApplication
    from service.signed import SignedHandler

log = logging.getLogger("app.http")

#: A path pattern with no regular-expression syntax in it: it matches only itself.
_LITERAL = re.compile(r"/[A-Za-z0-9/_-]*")

_OK = httputil.ResponseStartLine("HTTP/1.1", 200, "OK")


class LeanRoutes:
    """The lean routes of one application (exact path -> handler class), and a `Date` value
    formatted once a second."""

    def __init__(self, app: GuardedApplication, routes: dict[str, type[SignedHandler]]) -> None:
        self.app = app
        self.routes = routes
        self._date_second = -1
        self._date = ""

    @classmethod
    def from_routes(cls, app: GuardedApplication, handlers: list[Any]) -> LeanRoutes:
        """The literal paths of `lean` handlers that the application itself routes a POST to
        that handler (so an earlier pattern that matches the path first keeps it)."""
        routes: dict[str, type[SignedHandler]] = {}
        for rule in handlers:
            if not isinstance(rule, tuple) or len(rule) != 2:
                continue
            pattern, target = rule
            if (isinstance(pattern, str) and getattr(target, "lean", False)
                    and _LITERAL.fullmatch(pattern) and app.routes_to(pattern) is target):
                routes[pattern] = cast("type[SignedHandler]", target)
        return cls(app, routes)

    def date(self) -> str:
        now = time.time()
        if int(now) != self._date_second:
            self._date_second = int(now)
            self._date = httputil.format_timestamp(now)
        return self._date

    def delegate(self, conn: httputil.HTTPConnection, start_line: httputil.RequestStartLine,
                 fallback: httputil.HTTPMessageDelegate) -> LeanDelegate | None:
        if start_line.method != "POST":
            return None
        target = self.routes.get(start_line.path)
        if target is None:
            return None
        return LeanDelegate(self, target, conn, fallback)


class LeanDelegate(httputil.HTTPMessageDelegate):
    __slots__ = ("routes", "target", "conn", "fallback", "start_line", "headers", "chunks",
                 "replayed")

    def __init__(self, routes: LeanRoutes, target: type[SignedHandler],
                 conn: httputil.HTTPConnection, fallback: httputil.HTTPMessageDelegate) -> None:
        self.routes, self.target, self.conn, self.fallback = routes, target, conn, fallback
        self.start_line: Any = None
        self.headers: httputil.HTTPHeaders | None = None
        self.chunks: list[bytes] = []
        self.replayed = False

    def headers_received(self, start_line: Any, headers: httputil.HTTPHeaders) -> None:
        self.start_line, self.headers = start_line, headers

    def data_received(self, chunk: bytes) -> None:
        self.chunks.append(chunk)

    def finish(self) -> None:
        body = b"".join(self.chunks) if len(self.chunks) != 1 else self.chunks[0]
        result = self._answer_or_none(body)
        if result is None:
            self._replay(body)
            return
        start, payload = result
        app = self.routes.app
        headers = httputil.HTTPHeaders()
        headers["Content-Type"] = JSON_CONTENT_TYPE
        headers["Date"] = self.routes.date()
        headers["X-Content-Type-Options"] = "nosniff"
        headers["Cache-Control"] = "no-store"
        headers[CORS_HEADER] = CORS_ANY_ORIGIN
        headers["Content-Length"] = str(len(payload))
        self.conn.write_headers(_OK, headers, payload)
        self.conn.finish()
        app.end_request(self.conn, self.target.__name__, "POST", 200,
                        time.perf_counter() - start)

    def _answer_or_none(self, body: bytes) -> tuple[float, bytes] | None:
        """The 200 answer's body, or None when the full path must answer."""
        start = time.perf_counter()
        handler = self.target.__new__(self.target)
        try:
            handler.application = self.routes.app
            handler.request = httputil.HTTPServerRequest(
                connection=self.conn, start_line=self.start_line, headers=self.headers,
                body=body)
            coro = handler.handle(handler.signed_request())
        except Exception:  # any failure is answered by the full path, as always
            return None
        try:
            coro.send(None)
        except StopIteration as done:
            try:
                return start, json_dumps(done.value)
            except Exception:
                return None
        except Exception:
            return None
        coro.close()
        log.warning("%s.handle awaited: a lean handler must answer without awaiting; it is "
                    "answered by the full path", self.target.__name__)
        return None

    def _replay(self, body: bytes) -> None:
        self.replayed = True
        self.fallback.headers_received(self.start_line, self.headers)  # type: ignore[arg-type]
        if body:
            self.fallback.data_received(body)
        self.fallback.finish()

    def on_connection_close(self) -> None:
        if self.replayed:
            self.fallback.on_connection_close()
