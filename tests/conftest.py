"""Shared test helpers: a real backend on a loopback port, real SQLite files, a real PostgreSQL
database created for the session, real signatures from the `stripe` library, and a session-wide
`localstripe` emulator."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import peewee as pw
import pytest

from cli.devtools import compact, free_port, make_event, sign  # noqa: F401 (for the tests)
from stripe_app_backend import harness
from stripe_app_backend.harness import (  # noqa: F401 (the shared harness, for the tests)
    APP_SECRET,
    APP_SECRET_2,
    WH_LIVE,
    WH_LIVE_2,
    WH_TEST,
    Running,
    event,
    running,
    wait_for,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: The app every test runs (never the shipped example app: editing it cannot break a test).
#: Its package imports by name too (setup.cfg's pytest `pythonpath` holds tests/apps).
SAMPLE_APP = os.path.join(ROOT, "tests", "apps", "sample_app")
#: What the backend walks for the sample app: the project's packages, then the app.
SAMPLE_PACKAGES = ("models", "jobs", SAMPLE_APP)
PG_ADMIN = os.environ.get("TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def sign_many(payload: str, secrets: list[str], timestamp: int | None = None) -> str:
    """One header with a v1 per secret (as Stripe sends while a secret is rolled)."""
    timestamp = timestamp or int(time.time())
    headers = [sign(payload, s, timestamp) for s in secrets]
    return ",".join([headers[0]] + [h.split(",", 1)[1] for h in headers[1:]])


def base_env(tmp_path: Any, **extra: str | None) -> dict[str, str]:
    """The harness's configuration (`stripe_app_backend.harness.base_env`), running the sample
    app unless `extra` says otherwise."""
    return harness.base_env(tmp_path, **{"APP_PACKAGES": SAMPLE_APP, **extra})


@pytest.fixture(autouse=True, scope="session")
def _sample_app_everywhere() -> Any:
    """`APP_PACKAGES` names the sample app for the whole session, so that a configuration read
    from the environment, and every command a test starts, runs it rather than the example."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("APP_PACKAGES", SAMPLE_APP)
        yield


def start_server(args: list[str], env: dict[str, str], port: int) -> subprocess.Popen:
    """Start `python <args>` (a server of this project on `port`) and wait until its
    `/healthz` answers 200; kill it and fail if it does not within 30 s."""
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.05)
    proc.kill()
    raise AssertionError("server did not start")


async def read_answer(reader: Any, timeout: float = 10.0) -> tuple[bytes, bytes]:
    """One HTTP/1.1 answer read off a raw connection (an `asyncio.StreamReader`): its head
    (status line and headers) and its body, by its `Content-Length`."""
    import asyncio

    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    return head, await asyncio.wait_for(reader.readexactly(length), timeout)


async def read_response(reader: Any, timeout: float = 10.0) -> tuple[int, bytes]:
    """`read_answer`'s status code and body."""
    head, body = await read_answer(reader, timeout)
    return int(head.split(b" ", 2)[1]), body


