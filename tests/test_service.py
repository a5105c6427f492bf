"""The frame: health, metrics, JSON errors, body limits, start-up validation (issue 2)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest
import tornado.web
from conftest import ROOT, _pg_admin, base_env, fresh_pg_database, running
from test_install import callback_params
from test_install import start as start_install

from service.base import BaseHandler


class PlainHandler(tornado.web.RequestHandler):
    """A route an app developer might add without deriving from BaseHandler."""

    def get(self) -> None:
        self.finish("plain")


class OpenHandler(BaseHandler):
    """A CORS endpoint outside /api/: the handler's flag, not the path, decides CORS."""

    cors = True

    def post(self) -> None:
        self.write_json({"ok": True})


@pytest.mark.gen_test(timeout=30)
async def test_health_reports_database_and_scheduler(tmp_path):
    async with running(base_env(tmp_path)) as app:
        resp = await app.client.get("/healthz")
        assert resp.status_code == 200
        body = resp.json()
        assert body["status"] == "ok"
        assert body["database"]["ok"] is True
        assert body["scheduler"]["running"] is True
        assert "access-control-allow-origin" not in resp.headers
        assert os.path.exists(tmp_path / "app.db")  # created on first start


@pytest.mark.gen_test(timeout=60)
async def test_health_503_when_database_is_gone(tmp_path, pg_server):
    with fresh_pg_database(pg_server) as (url, name):
        async with running(base_env(tmp_path, DATABASE_URL=url)) as app:
            assert (await app.client.get("/healthz")).status_code == 200
            admin = _pg_admin()
            admin.connect()
            # FORCE ends the backend's connections and drops in one step: its background work
            # (pollers, lease renewal) would otherwise reconnect between the two
            admin.execute_sql(f"DROP DATABASE {name} WITH (FORCE)")
            admin.close()
            resp = await app.client.get("/healthz")
            assert resp.status_code == 503
            assert resp.json()["status"] == "unavailable"
            assert resp.json()["database"]["ok"] is False
            # a request that needs the database says so as JSON, without internals (an
            # install link needs none since issue 13: its callback does)
            state, _ = await start_install(app.client)
            resp = await app.client.get("/callback/stripe", params=callback_params(state))
            assert resp.status_code == 503
            assert resp.json()["error"]["code"] == "database_unavailable"
            assert "Traceback" not in resp.text and "psycopg" not in resp.text


@pytest.mark.gen_test(timeout=30)
async def test_metrics_exposition(tmp_path):
    async with running(base_env(tmp_path)) as app:
        await app.client.get("/healthz")
        await app.client.get("/nowhere")
        await asyncio.sleep(0.6)  # one loop-lag sample
        resp = await app.client.get("/metrics")
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/plain")
        text = resp.text
        assert 'http_requests_total{code="200",handler="HealthHandler",method="GET"} 1.0' in text
        assert 'http_requests_total{code="404",handler="NotFoundHandler",method="GET"} 1.0' in text
        assert 'http_request_duration_seconds_bucket{handler="HealthHandler",le="+Inf"} 1.0' in text
        assert "event_loop_lag_seconds " in text
        assert "event_loop_lag_seconds_distribution_count" in text
        assert "db_calls_pending 0.0" in text
        assert 'installations_active{mode="live"} 0.0' in text


@pytest.mark.gen_test(timeout=30)
async def test_any_handler_class_ends_its_request_and_is_counted(tmp_path):
    async with running(base_env(tmp_path), extra_routes=[(r"/plain", PlainHandler)]) as app:
        for _ in range(2):
            resp = await app.client.get("/plain")
            assert resp.status_code == 200 and resp.text == "plain"
            assert app.backend.tracker.in_flight == 0
        text = app.backend.metrics.exposition().decode()
        assert 'http_requests_total{code="200",handler="PlainHandler",method="GET"} 2.0' in text
        assert 'http_request_duration_seconds_count{handler="PlainHandler"} 2.0' in text


