"""The lean path (`service/lean.py`): successful signed POSTs to `lean` handlers answered by a
message delegate, everything else by the full handler path, with the same answers."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from conftest import (
    APP_SECRET,
    WH_LIVE,
    base_env,
    compact,
    event,
    read_answer,
    running,
    same_answer,
    sign,
    wait_for,
)

from models.installation import apply_state
from service.signed import SignedHandler, SignedRequest

IDS = {"user_id": "usr_1", "account_id": "acct_1"}

async def install(app: Any, account: str = "acct_1") -> None:
    view, _ = await app.backend.storage.run(apply_state, account, "live", True,
                                            int(time.time()), "test")
    app.backend.installations.put(view)


def counted(app: Any, handler: str, code: int) -> float:
    value = app.backend.metrics.registry.get_sample_value(
        "http_requests_total", {"handler": handler, "method": "POST", "code": str(code)})
    return value or 0.0


async def both_paths(app: Any, path: str, body: Any, **kw: Any) -> tuple[Any, Any]:
    lean = app.backend.app.lean
    first = await app.signed(path, body, **kw)
    app.backend.app.lean = None  # the full handler path, for comparison
    try:
        second = await app.signed(path, body, **kw)
    finally:
        app.backend.app.lean = lean
    return first, second


@pytest.mark.gen_test(timeout=30)
async def test_lean_routes_are_the_literal_lean_handlers(tmp_path):
    async with running(base_env(tmp_path)) as app:
        routes = app.backend.app.lean.routes
        assert {p: c.__name__ for p, c in routes.items()} == {
            "/api/installation": "InstallationStatusHandler", "/api/whoami": "WhoAmIHandler",
            "/webhooks": "WebhookHandler"}


@pytest.mark.gen_test(timeout=30)
async def test_success_answers_alike_and_is_counted_once(tmp_path):
    async with running(base_env(tmp_path)) as app:
        await install(app)
        for path, handler in (("/api/installation", "InstallationStatusHandler"),
                              ("/api/whoami", "WhoAmIHandler")):
            before = counted(app, handler, 200)
            lean, full = await both_paths(app, path, {"note": "é", **IDS})
            assert lean.status_code == 200, lean.text
            same_answer(lean, full)
            assert counted(app, handler, 200) == before + 2
        assert app.backend.tracker.in_flight == 0


@pytest.mark.gen_test(timeout=30)
async def test_failures_are_answered_by_the_full_path(tmp_path):
    async with running(base_env(tmp_path)) as app:
        cases = [
            ("/api/whoami", IDS, {}, 403),  # not installed
            ("/api/installation", IDS, {"header": sign(compact(IDS), "absec_wrong" + "x" * 24)},
             401),
            ("/api/installation", b"{not json", {}, 400),
            ("/api/installation", {"user_id": "usr_1"}, {}, 400),
            ("/api/installation", IDS, {"header": ""}, 401),
        ]
        for path, body, kw, status in cases:
            handler = "WhoAmIHandler" if path == "/api/whoami" else "InstallationStatusHandler"
            before = counted(app, handler, status)
            lean, full = await both_paths(app, path, body, **kw)
            assert lean.status_code == status, (path, body, lean.text)
            same_answer(lean, full)
            assert counted(app, handler, status) == before + 2  # once each, not twice
        assert app.backend.tracker.in_flight == 0


class AwaitingHandler(SignedHandler):
    """A lean handler that awaits: the lean path drives it on what it awaits."""

    lean = True
    requires_installation = False

    async def handle(self, req: SignedRequest) -> dict[str, Any]:
        await asyncio.sleep(0)
        return {"account_id": req.account_id}


@pytest.mark.gen_test(timeout=30)
async def test_a_lean_handler_that_awaits_is_answered_alike(tmp_path):
    async with running(base_env(tmp_path),
                       extra_routes=[(r"/api/awaits", AwaitingHandler)]) as app:
        assert "/api/awaits" in app.backend.app.lean.routes
        lean, full = await both_paths(app, "/api/awaits", IDS)
        assert lean.status_code == 200 and lean.json() == {"account_id": "acct_1"}
        same_answer(lean, full)


@pytest.mark.gen_test(timeout=30)
async def test_keep_alive_and_expect_continue_on_the_lean_path(tmp_path):
    async with running(base_env(tmp_path)) as app:
        body = compact(IDS).encode()
        head = (f"POST /api/installation HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
                f"Stripe-Signature: {sign(body, APP_SECRET)}\r\n"
                "Content-Type: application/json\r\n")
        reader, writer = await asyncio.open_connection("127.0.0.1", app.backend.port)
        try:
            writer.write((head + "Expect: 100-continue\r\n\r\n").encode())
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 100")
            writer.write(body)
            for _ in range(2):  # the same connection answers again
                answer, payload = await read_answer(reader)
                assert answer.startswith(b"HTTP/1.1 200"), answer
                assert b'"account_id":"acct_1"' in payload
                writer.write((head + "\r\n").encode() + body)
        finally:
            writer.close()


@pytest.mark.parametrize("host,version", [
    ("127.0.0.1:8000", "HTTP/1.1"), ("Example.COM", "HTTP/1.1"), ("[::1]:80", "HTTP/1.1"),
    (None, "HTTP/1.0"), (None, "HTTP/1.1"), ("a,b", "HTTP/1.1"), ("bad host", "HTTP/1.1"),
    ("", "HTTP/1.1"), ("x\u00e9", "HTTP/1.1"),
])
def test_lean_request_is_the_request_tornado_would_make(host, version):
    """Every attribute Tornado's constructor sets, with the same values, and the same refusal
    of a missing or invalid Host (a Tornado upgrade that adds one fails here)."""
    from tornado import httputil

    from service.internals import LeanRequest

    headers = httputil.HTTPHeaders({"Content-Type": "application/json"})
    if host is not None:
        headers["Host"] = host
    start = httputil.RequestStartLine("POST", "/api/whoami", version)
    conn = type("Conn", (), {"context": type("Ctx", (), {"remote_ip": "10.0.0.7",
                                                         "protocol": "https"})()})()
    made: list[Any] = []
    for make in (lambda: httputil.HTTPServerRequest(connection=conn, start_line=start,
                                                    headers=headers, body=b"{}"),
                 lambda: LeanRequest(conn, start, headers, b"{}")):
        try:
            made.append(vars(make()))
        except httputil.HTTPInputError as exc:
            made.append(type(exc))
    tornado_made, lean_made = made
    if isinstance(tornado_made, dict):
        for attrs in made:
            attrs.pop("_start_time")
        assert lean_made == tornado_made
    else:
        assert lean_made is tornado_made


@pytest.mark.gen_test(timeout=30)
async def test_a_bad_host_on_a_lean_route_is_answered_as_the_full_path_answers_it(tmp_path):
    """Over the wire: a missing or invalid Host on a signed lean POST gets the full path's
    answer (LeanRequest refuses it as Tornado does, and the request is replayed)."""
    async with running(base_env(tmp_path)) as app:
        await install(app)
        body = compact(IDS).encode()
        signed = (f"Content-Length: {len(body)}\r\nStripe-Signature: {sign(body, APP_SECRET)}\r\n"
                  "Content-Type: application/json\r\n")
        for host in ("", "Host: a,b\r\n", "Host: bad host\r\n"):
            heads = []
            for lean in (app.backend.app.lean, None):
                saved, app.backend.app.lean = app.backend.app.lean, lean
                try:
                    reader, writer = await asyncio.open_connection("127.0.0.1",
                                                                   app.backend.port)
                    writer.write(f"POST /api/installation HTTP/1.1\r\n{host}{signed}\r\n"
                                 .encode() + body)
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                    writer.close()
                finally:
                    app.backend.app.lean = saved
                heads.append(head.split(b"\r\n", 1)[0])
            assert heads[0] == heads[1], (host, heads)
            assert heads[0].startswith(b"HTTP/1.1 400"), (host, heads)

        async def idle() -> bool:
            return app.backend.tracker.in_flight == 0

        await wait_for(idle, 10, "no request left in flight")


@pytest.mark.parametrize("path", ["/api/installation", "/webhooks"])
@pytest.mark.gen_test(timeout=30)
async def test_the_pre_rendered_head_is_what_tornado_writes(tmp_path, monkeypatch, path):
    """A keep-alive HTTP/1.1 answer's head is written pre-rendered; an answer Tornado gives a
    `Connection` line (the client asked to close, or HTTP/1.0) goes through `write_headers`.
    Over the wire, the heads differ by that line only (with CORS, and without for webhooks),
    each connection is kept or closed as Tornado's own rule says, and `write_headers` is used
    for exactly the answers with a `Connection` line."""
    from tornado.http1connection import HTTP1Connection

    calls: list[int] = []
    write_headers = HTTP1Connection.write_headers

    def counting(self: Any, *args: Any, **kw: Any) -> Any:
        calls.append(1)
        return write_headers(self, *args, **kw)

    monkeypatch.setattr(HTTP1Connection, "write_headers", counting)
    sent = iter(range(100))

    def signed_body() -> tuple[bytes, str]:
        if path == "/webhooks":  # a new event each time: each is stored, not a duplicate
            body = json.dumps(event("invoice.paid", event_id=f"evt_head{next(sent)}")).encode()
            return body, sign(body, WH_LIVE)
        body = compact(IDS).encode()
        return body, sign(body, APP_SECRET)

    async with running(base_env(tmp_path)) as app:
        await install(app)

        async def exchange(version: str, extra: str) -> tuple[list[bytes], bytes, bool, int]:
            """The answer's head lines (without `Date`), its body, whether the connection
            answered a second request on it (else it was closed), and how many answers went
            through `write_headers`."""
            def request() -> bytes:
                body, header = signed_body()
                return (f"POST {path} {version}\r\nHost: x\r\n{extra}Content-Length: "
                        f"{len(body)}\r\nStripe-Signature: {header}\r\n"
                        "Content-Type: application/json\r\n\r\n").encode() + body

            del calls[:]
            reader, writer = await asyncio.open_connection("127.0.0.1", app.backend.port)
            try:
                writer.write(request())
                head, payload = await read_answer(reader)
                writer.write(request())
                try:
                    again, _ = await read_answer(reader)
                    kept = again.startswith(b"HTTP/1.1 200")
                except asyncio.IncompleteReadError as exc:
                    assert exc.partial == b""
                    kept = False
            finally:
                writer.close()
            lines = head.rstrip(b"\r\n").split(b"\r\n")
            assert sum(line.startswith(b"Date: ") for line in lines) == 1, lines
            return ([line for line in lines if not line.startswith(b"Date: ")], payload, kept,
                    len(calls))

        plain, payload, kept, slow = await exchange("HTTP/1.1", "")
        assert kept and slow == 0, "a keep-alive answer went through write_headers"
        assert plain[0] == b"HTTP/1.1 200 OK" and plain[-1].startswith(b"Content-Length: ")
        cors = b"Access-Control-Allow-Origin: *" in plain
        assert cors is (path != "/webhooks")
        assert (b'"acct_1"' if cors else b'"duplicate":false') in payload
        for version, extra, line, keeps, through_tornado in (
                ("HTTP/1.1", "Connection: keep-alive\r\n", None, True, 0),
                ("HTTP/1.1", "Connection: close\r\n", b"Connection: close", False, 1),
                ("HTTP/1.1", "Connection: Close\r\n", b"Connection: close", False, 1),
                ("HTTP/1.0", "Connection: keep-alive\r\n", b"Connection: Keep-Alive", True, 2),
                ("HTTP/1.0", "", None, False, 1)):
            lines, other, kept, slow = await exchange(version, extra)
            assert (other, kept, slow) == (payload, keeps, through_tornado), (version, extra)
            assert [x for x in lines if not x.startswith(b"Connection:")] == plain
            assert [x for x in lines if x.startswith(b"Connection:")] == ([line] if line else [])


def _lean_app(routes: list[Any], **settings: Any) -> Any:
    from service.config import Config
    from service.guard import GuardedApplication
    from service.metrics import Metrics
    from service.tracker import RequestTracker

    return GuardedApplication(routes, tracker=RequestTracker(), metrics=Metrics(),
                              config=Config.from_env({}), **settings)


class _Reads(SignedHandler):
    lean = True

    async def handle(self, req: SignedRequest) -> dict[str, Any]:
        return {}


def _overriding(name: str) -> type:
    """A lean handler that overrides `name`, one of what the lean path does not run."""
    def method(self: Any, *args: Any, **kw: Any) -> Any:
        return getattr(super(cls, self), name)(*args, **kw)

    cls = type(f"Overrides_{name}", (_Reads,), {name: method})
    return cls


@pytest.mark.parametrize("name", ["initialize", "prepare", "on_finish", "set_default_headers",
                                  "on_connection_close", "finish", "write", "flush", "post",
                                  "write_json", "compute_etag", "data_received", "clear",
                                  "check_xsrf_cookie"])
def test_a_lean_handler_overriding_what_the_lean_path_skips_is_refused_at_start_up(name):
    """Refused when the application is built, with a message naming the class and the method,
    not served differently; the same class with `lean = False` is accepted."""
    from service.lean import SKIPPED, LeanHandlerError

    assert name in SKIPPED
    cls = _overriding(name)
    with pytest.raises(LeanHandlerError, match=f"{cls.__name__} .*overrides {name}"):
        _lean_app([(r"/api/x", cls)])
    cls.lean = False  # type: ignore[attr-defined]
    assert _lean_app([(r"/api/x", cls)]).lean.routes == {}
    assert _lean_app([(r"/api/x", _Reads)]).lean.routes == {"/api/x": _Reads}


def test_lean_handlers_the_lean_path_cannot_serve_alike_are_refused():
    import tornado.web

    from service.lean import LeanHandlerError

    class NotLean(tornado.web.RequestHandler):
        lean = True

    @tornado.web.stream_request_body
    class Streams(_Reads):
        pass

    for routes, settings, message in (
            ([(r"/x", NotLean)], {}, "NotLean sets lean = True but is not a LeanHandler"),
            ([(r"/x", Streams)], {}, "Streams .*streams its body"),
            ([(r"/x", _Reads, {"a": 1})], {}, "_Reads .*initialize\\(\\) arguments"),
            ([(r"/x/([a-z]+)", _Reads)], {}, "_Reads .*pattern"),
            ([tornado.web.url(r"/x", _Reads)], {}, "_Reads .*tuple"),
            ([(r"/x", _Reads)], {"compress_response": True}, "compress_response"),
            ([(r"/x", _Reads)], {"xsrf_cookies": True}, "xsrf_cookies")):
        with pytest.raises(LeanHandlerError, match=message):
            _lean_app(routes, **settings)


@pytest.mark.gen_test(timeout=30)
async def test_the_service_refuses_to_start_with_such_a_handler(tmp_path):
    """Through the real start-up: a clear error, before listening."""
    from service.config import Config
    from service.lean import LeanHandlerError
    from service.server import Backend

    backend = Backend(Config.from_env(base_env(tmp_path)),
                      extra_routes=[(r"/api/prepares", _overriding("prepare"))])
    try:
        with pytest.raises(LeanHandlerError, match="Overrides_prepare .*overrides prepare"):
            await backend.start()
        assert backend.server is None  # never listened
    finally:
        await backend.stop()
