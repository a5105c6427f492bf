"""`service/guard.py`'s body deadlines: one sweep for every request whose body is arriving,
which closes only the connections past their deadline and stops when no body is arriving."""

from __future__ import annotations

import asyncio

import pytest
from conftest import base_env, running


@pytest.mark.gen_test(timeout=30)
async def test_one_sweep_closes_only_the_late_body(tmp_path, monkeypatch):
    from service import guard

    monkeypatch.setattr(guard, "BODY_TIMEOUT", 0.4)
    async with running(base_env(tmp_path)) as app:
        deadlines = app.backend.app.deadlines
        slow_r, slow_w = await asyncio.open_connection("127.0.0.1", app.backend.port)
        slow_w.write(b"POST /webhooks HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab")
        await slow_w.drain()
        # a keep-alive connection whose bodies arrive whole is answered, and stays open
        ok_r, ok_w = await asyncio.open_connection("127.0.0.1", app.backend.port)
        for _ in range(3):
            ok_w.write(b"POST /nowhere HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
            await ok_w.drain()
            head = await asyncio.wait_for(ok_r.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 404")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await ok_r.readexactly(length)
        assert len(deadlines) == 1  # only the slow body is waited for
        assert await asyncio.wait_for(slow_r.read(), 5) == b""  # closed, no answer
        assert len(deadlines) == 0
        await asyncio.sleep(0.3)
        assert deadlines._timer is None  # nothing arriving: no timer left running
        ok_w.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        await ok_w.drain()
        assert (await asyncio.wait_for(ok_r.readuntil(b"\r\n\r\n"), 5)).startswith(
            b"HTTP/1.1 200")
        for w in (slow_w, ok_w):
            w.close()
        assert app.backend.tracker.in_flight == 0
