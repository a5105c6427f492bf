"""`service/guard.py`'s deadlines: one sweep for every request waiting for its headers or its
body, which closes only the connections past their deadline, forgets the ones their clients
closed, and stops when nothing is waiting."""

from __future__ import annotations

import asyncio
import time

import pytest
from conftest import base_env, read_response, running


@pytest.mark.gen_test(timeout=30)
async def test_one_sweep_closes_only_the_late_body(tmp_path, monkeypatch):
    from service import guard

    monkeypatch.setattr(guard, "BODY_TIMEOUT", 0.4)
    async with running(base_env(tmp_path)) as app:  # headers: the default 10 s
        deadlines = app.backend.app.deadlines
        slow_r, slow_w = await asyncio.open_connection("127.0.0.1", app.backend.port)
        slow_w.write(b"POST /webhooks HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab")
        await slow_w.drain()
        # a keep-alive connection whose bodies arrive whole is answered, and stays open
        ok_r, ok_w = await asyncio.open_connection("127.0.0.1", app.backend.port)
        for _ in range(3):
            ok_w.write(b"POST /nowhere HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
            await ok_w.drain()
            assert (await read_response(ok_r, 5))[0] == 404
        # the slow body, and the idle connection's wait for its next request's headers
        assert len(deadlines) == 2
        assert await asyncio.wait_for(slow_r.read(), 5) == b""  # closed, no answer
        assert len(deadlines) == 1
        ok_w.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        await ok_w.drain()
        assert (await read_response(ok_r, 5))[0] == 200
        # a client that closes its idle connection is forgotten by the next sweep
        ok_w.close()
        await asyncio.sleep(0.3)  # a sweep every BODY_TIMEOUT / 4
        assert len(deadlines) == 0
        assert deadlines._timer is None  # nothing waiting: no timer left running
        slow_w.close()
        assert app.backend.tracker.in_flight == 0


@pytest.mark.gen_test(timeout=30)
async def test_an_idle_keep_alive_connection_is_closed_after_the_header_timeout(tmp_path):
    async with running(base_env(tmp_path), header_timeout=0.8) as app:
        reader, writer = await asyncio.open_connection("127.0.0.1", app.backend.port)
        for _ in range(3):  # requests within the timeout keep it open
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            assert (await read_response(reader, 5))[0] == 200
            await asyncio.sleep(0.4)
        idle_since = time.monotonic()
        assert await asyncio.wait_for(reader.read(), 5) == b""
        # within the timeout plus one sweep (a quarter of it)
        assert 0.3 <= time.monotonic() - idle_since < 0.8 + 0.2 + 0.5
        writer.close()
        assert len(app.backend.app.deadlines) == 0


@pytest.mark.gen_test(timeout=30)
async def test_a_connection_closed_after_its_answer_leaves_no_deadline(tmp_path):
    """Tornado starts one more request on a connection it closes after a `Connection: close`
    answer; that one waits for nothing, so nothing is left for the sweep to find."""
    async with running(base_env(tmp_path)) as app:
        for _ in range(5):
            reader, writer = await asyncio.open_connection("127.0.0.1", app.backend.port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            await writer.drain()
            assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 200")
            writer.close()
        await asyncio.sleep(0.05)  # the server's loop turns past each close
        assert len(app.backend.app.deadlines) == 0
