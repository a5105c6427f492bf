"""Bounded connections: the file limit, a connection cap, a header timeout, and an accept loop
that survives running out of file descriptors.

    raise_file_limit()                      # at start-up: soft RLIMIT_NOFILE up to the hard one
    server = BoundedHTTPServer(app, max_connections=config.max_connections, metrics=metrics,
                               ...)
    server.add_sockets(sockets)

- Above `max_connections` (`MAX_CONNECTIONS`) open connections, a new one is closed as soon as
  it is accepted: counted in `http_connections_refused_total{reason="max_connections"}`, and
  logged at most once a minute with the number refused since the last line.
- When `accept()` fails for want of file descriptors (EMFILE, ENFILE, ENOBUFS, ENOMEM), the
  listening socket stops being watched for a back-off (0.1 s doubling to 2 s, reset by the next
  successful accept) instead of being retried at once: Tornado's accept handler would let the
  error escape, the loop would log a traceback and call it again at once, a busy loop. Pending
  clients wait in the listen backlog meanwhile. Counted with `reason="out_of_files"`, logged
  at most once a minute.
- A client that sends half its headers, or nothing, is dropped `HEADER_TIMEOUT` seconds after
  the server started waiting for them; that includes an idle keep-alive connection between two
  requests. `service/guard.py` keeps that deadline with the body's, in one periodic sweep:
  Tornado's own header timeout (`idle_connection_timeout`) costs a timer and two futures per
  request, and is left off.
- `TCP_NODELAY` is set once per connection and stays on (as Node's HTTP server does): answers
  go out in one write, so Nagle's algorithm has nothing to merge, and Tornado's own toggling
  (off and on again around every answer) costs two system calls per request.
"""

from __future__ import annotations

import errno
import logging
import resource
import socket
import time
from typing import Any

from tornado import iostream
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop

from service.metrics import Metrics

log = logging.getLogger("app.connections")

#: Seconds a client gets to send a request's complete headers (and an idle keep-alive
#: connection to start its next request).
HEADER_TIMEOUT = 10.0
#: Seconds between two log lines about refused connections or a lack of file descriptors.
LOG_INTERVAL = 60.0
#: File descriptors the process needs besides client connections (database, logs, listeners).
RESERVED_FILES = 64
_OUT_OF_FILES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_PAUSE_FIRST, _PAUSE_MAX = 0.1, 2.0
_TCP = (socket.AF_INET, socket.AF_INET6)


def raise_file_limit() -> int:
    """Raise the soft open-file limit to the hard one; log and return the limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != soft and (hard == resource.RLIM_INFINITY or hard > soft):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            log.info("open-file limit raised from %d to %d", soft, hard)
            return hard
        except (ValueError, OSError) as exc:
            log.warning("open-file limit stays %d: cannot raise it to %d (%s)", soft, hard, exc)
            return soft
    log.info("open-file limit: %d", soft)
    return soft


class ThrottledLog:
    """A warning logged at most once per `interval`, saying how often it happened meanwhile."""

    def __init__(self, message: str, interval: float = LOG_INTERVAL) -> None:
        self.message = message
        self.interval = interval
        self._last = -float("inf")
        self._count = 0

    def note(self, detail: str = "") -> None:
        self._count += 1
        now = time.monotonic()
        if now - self._last >= self.interval:
            log.warning("%s (%d since the last such line)%s", self.message, self._count, detail)
            self._last, self._count = now, 0


class _Listener:
    """A listening socket whose `accept()` turns "out of file descriptors" into a pause.

    Tornado's accept handler calls `accept()` until it raises `BlockingIOError`; here an
    out-of-files error stops the loop from watching the socket for a while and then raises
    `BlockingIOError`, so the handler returns quietly. Everything else is the socket's own."""

    def __init__(self, sock: socket.socket, server: BoundedHTTPServer) -> None:
        self._sock = sock
        self._server = server
        self._pause = _PAUSE_FIRST
        self._closed = False

    def fileno(self) -> int:
        return self._sock.fileno()

    def accept(self) -> tuple[socket.socket, Any]:
        try:
            pair = self._sock.accept()
        except OSError as exc:
            if exc.errno not in _OUT_OF_FILES:
                raise
            self._server.out_of_files(self._pause)
            loop = IOLoop.current()
            loop.update_handler(self, 0)
            loop.call_later(self._pause, self._resume)
            self._pause = min(self._pause * 2, _PAUSE_MAX)
            raise BlockingIOError(exc.errno, exc.strerror) from None
        self._pause = _PAUSE_FIRST
        return pair

    def _resume(self) -> None:
        if not self._closed:
            IOLoop.current().update_handler(self, IOLoop.READ)

    def close(self) -> None:
        self._closed = True
        self._sock.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class _NoDelayStream(iostream.IOStream):
    """An `IOStream` whose `TCP_NODELAY` was set when it was accepted and stays on."""

    def set_nodelay(self, value: bool) -> None:
        pass


class BoundedHTTPServer(HTTPServer):
    """Tornado's HTTPServer with a connection cap and an accept loop that backs off when the
    process runs out of file descriptors (see the module docstring)."""

    def initialize(self, *args: Any, max_connections: int = 10000,
                   metrics: Metrics | None = None, **kwargs: Any) -> None:
        if kwargs.get("idle_connection_timeout") is not None:
            raise TypeError("the header timeout is the application's (GuardedApplication's "
                            "header_timeout setting), not idle_connection_timeout")
        super().initialize(*args, **kwargs)
        # HTTPServer turns "no idle_connection_timeout" into an hour; the guard keeps the real
        # header deadline (module docstring).
        self.conn_params.header_timeout = None
        self.max_connections = max_connections
        self.open_connections = 0
        self._metrics = metrics
        self._refused_log = ThrottledLog(
            f"refused connections above MAX_CONNECTIONS={max_connections}")
        self._out_of_files_log = ThrottledLog("out of file descriptors: not accepting for a while")

    def add_sockets(self, sockets: Any) -> None:
        # _Listener stands in for the socket (it forwards every attribute to it)
        super().add_sockets([_Listener(sock, self) for sock in sockets])  # type: ignore[misc]

    def handle_stream(self, stream: iostream.IOStream, address: tuple[Any, ...]) -> None:
        if self.open_connections >= self.max_connections:
            stream.close()
            self._count("max_connections")
            self._refused_log.note()
            return
        self.open_connections += 1
        if self._metrics is not None:
            self._metrics.connections_open.set(self.open_connections)
        sock = stream.socket
        if type(stream) is iostream.IOStream and sock.family in _TCP:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # reset already (some systems say so here): Tornado's stream
                pass
            else:
                # A stream of our own on the same socket (nothing is registered with the loop
                # yet): changing the class of the one given would slow every attribute read.
                stream = _NoDelayStream(sock, max_buffer_size=stream.max_buffer_size,
                                        read_chunk_size=stream.read_chunk_size)
        super().handle_stream(stream, address)

    def on_close(self, server_conn: object) -> None:
        self.open_connections -= 1
        if self._metrics is not None:
            self._metrics.connections_open.set(self.open_connections)
        super().on_close(server_conn)

    def out_of_files(self, pause: float) -> None:
        self._count("out_of_files")
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        self._out_of_files_log.note(f"; {self.open_connections} connections open, open-file "
                                    f"limit {soft}, next pause {pause:g}s")

    def _count(self, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.connections_refused.labels(reason).inc()
