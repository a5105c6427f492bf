"""Every use of a private or undocumented Tornado or asyncio name, in one place.

The lean path (`service/lean.py`) and the request guard (`service/guard.py`) are faster or
stricter than Tornado's public API allows because they lean on a few of its internals. Each such
use is a function here, so that a Tornado or Python upgrade that changes one breaks this module
only, and `tests/test_internals.py` says which (it checks that every name exists and behaves as
relied upon, and pins the Tornado version this was checked against: `TORNADO_CHECKED`).

What is relied upon, and where Tornado or asyncio defines it:

- `tornado.httputil._ABNF.host`: the Host rule `HTTPServerRequest.__init__` checks (`host_name`);
- the attributes `HTTPServerRequest.__init__` sets, `_start_time` and `_finish_time` included
  (`LeanRequest`, which sets them without parsing an empty query);
- `RequestHandler` methods that read only `self.application` and `self.request` work on an
  object made without `__init__` (`bare_handler`: `settings`, the shared accessors);
- `RequestHandler._finished` (`handler_finished`) and `RequestHandler._headers`, the response
  headers `set_default_headers` fills (`response_headers`);
- `tornado.web._has_stream_request_body` (`streams_body`);
- `HTTP1Connection.params.no_keep_alive` and the rule of `HTTP1Connection._can_keep_alive`
  (`keeps_alive`), `HTTP1Connection.stream` (`connection_open`);
- `asyncio.Future._asyncio_future_blocking`, which a Task clears on taking a future a coroutine
  yielded (`resume_when_done`, which does the same for a coroutine driven without a Task).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any, TypeVar

import tornado.web
from tornado import httputil
from tornado.httputil import _ABNF

#: The Tornado (major, minor) every name here was checked against; tests/test_internals.py
#: fails with a clear message on any other, so that an upgrade is checked, not assumed.
TORNADO_CHECKED = (6, 6)

H = TypeVar("H", bound=tornado.web.RequestHandler)


@functools.lru_cache(maxsize=256)
def host_name(host: str) -> str | None:
    """The host name in a `Host` value (`HTTPServerRequest.host_name`), or None when Tornado
    would refuse the value; remembered per distinct value."""
    if not _ABNF.host.fullmatch(host) or "," in host:
        return None
    return httputil.split_host_and_port(host.lower())[0]


class LeanRequest(httputil.HTTPServerRequest):
    """The `HTTPServerRequest` Tornado would make (every attribute its constructor sets, the same
    `HTTPInputError` for a missing or invalid Host), for a POST whose target has no query
    string, the only kind the lean path serves: so its arguments are empty, without parsing
    and deep-copying an empty query; and the Host is checked once per distinct value.
    `tests/test_lean.py` compares the two attribute by attribute."""

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
        name = host_name(host)
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


def bare_handler(cls: type[H], application: Any, request: httputil.HTTPServerRequest) -> H:
    """A handler object without `RequestHandler.__init__` (no response headers, no close
    callback, no `initialize`): only `application` and `request` set, which is all that
    `settings` and the accessors built on it read."""
    handler = cls.__new__(cls)
    handler.application = application
    handler.request = request
    return handler


def handler_finished(handler: tornado.web.RequestHandler) -> bool:
    """Whether `finish()` has been called on this handler."""
    return bool(handler._finished)


def response_headers(handler: tornado.web.RequestHandler) -> httputil.HTTPHeaders:
    """The handler's response headers, to assign constant, known-good values without
    `set_header`'s per-value checks (measurable on the hot path)."""
    return handler._headers


def streams_body(cls: type) -> bool:
    """Whether a handler class is decorated with `@stream_request_body`."""
    return bool(tornado.web._has_stream_request_body(cls))


def keeps_alive(conn: Any, start_line: Any, headers: httputil.HTTPHeaders) -> bool:
    """Whether Tornado keeps `conn` open after answering this request without adding a
    `Connection` header of its own: an HTTP/1.1 request without `Connection: close` on a
    connection not made with `no_keep_alive` (`HTTP1Connection._can_keep_alive`, which
    `write_headers` consults)."""
    if start_line.version != "HTTP/1.1" or conn.params.no_keep_alive:
        return False
    connection = headers.get("Connection")
    return connection is None or connection.lower() != "close"


def connection_open(conn: Any) -> bool:
    """Whether an `HTTP1Connection`'s stream is still open (a connection closed while waiting
    for a request's headers tells no delegate)."""
    stream = conn.stream
    return stream is not None and not stream.closed()


def resume_when_done(future: Any, step: Callable[[Any], object]) -> None:
    """Call `step(future)` once the asyncio future a coroutine yielded (by awaiting it) is done,
    taking it as a Task does (clearing its `_asyncio_future_blocking`), for a coroutine driven
    by `send(None)` without a Task."""
    future._asyncio_future_blocking = False
    future.add_done_callback(step)