@pytest.mark.gen_test(timeout=30)
async def test_json_404_and_405(tmp_path):
    async with running(base_env(tmp_path)) as app:
        resp = await app.client.get("/no/such/thing")
        assert resp.status_code == 404
        assert resp.json() == {"error": {"code": "not_found", "message": "no such endpoint"}}
        resp = await app.client.delete("/healthz")
        assert resp.status_code == 405
        assert resp.json()["error"]["code"] == "method_not_allowed"
        resp = await app.client.get("/webhooks")
        assert resp.status_code == 405
        assert resp.headers["content-type"].startswith("application/json")


async def _raw_request(port: int, head: bytes, body: bytes = b"") -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head + body)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(65536), 10)
    writer.close()
    return data


@pytest.mark.gen_test(timeout=30)
async def test_413_before_the_body_is_read(tmp_path):
    async with running(base_env(tmp_path, MAX_BODY_SIZE="2048")) as app:
        # declares 10 MB and sends none of it: answered at once, from the headers alone
        head = (b"POST /webhooks HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n"
                b"Content-Type: application/json\r\n\r\n")
        data = await _raw_request(app.backend.port, head)
        assert data.startswith(b"HTTP/1.1 413")
        assert b'"code":"body_too_large"' in data
        # a chunked body that grows past the limit is cut off too
        head = b"POST /api/whoami HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        chunk = b"800\r\n" + b"x" * 2048 + b"\r\n"
        data = await _raw_request(app.backend.port, head, chunk * 2)
        assert data.startswith(b"HTTP/1.1 413")
        assert b"access-control-allow-origin: *" in data.lower()
        # the server is still fine afterwards
        assert (await app.client.get("/healthz")).status_code == 200


@pytest.mark.gen_test(timeout=30)
async def test_a_refused_body_ends_its_request_once(tmp_path):
    async with running(base_env(tmp_path, MAX_BODY_SIZE="2048")) as app:
        head = b"POST /webhooks HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n"
        assert (await _raw_request(app.backend.port, head)).startswith(b"HTTP/1.1 413")
        head = b"POST /webhooks HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        chunk = b"800\r\n" + b"x" * 2048 + b"\r\n"
        assert (await _raw_request(app.backend.port, head, chunk * 2)).startswith(
            b"HTTP/1.1 413")
        assert app.backend.tracker.in_flight == 0
        text = app.backend.metrics.exposition().decode()
        assert 'http_requests_total{code="413",handler="BodyLimit",method=""} 2.0' in text


@pytest.mark.gen_test(timeout=30)
async def test_413_has_cors_when_the_routed_handler_has(tmp_path):
    env = base_env(tmp_path, MAX_BODY_SIZE="2048")
    async with running(env, extra_routes=[(r"/open", OpenHandler)]) as app:
        assert (await app.client.post("/open")).headers["access-control-allow-origin"] == "*"
        for path, cors in (("/api/whoami", True), ("/open", True), ("/webhooks", False),
                           ("/nowhere", False)):
            head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n"
                    .encode())
            data = await _raw_request(app.backend.port, head)
            assert data.startswith(b"HTTP/1.1 413"), path
            assert (b"access-control-allow-origin: *" in data.lower()) is cors, path
            assert b"content-type: application/json; charset=utf-8" in data.lower()
        # without a Host header nothing can be routed: still a 413, without CORS
        data = await _raw_request(app.backend.port,
                                  b"POST /open HTTP/1.1\r\nContent-Length: 10000000\r\n\r\n")
        assert data.startswith(b"HTTP/1.1 413")
        assert b"access-control-allow-origin" not in data.lower()
        assert app.backend.tracker.in_flight == 0
        assert (await app.client.get("/healthz")).status_code == 200


