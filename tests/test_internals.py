"""`service/internals.py`: every private or undocumented Tornado or asyncio name it relies on
still exists and behaves as relied upon. A failure here after an upgrade says which, before a
request meets it; then re-check that name in the new version's source and update the module
(and `TORNADO_CHECKED`)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import tornado
import tornado.web
from tornado import httputil
from tornado.http1connection import HTTP1Connection, HTTP1ConnectionParameters

from service import internals

_POST = httputil.RequestStartLine("POST", "/", "HTTP/1.1")


def test_tornado_is_the_version_the_internals_were_checked_against():
    assert tornado.version_info[:2] == internals.TORNADO_CHECKED, (
        f"service/internals.py was checked against Tornado "
        f"{'.'.join(map(str, internals.TORNADO_CHECKED))}, and this is Tornado "
        f"{tornado.version}: re-check every name its docstring lists in the new source "
        "(the other tests here check most of them), then update TORNADO_CHECKED")


def test_the_host_rule_is_the_one_tornado_checks():
    assert hasattr(httputil, "_ABNF") and hasattr(httputil._ABNF, "host"), \
        "tornado.httputil._ABNF.host (the Host rule) is gone"
    start = httputil.RequestStartLine("POST", "/", "HTTP/1.1")
    for host in ("a.example", "Example.COM:80", "[::1]:8000", "a,b", "bad host", "", "x\u00e9",
                 "1.2.3.4", "a_b"):
        try:
            tornado_name = httputil.HTTPServerRequest(
                start_line=start, headers=httputil.HTTPHeaders({"Host": host})).host_name
        except httputil.HTTPInputError:
            tornado_name = None
        assert internals.host_name(host) == tornado_name, host


class Probe(tornado.web.RequestHandler):
    def read(self) -> Any:
        return self.settings["x"], self.request.method


def test_a_bare_handler_reads_settings_and_request():
    app = tornado.web.Application([], x=7)
    request = httputil.HTTPServerRequest(start_line=_POST, headers=httputil.HTTPHeaders(
        {"Host": "h"}))
    handler = internals.bare_handler(Probe, app, request)
    assert handler.read() == (7, "POST")


def test_the_handler_private_attributes():
    app = tornado.web.Application([])
    request = httputil.HTTPServerRequest(start_line=_POST, headers=httputil.HTTPHeaders(
        {"Host": "h"}), connection=type("C", (), {"set_close_callback": lambda s, f: None})())
    handler = Probe(app, request)
    assert internals.handler_finished(handler) is False
    headers = internals.response_headers(handler)
    assert isinstance(headers, httputil.HTTPHeaders) and "Server" in headers
    headers["X-Probe"] = "1"
    assert handler._headers["X-Probe"] == "1"  # the same object write_headers sends
    handler._finished = True
    assert internals.handler_finished(handler) is True

    @tornado.web.stream_request_body
    class Streams(tornado.web.RequestHandler):
        pass

    assert internals.streams_body(Streams) and not internals.streams_body(Probe)


class _Stream:
    max_buffer_size = 1 << 20

    def __init__(self) -> None:
        self.is_closed = False

    def closed(self) -> bool:
        return self.is_closed

    def set_close_callback(self, callback: Any) -> None:
        pass


@pytest.mark.parametrize("version", ["HTTP/1.1", "HTTP/1.0"])
@pytest.mark.parametrize("connection", [None, "close", "Close", "keep-alive", "upgrade"])
@pytest.mark.parametrize("no_keep_alive", [False, True])
@pytest.mark.gen_test  # HTTP1Connection makes a future: it needs an event loop
async def test_keeps_alive_is_tornados_rule_for_no_connection_header(version, connection,
                                                                     no_keep_alive):
    """`keeps_alive` is true exactly when Tornado keeps the connection (`_can_keep_alive`) and
    writes no `Connection` header of its own (HTTP/1.1)."""
    conn = HTTP1Connection(_Stream(), False,  # type: ignore[arg-type]
                           HTTP1ConnectionParameters(no_keep_alive=no_keep_alive))
    assert conn.params.no_keep_alive is no_keep_alive
    headers = httputil.HTTPHeaders({"Content-Length": "2"})
    if connection is not None:
        headers["Connection"] = connection
    start = httputil.RequestStartLine("POST", "/", version)
    tornado_keeps = conn._can_keep_alive(start, headers)
    assert internals.keeps_alive(conn, start, headers) is (tornado_keeps
                                                           and version == "HTTP/1.1")


@pytest.mark.gen_test
async def test_connection_open_reads_the_stream():
    stream = _Stream()
    conn = HTTP1Connection(stream, False)  # type: ignore[arg-type]
    assert conn.stream is stream and internals.connection_open(conn)
    stream.is_closed = True
    assert not internals.connection_open(conn)
    conn.stream = None  # type: ignore[assignment]  # detached
    assert not internals.connection_open(conn)


@pytest.mark.parametrize("loop_factory", ["asyncio", "uvloop"])
def test_a_coroutine_driven_without_a_task_resumes_on_its_futures(loop_factory):
    """A coroutine that awaits a future yields it with `_asyncio_future_blocking` set;
    `resume_when_done` takes it as a Task does, and `send(None)` resumes the coroutine with the
    future's result (twice over, and through a plain `await` of an `async def`)."""
    if loop_factory == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    try:
        futures: list[asyncio.Future[int]] = []

        async def inner() -> int:
            future: asyncio.Future[int] = loop.create_future()
            futures.append(future)
            return await future

        async def outer() -> int:
            return await inner() + await inner()

        coro = outer()
        answered = loop.create_future()

        def step(_: object = None) -> None:
            try:
                yielded = coro.send(None)
            except StopIteration as done:
                answered.set_result(done.value)
                return
            assert asyncio.isfuture(yielded) and yielded is futures[-1]
            assert yielded._asyncio_future_blocking is True
            internals.resume_when_done(yielded, step)
            assert yielded._asyncio_future_blocking is False
            loop.call_soon(yielded.set_result, len(futures) * 10)

        step()
        assert loop.run_until_complete(asyncio.wait_for(answered, 5)) == 30
    finally:
        loop.close()