@contextlib.asynccontextmanager
async def server_child(script: str, env: dict[str, str]
                       ) -> AsyncIterator[tuple[subprocess.Popen[bytes], httpx.AsyncClient]]:
    """`python <script>` (a server of this project on `env["PORT"]`) as a child, with a client
    for it, once its `/healthz` answers 200; stopped with SIGTERM (SIGKILL after 20 s). A child
    that exits while starting fails the test with the end of what it wrote to stderr."""
    import asyncio
    import tempfile

    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen([sys.executable, script], cwd=ROOT, env={**os.environ, **env},
                                stdout=subprocess.DEVNULL, stderr=errors)
        client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{env['PORT']}", timeout=10)

        async def up() -> bool:
            if proc.poll() is not None:
                errors.seek(0)
                raise AssertionError(f"the server exited: {errors.read()[-2000:]!r}")
            try:
                return (await client.get("/healthz")).status_code == 200
            except httpx.TransportError:
                return False
        try:
            await wait_for(up, 30, "the server answers")
            yield proc, client
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.to_thread(proc.wait, 20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
            await client.aclose()


#: Headers an answer on the lean path (service/lean.py) must share with the full path's.
SAME_HEADERS = ("content-type", "x-content-type-options", "cache-control",
                "access-control-allow-origin", "content-length", "allow")


def same_answer(a: httpx.Response, b: httpx.Response) -> None:
    """Assert two answers (one per path) are alike: status, body and `SAME_HEADERS`."""
    assert a.status_code == b.status_code
    assert a.content == b.content
    for name in SAME_HEADERS:
        assert a.headers.get(name) == b.headers.get(name), name
    assert "date" in a.headers and "server" not in a.headers


def sigterm_while_half_received(proc: subprocess.Popen, port: int, body: bytes) -> bytes:
    """Send a signed `POST /api/installation` with part of its body, SIGTERM the server once it
    counts the request in flight, check it stops accepting yet stays up, send the rest, and
    return the raw answer (read to its JSON body's end)."""
    head = (f"POST /api/installation HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
            f"Stripe-Signature: {sign(body, APP_SECRET)}\r\n"
            "Content-Type: application/json\r\n\r\n").encode()
    conn = socket.create_connection(("127.0.0.1", port))
    try:
        conn.sendall(head + body[:10])  # headers and part of the body: in flight
        wait_until_in_flight(port, 1)
        proc.send_signal(signal.SIGTERM)
        wait_until_closed(port)  # no longer accepting new connections
        assert proc.poll() is None, "exited while a request was in flight"
        conn.sendall(body[10:])
        conn.settimeout(10)
        data = b""
        while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
        return data
    finally:
        conn.close()


def wait_until_in_flight(port: int, requests: int) -> None:
    """Wait until the server counts `requests` requests in flight besides this probe (a sleep
    would race a loaded machine: SIGTERM before the server read the headers drops them). Each
    probe is a new connection, so with WORKERS=N every worker's own count is seen in turn."""
    deadline = time.time() + 20
    while True:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        line = next(x for x in text.splitlines() if x.startswith("http_requests_in_flight "))
        if float(line.split()[1]) >= requests + 1:
            return
        assert time.time() < deadline, line
        time.sleep(0.05)


def wait_until_closed(port: int) -> None:
    """Wait until the listening socket is closed (new connections refused)."""
    deadline = time.time() + 20
    while True:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) != 0:
                return
        assert time.time() < deadline, "still accepting connections after SIGTERM"
        time.sleep(0.05)


# ---- PostgreSQL ------------------------------------------------------------------------------

def _pg_admin() -> pw.PostgresqlDatabase:
    from playhouse.db_url import connect

    return connect(PG_ADMIN)


@pytest.fixture(scope="session")
def pg_server() -> str:
    """The admin URL of the local PostgreSQL (started if it is installed but down)."""
    try:
        db = _pg_admin()
        db.connect()
        db.close()
    except pw.OperationalError:
        if shutil.which("pg_ctlcluster") and os.path.isdir("/etc/postgresql"):
            version = sorted(os.listdir("/etc/postgresql"))[-1]
            subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main",
                            "start"], check=False)
            time.sleep(2)
        db = _pg_admin()
        db.connect()
        db.close()
    return PG_ADMIN


@contextlib.contextmanager
def fresh_pg_database(admin_url: str) -> Any:
    name = "app_test_" + uuid.uuid4().hex[:12]
    admin = _pg_admin()
    admin.connect()
    admin.execute_sql(f"CREATE DATABASE {name}")
    try:
        yield admin_url.rsplit("/", 1)[0] + "/" + name, name
    finally:
        admin.execute_sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        admin.execute_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


@pytest.fixture
def pg_url(pg_server: str) -> Any:
    with fresh_pg_database(pg_server) as (url, _):
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: Any, tmp_path: Any) -> str:
    """Each test using this runs on a fresh SQLite file and on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/models.db"
    return request.getfixturevalue("pg_url")


# ---- localstripe -----------------------------------------------------------------------------

@pytest.fixture(scope="session")
def localstripe(stripe_emulator: str) -> str:
    """A real localstripe emulator on a free port, for the whole session, from scratch: its
    data lives in memory only, never in the machine-wide /tmp/localstripe.pickle that other
    runs share (see cli/emulator.py). The test kit's own (`stripe_app_backend.testing`)."""
    return stripe_emulator