@pytest.mark.gen_test(timeout=30)
async def test_a_trickled_body_times_out(tmp_path, monkeypatch):
    from service import guard

    monkeypatch.setattr(guard, "BODY_TIMEOUT", 0.5)
    async with running(base_env(tmp_path)) as app:
        reader, writer = await asyncio.open_connection("127.0.0.1", app.backend.port)
        writer.write(b"POST /webhooks HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab")
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 5)  # closed by the server, no answer
        writer.close()
        assert data == b""
        assert app.backend.tracker.in_flight == 0
        assert (await app.client.get("/healthz")).status_code == 200


@pytest.mark.gen_test(timeout=30)
async def test_bad_content_length_is_400(tmp_path, caplog):
    async with running(base_env(tmp_path)) as app:
        head = b"POST /webhooks HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n"
        data = await _raw_request(app.backend.port, head)
        assert data.startswith(b"HTTP/1.1 400")
        # "\xb2" (superscript two) passes str.isdigit but not int(): a 400 too, no traceback
        head = b"POST /webhooks HTTP/1.1\r\nHost: x\r\nContent-Length: \xb2\r\n\r\n"
        data = await _raw_request(app.backend.port, head)
        assert data.startswith(b"HTTP/1.1 400")
        assert "Traceback" not in caplog.text
        assert app.backend.tracker.in_flight == 0


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("STRIPE_")}
    full.update(env)
    return subprocess.run([sys.executable, "run.py", *args], cwd=ROOT, env=full,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("name,value", [
    ("PORT", "eighty"),
    ("SIGNATURE_TOLERANCE", "-5"),
    ("STRIPE_APP_SECRETS", "sk_live_wrongkind"),
    ("STRIPE_WEBHOOK_SECRETS_TEST", "whsec_ok1,notasecret"),
    ("STRIPE_SECRET_KEY_LIVE", "sk_test_modemismatch"),
    ("SCHEDULER", "maybe"),
    ("DATABASE_URL", "mysql://x"),
    ("STRIPE_API_BASE", "localhost:8420"),
])
def test_malformed_variable_stops_start_up(tmp_path, name, value):
    env = {"DATABASE_URL": f"sqlite:///{tmp_path}/x.db", "PORT": "0", name: value}
    result = _run([], env)
    assert result.returncode == 2
    assert name in result.stderr
    assert "Traceback" not in result.stderr
    if name.startswith("STRIPE_") and "SECRET" in name:
        assert value.split(",")[-1] not in result.stderr  # never echo a secret


def test_json_logs_are_one_object_per_line(capsys):
    import json
    import logging

    from service.logs import setup_logging

    setup_logging("json", "info")
    try:
        logging.getLogger("app.test").warning("stored %s", "evt_1", extra={"status": 400})
        line = capsys.readouterr().err.strip().splitlines()[-1]
        record = json.loads(line)
        assert record["msg"] == "stored evt_1" and record["level"] == "warning"
        assert record["status"] == 400 and record["logger"] == "app.test"
    finally:
        logging.getLogger().handlers[:] = []


def test_start_up_failures_are_one_clear_line(tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = _run([], {"DATABASE_URL": f"sqlite:///{tmp_path}/x.db", "PORT": str(port)})
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
    result = _run([], {"DATABASE_URL": "postgresql://postgres:hunter2@127.0.0.1:1/nope",
                       "PORT": "0"})
    assert result.returncode == 1
    assert "the database (DATABASE_URL) is not reachable" in result.stderr
    assert "Traceback" not in result.stderr and "hunter2" not in result.stderr


def test_help_lists_commands_and_variables():
    result = _run(["--help"], {})
    assert result.returncode == 0
    for word in ("serve", "migrate", "install-link", "jobs", "events", "simulate", "dev",
                 "DATABASE_URL", "STRIPE_APP_SECRETS", "SIGNATURE_TOLERANCE", "SCHEDULER"):
        assert word in result.stdout


def test_migrate_command(tmp_path):
    env = {"DATABASE_URL": f"sqlite:///{tmp_path}/m.db"}
    first = _run(["migrate"], env)
    assert first.returncode == 0, first.stderr
    assert "001_initial" in first.stdout
    again = _run(["migrate"], env)
    assert "up to date" in again.stdout
