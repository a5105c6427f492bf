"""Shared test helpers: a real backend on a loopback port, real SQLite files, a real PostgreSQL
database created for the session, real signatures from the `stripe` library, and a session-wide
`localstripe` emulator."""

from __future__ import annotations

import contextlib
import json
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
from service.config import Config
from service.server import Backend

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: The app every test runs (never the shipped example app: editing it cannot break a test).
#: Its package imports by name too (setup.cfg's pytest `pythonpath` holds tests/apps).
SAMPLE_APP = os.path.join(ROOT, "tests", "apps", "sample_app")
#: What the backend walks for the sample app: the project's packages, then the app.
SAMPLE_PACKAGES = ("models", "jobs", SAMPLE_APP)
PG_ADMIN = os.environ.get("TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")

APP_SECRET = "absec_test" + "a" * 24
APP_SECRET_2 = "absec_test" + "b" * 24
WH_LIVE = "whsec_live" + "c" * 24
WH_LIVE_2 = "whsec_live" + "d" * 24
WH_TEST = "whsec_test" + "e" * 24


def sign_many(payload: str, secrets: list[str], timestamp: int | None = None) -> str:
    """One header with a v1 per secret (as Stripe sends while a secret is rolled)."""
    timestamp = timestamp or int(time.time())
    headers = [sign(payload, s, timestamp) for s in secrets]
    return ",".join([headers[0]] + [h.split(",", 1)[1] for h in headers[1:]])


def event(type_: str, account: str | None = "acct_1", livemode: bool = True,
          **kwargs: Any) -> dict[str, Any]:
    """`make_event`, for account acct_1 in live mode unless told otherwise."""
    return make_event(type_, account, livemode, **kwargs)


def base_env(tmp_path: Any, **extra: str) -> dict[str, str]:
    env = {
        "HOST": "127.0.0.1",
        "PORT": "0",
        "DATABASE_URL": f"sqlite:///{tmp_path}/app.db",
        "STRIPE_APP_SECRETS": APP_SECRET,
        "STRIPE_WEBHOOK_SECRETS_LIVE": WH_LIVE,
        "STRIPE_WEBHOOK_SECRETS_TEST": WH_TEST,
        "STRIPE_APP_ID": "com.example.testapp",
        "SHUTDOWN_TIMEOUT": "5",
        "APP_PACKAGES": SAMPLE_APP,
    }
    env.update(extra)
    return {k: v for k, v in env.items() if v is not None}


@pytest.fixture(autouse=True, scope="session")
def _sample_app_everywhere() -> Any:
    """`APP_PACKAGES` names the sample app for the whole session, so that a configuration read
    from the environment, and every command a test starts, runs it rather than the example."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("APP_PACKAGES", SAMPLE_APP)
        yield


#: (timestamp, body) of every signature `Running.signed` made in this test session: a backend
#: started again on the same database (or a second replica) remembers them too.
_SIGNED: set[tuple[int, bytes]] = set()


class Running:
    """A started Backend and an HTTP client pointed at it."""

    def __init__(self, backend: Backend, client: httpx.AsyncClient) -> None:
        self.backend = backend
        self.client = client
        self.url = f"http://127.0.0.1:{backend.port}"

    def fresh_signature(self, raw: bytes, secret: str = APP_SECRET) -> str:
        """A signature of `raw` no earlier call made, as the extension gets a new one per call:
        Stripe signs the timestamp, in seconds, and the body, so a body signed twice in one
        second would carry the same signature, which single-use endpoints refuse as a replay
        (service/signed.py). A repeat is signed a second (or more) earlier, well within the
        tolerance."""
        t = int(time.time())
        while (t, raw) in _SIGNED:
            t -= 1
        _SIGNED.add((t, raw))
        return sign(raw, secret, t)

    async def signed(self, path: str, body: dict | str | bytes, secret: str = APP_SECRET,
                     header: str | None = None, **kw: Any) -> httpx.Response:
        """POST `body` signed as the extension would (a new signature per call), or with
        `header` as given."""
        raw = body if isinstance(body, str | bytes) else compact(body)
        raw_b = raw.encode() if isinstance(raw, str) else raw
        sig = header if header is not None else self.fresh_signature(raw_b, secret)
        return await self.client.post(path, content=raw_b, headers={
            "Stripe-Signature": sig, "Content-Type": "application/json", **kw})

    async def webhook(self, ev: dict | str, secret: str = WH_LIVE,
                      header: str | None = None) -> httpx.Response:
        raw = ev if isinstance(ev, str) else json.dumps(ev, indent=2)
        sig = header if header is not None else sign(raw, secret)
        return await self.client.post("/webhooks", content=raw.encode(),
                                      headers={"Stripe-Signature": sig})

    async def settle(self, timeout: float = 30.0) -> None:
        """Wait until webhook processing started by this backend is done; fail after `timeout`
        seconds (a ceiling for a loaded machine: returning quietly instead would let the next
        assertion fail for a reason that is not the code's)."""
        import asyncio

        deadline = time.monotonic() + timeout
        while self.backend.events._tasks:
            assert time.monotonic() < deadline, f"webhook processing not done in {timeout}s"
            await asyncio.sleep(0.01)


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


async def wait_for(predicate: Any, timeout: float = 30.0, what: str = "condition") -> Any:
    """Await `predicate()` every 50 ms until it returns something true, and return that; fail
    after `timeout` seconds (a ceiling, measured on the monotonic clock, which injected test
    clocks do not move)."""
    import asyncio

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = await predicate()
        if result:
            return result
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what} not met in {timeout}s")


@contextlib.asynccontextmanager
async def running(env: dict[str, str], **kwargs: Any) -> AsyncIterator[Running]:
    config = Config.from_env(env)
    backend = Backend(config, **kwargs)
    await backend.start()
    client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{backend.port}", timeout=20)
    try:
        yield Running(backend, client)
    finally:
        await client.aclose()
        await backend.stop()


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
def localstripe() -> Any:
    """A real localstripe emulator on a free port, for the whole session, from scratch: its
    data lives in memory only, never in the machine-wide /tmp/localstripe.pickle that other
    runs share (see cli/emulator.py)."""
    from cli import emulator

    proc, url = emulator.start(0)
    yield url
    proc.terminate()
    proc.wait(5)
