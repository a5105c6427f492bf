"""Bounded connections (issue 13, section 3), black-box over loopback sockets: the connection
cap, the header timeout, and a server out of file descriptors (a subprocess with a low
RLIMIT_NOFILE) that neither spins nor floods its log."""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import socket
import subprocess
import sys
import time

import httpx
import pytest
from conftest import ROOT, base_env, free_port, read_response, running

from service.connections import BoundedHTTPServer

HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n"


async def closed_by_server(reader: asyncio.StreamReader, timeout: float = 10) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), timeout) == b""
    except ConnectionResetError:
        return True


@pytest.mark.gen_test(timeout=60)
async def test_connections_above_max_connections_are_refused_at_once(tmp_path, caplog):
    caplog.set_level(logging.WARNING, "app.connections")
    async with running(base_env(tmp_path, MAX_CONNECTIONS="5")) as app:
        conns = [await asyncio.open_connection("127.0.0.1", app.backend.port) for _ in range(5)]
        # the 5 are served (and so accepted and counted) before anything else is tried
        for reader, writer in conns:
            writer.write(HEALTHZ)
            assert (await read_response(reader))[0] == 200
        extra = [await asyncio.open_connection("127.0.0.1", app.backend.port) for _ in range(3)]
        for reader, _ in extra:
            assert await closed_by_server(reader)  # closed right after accept
        # the open ones still answer, /healthz and /metrics included
        reader, writer = conns[0]
        writer.write(HEALTHZ)
        assert (await read_response(reader))[0] == 200
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
        status, body = await read_response(reader)
        assert status == 200
        assert b'http_connections_refused_total{reason="max_connections"} 3.0' in body
        assert b"http_connections_open 5.0" in body
        # one log line for the three, no traceback
        lines = [r for r in caplog.records if r.name == "app.connections"]
        assert len(lines) == 1 and "MAX_CONNECTIONS=5" in lines[0].getMessage()
        assert not any(r.exc_info for r in caplog.records)
        # a freed place is taken again
        conns[1][1].close()
        deadline = time.monotonic() + 10
        while True:
            reader, writer = await asyncio.open_connection("127.0.0.1", app.backend.port)
            writer.write(HEALTHZ)
            try:
                assert (await read_response(reader))[0] == 200
                break
            except asyncio.IncompleteReadError:  # refused: the server has not seen the close
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
        for _, w in [*conns, *extra]:
            w.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_client_sending_half_its_headers_is_dropped(tmp_path):
    async with running(base_env(tmp_path), header_timeout=1.0) as app:
        reader, writer = await asyncio.open_connection("127.0.0.1", app.backend.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Slow: ")
        started = time.monotonic()
        assert await closed_by_server(reader, timeout=20)
        waited = time.monotonic() - started
        assert 0.9 <= waited < 10, waited
        # a client that sends its headers in time is served as ever
        resp = await app.client.get("/healthz")
        assert resp.status_code == 200
        writer.close()


def test_out_of_file_descriptors_neither_spins_nor_floods_the_log(tmp_path):
    """The server runs with a file limit of 48 (soft and hard, so it cannot raise it) and gets
    150 connections at once: it accepts what it can, waits for descriptors, uses little CPU,
    logs a line or two, and answers /healthz once the clients have gone."""
    limit, port = 48, free_port()

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    env = {k: v for k, v in os.environ.items() if not k.startswith("STRIPE_")}
    env.update(PORT=str(port), DATABASE_URL=f"sqlite:///{tmp_path}/app.db", SCHEDULER="off",
               DB_WORKERS="1")
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log_file:
        server = subprocess.Popen([sys.executable, os.path.join(ROOT, "run.py"), "serve"],
                                  cwd=tmp_path, env=env, stdout=log_file, stderr=log_file,
                                  preexec_fn=low_limit)
    clients: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.1)
        for _ in range(150):
            s = socket.create_connection(("127.0.0.1", port))
            clients.append(s)
        time.sleep(0.5)

        def cpu_seconds() -> float:
            with open(f"/proc/{server.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

        before, started = cpu_seconds(), time.monotonic()
        time.sleep(3)
        used = cpu_seconds() - before
        elapsed = time.monotonic() - started
        assert used < 0.3 * elapsed, f"{used:.2f}s of CPU in {elapsed:.1f}s"
        text = log_path.read_text()
        assert "Traceback" not in text and "Too many open files" not in text
        assert 1 <= text.count("out of file descriptors") <= 2, text
        assert len(text) < 10_000
        for s in clients:
            s.close()
        clients.clear()
        deadline = time.monotonic() + 30
        while True:
            try:
                assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
                break
            except (httpx.TransportError, AssertionError):
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.2)
    finally:
        for s in clients:
            s.close()
        server.terminate()
        server.wait(20)
    assert "open-file limit: 48" in log_path.read_text()


@pytest.mark.gen_test(timeout=30)
async def test_tcp_nodelay_is_on_for_the_whole_connection(tmp_path):
    """Set once when accepted and left on (Tornado would turn it off and on around every
    answer), on every accepted TCP connection, across keep-alive requests."""
    from service.connections import _NoDelayStream

    async with running(base_env(tmp_path)) as app:
        reader, writer = await asyncio.open_connection("127.0.0.1", app.backend.port)
        for _ in range(2):
            writer.write(HEALTHZ)
            await writer.drain()
            assert (await read_response(reader))[0] == 200
        streams = [conn.stream for conn in app.backend.server._connections]
        assert streams and all(type(s) is _NoDelayStream for s in streams)
        assert all(s.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for s in streams)
        writer.close()


def test_the_header_timeout_is_the_guards_alone():
    """Tornado's own header timeout is refused (it would wrap every header read in a timer of
    its own), and a header timeout must be more than 0 s."""
    from service.guard import Deadlines

    with pytest.raises(TypeError):
        BoundedHTTPServer(lambda request: None, idle_connection_timeout=5)
    assert BoundedHTTPServer(lambda request: None).conn_params.header_timeout is None
    for bad in (0, -1.0):
        with pytest.raises(ValueError):
            Deadlines(bad)
