"""Stalled bodies cannot pin memory (issue 23): the bytes of unfinished bodies in a process are
bounded by `MAX_BUFFERED_BYTES` (past it, 503 with `Retry-After`, nothing lost: a retry is
stored), and a body that stops arriving is cut after `BODY_IDLE_TIMEOUT`, while a slow one that
keeps arriving is answered. A real server on loopback, raw sockets."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from conftest import WH_LIVE, base_env, event, read_answer, running, sign


async def until(predicate: Any, what: str, timeout: float = 10) -> None:
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not reached: {what}")


async def connect(app: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", app.backend.port)


def assert_503(head: bytes, payload: bytes) -> None:
    assert head.startswith(b"HTTP/1.1 503"), head
    lines = head.lower().split(b"\r\n")
    assert b"retry-after: 5" in lines and b"connection: close" in lines, head
    assert json.loads(payload)["error"]["code"] == "unavailable"


@pytest.mark.gen_test(timeout=60)
async def test_past_max_buffered_bytes_new_bodies_get_503_and_retries_are_stored(tmp_path):
    async with running(base_env(tmp_path, MAX_BUFFERED_BYTES="200000")) as app:
        buffers = app.backend.app.buffers
        assert buffers.limit == 200000
        # one stalled body of 150,000 declared bytes, 100,000 of them sent
        stalled_r, stalled_w = await connect(app)
        stalled_w.write(b"POST /webhooks HTTP/1.1\r\nHost: x\r\nContent-Length: 150000\r\n\r\n"
                        + b"x" * 100000)
        await stalled_w.drain()
        await until(lambda: buffers.used == 100000, "the stalled body is held")
        # a new body that would not fit, by its Content-Length: refused before it is read
        raw = json.dumps(event("invoice.paid")).encode()
        big = raw + b" " * (150000 - len(raw))
        reader, writer = await connect(app)
        writer.write(b"POST /webhooks HTTP/1.1\r\nHost: x\r\nContent-Length: 150000\r\n"
                     b"Stripe-Signature: " + sign(big, WH_LIVE).encode() + b"\r\n\r\n")
        await writer.drain()
        assert_503(*await read_answer(reader))
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed
        writer.close()
        # a chunked body, refused by the chunk that would pass the limit
        reader, writer = await connect(app)
        writer.write(b"POST /webhooks HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                     + b"%x\r\n" % 150000 + b"y" * 150000 + b"\r\n")
        await writer.drain()
        assert_503(*await read_answer(reader))
        writer.close()
        assert buffers.used == 100000  # what the refused bodies held was given back
        # the stalled client goes: its bytes are given back, and Stripe's retry is stored
        stalled_w.close()
        await until(lambda: buffers.used == 0, "the stalled body is released")
        resp = await app.client.post("/webhooks", content=big,
                                     headers={"Stripe-Signature": sign(big, WH_LIVE)})
        assert resp.json() == {"received": True, "duplicate": False}
        assert buffers.used == 0
        assert app.backend.metrics.registry.get_sample_value("http_requests_total", {
            "handler": "BufferLimit", "method": "", "code": "503"}) == 2
        assert app.backend.tracker.in_flight == 0


@pytest.mark.gen_test(timeout=60)
async def test_a_stalled_body_is_cut_and_a_slow_progressing_one_is_answered(tmp_path,
                                                                           monkeypatch):
    from service import guard

    monkeypatch.setattr(guard, "BODY_IDLE_TIMEOUT", 0.4)  # BODY_TIMEOUT stays 60 s
    async with running(base_env(tmp_path)) as app:
        buffers = app.backend.app.buffers
        stalled_r, stalled_w = await connect(app)
        stalled_w.write(b"POST /webhooks HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nab")
        await stalled_w.drain()
        raw = json.dumps(event("invoice.paid")).encode()
        slow_r, slow_w = await connect(app)
        slow_w.write(b"POST /webhooks HTTP/1.1\r\nHost: x\r\nContent-Length: "
                     + str(len(raw)).encode() + b"\r\nStripe-Signature: "
                     + sign(raw, WH_LIVE).encode() + b"\r\n\r\n")
        loop = asyncio.get_running_loop()
        started = loop.time()
        step = max(1, len(raw) // 12)
        for i in range(0, len(raw), step):  # 12 pieces, 0.15 s apart: 1.8 s in all
            slow_w.write(raw[i:i + step])
            await slow_w.drain()
            await asyncio.sleep(0.15)
        head, payload = await read_answer(slow_r)
        assert loop.time() - started > 1.2  # well past the idle timeout, still answered
        assert head.startswith(b"HTTP/1.1 200"), head
        assert json.loads(payload) == {"received": True, "duplicate": False}
        # the stalled one was cut, without an answer, long before BODY_TIMEOUT
        assert await asyncio.wait_for(stalled_r.read(), 5) == b""
        slow_w.close()
        stalled_w.close()
        await until(lambda: buffers.used == 0 and app.backend.tracker.in_flight == 0,
                    "nothing held or in flight")
