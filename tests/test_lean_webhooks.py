"""`POST /webhooks` on the lean path (`service/lean.py`): the same answers,
metrics and stored rows as the full handler path, the request in flight while its insert is
awaited, and HTTP semantics (keep-alive, `Expect: 100-continue`, 405) kept."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from typing import Any

import pytest
from conftest import (
    WH_LIVE,
    WH_TEST,
    base_env,
    event,
    read_answer,
    running,
    same_answer,
    sign,
)

from models.events import WebhookEvent, store_events


def sample(app: Any, name: str, labels: dict[str, str]) -> float:
    return app.backend.metrics.registry.get_sample_value(name, labels) or 0.0


def counts(app: Any) -> dict[str, float]:
    """Every webhook outcome label and the request counter by status, as they stand."""
    out = {label: sample(app, "webhook_events_total", {"outcome": label})
           for label in ("stored", "duplicate", "rejected", "store_failed")}
    for code in (200, 400, 503):
        out[str(code)] = sample(app, "http_requests_total", {
            "handler": "WebhookHandler", "method": "POST", "code": str(code)})
    return out


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in before if after[k] != before[k]}


async def post(app: Any, raw: str, header: str | None) -> Any:
    return await app.client.post("/webhooks", content=raw.encode(),
                                 headers={"Stripe-Signature": header} if header else {})


async def one_path(app: Any, lean: bool, raw: str, header: str | None) -> tuple[Any, dict]:
    """The answer on one path and what it counted."""
    saved = app.backend.app.lean
    if not lean:
        app.backend.app.lean = None
    try:
        before = counts(app)
        resp = await post(app, raw, header)
        return resp, delta(before, counts(app))
    finally:
        app.backend.app.lean = saved


def raw_event(type_: str = "invoice.paid", **kw: Any) -> str:
    return json.dumps(event(type_, **kw), indent=2)


async def stored_ids(app: Any) -> list[str]:
    return await app.backend.storage.run(
        lambda: sorted(e.id for e in WebhookEvent.select()))


@pytest.mark.gen_test(timeout=60)
async def test_every_answer_is_the_same_on_both_paths_and_counted_once(tmp_path):
    async with running(base_env(tmp_path, STRIPE_WEBHOOK_SECRETS_TEST=WH_TEST)) as app:
        assert app.backend.app.lean.routes["/webhooks"].__name__ == "WebhookHandler"
        good = raw_event()
        live_by_test = raw_event()
        bad: list[tuple[str, str | None, int, str]] = [
            (good, sign(good, "whsec_other"), 400, "rejected"),
            (good, None, 400, "rejected"),
            (good, "t=1,v0=abc", 400, "rejected"),
            (good.replace("invoice.paid", "invoice.void"), sign(good, WH_LIVE), 400,
             "rejected"),
            (live_by_test, sign(live_by_test, WH_TEST), 400, "rejected"),
        ]
        for body in ("{not json", json.dumps([1]), json.dumps({"object": "event"}),
                     json.dumps({**event("x.y"), "livemode": "yes"}),
                     json.dumps({**event("x.y"), "created": -1}),
                     '{"a": NaN}'):
            bad.append((body, sign(body, WH_LIVE), 400, ""))
        for raw, header, status, label in bad:
            lean, lean_counted = await one_path(app, True, raw, header)
            full, full_counted = await one_path(app, False, raw, header)
            assert lean.status_code == status, (raw[:40], lean.text)
            same_answer(lean, full)
            expected = {str(status): 1.0, **({label: 1.0} if label else {})}
            assert lean_counted == full_counted == expected, (raw[:40], lean_counted)
        # a new event on each path, then a redelivery of it on each path
        first, second = raw_event(), raw_event()
        answers = []
        for raw in (first, second):
            for lean in (True, False):
                answers.append(await one_path(app, lean, raw, sign(raw, WH_LIVE)))
        (new_lean, c1), (dup_full, c2), (new_full, c3), (dup_lean, c4) = answers
        same_answer(new_lean, new_full)
        same_answer(dup_lean, dup_full)
        assert new_lean.json() == {"received": True, "duplicate": False}
        assert dup_lean.json() == {"received": True, "duplicate": True}
        assert c1 == c3 == {"stored": 1.0, "200": 1.0}
        assert c2 == c4 == {"duplicate": 1.0, "200": 1.0}
        assert await stored_ids(app) == sorted(json.loads(r)["id"] for r in (first, second))
        assert app.backend.tracker.in_flight == 0
        assert app.backend.app.lean.failures == {}


@pytest.mark.gen_test(timeout=60)
async def test_not_configured_and_store_failure_are_the_same_503s(tmp_path):
    env = base_env(tmp_path, STRIPE_WEBHOOK_SECRETS_LIVE="", STRIPE_WEBHOOK_SECRETS_TEST="")
    async with running(env) as app:
        raw = raw_event()
        lean, lean_counted = await one_path(app, True, raw, sign(raw, WH_LIVE))
        full, full_counted = await one_path(app, False, raw, sign(raw, WH_LIVE))
        assert lean.status_code == 503 and lean.json()["error"]["code"] == "not_configured"
        same_answer(lean, full)
        assert lean_counted == full_counted == {"503": 1.0}
    async with running(base_env(tmp_path)) as app:
        con = sqlite3.connect(f"{tmp_path}/app.db")  # the real table away: inserts fail
        con.execute("ALTER TABLE webhook_event RENAME TO webhook_event_away")
        con.commit()
        try:
            raw = raw_event()
            lean, lean_counted = await one_path(app, True, raw, sign(raw, WH_LIVE))
            full, full_counted = await one_path(app, False, raw, sign(raw, WH_LIVE))
        finally:
            con.execute("ALTER TABLE webhook_event_away RENAME TO webhook_event")
            con.commit()
            con.close()
        assert lean.status_code == 503 and lean.json()["error"]["code"] == "unavailable"
        assert "webhook_event" not in lean.text
        same_answer(lean, full)
        # stored once per path: the full path re-raises the lean path's failure, unrun
        assert lean_counted == full_counted == {"store_failed": 1.0, "503": 1.0}
        assert app.backend.app.lean.failures == {}
        assert await stored_ids(app) == []
        # Stripe retries: stored now, on the lean path
        resp = await post(app, raw, sign(raw, WH_LIVE))
        assert resp.json() == {"received": True, "duplicate": False}
        assert await stored_ids(app) == [json.loads(raw)["id"]]


def hold_writer(app: Any) -> threading.Event:
    """Block the database's writer thread until the returned event is set."""
    gate = threading.Event()
    app.backend.storage._writer.submit(gate.wait, 30)
    return gate


def waiting(app: Any) -> int:
    """Webhooks waiting for their group commit."""
    return app.backend.storage.grouped(store_events).waiting


async def until(predicate: Any, what: str) -> None:
    for _ in range(3000):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not reached: {what}")


def request_bytes(raw: str, extra: str = "") -> tuple[bytes, bytes]:
    body = raw.encode()
    head = (f"POST /webhooks HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
            f"Stripe-Signature: {sign(raw, WH_LIVE)}\r\n{extra}\r\n").encode()
    return head, body


@pytest.mark.parametrize("lean", [True, False])
@pytest.mark.gen_test(timeout=60)
async def test_in_flight_while_the_insert_is_awaited_then_answered(tmp_path, lean):
    async with running(base_env(tmp_path)) as app:
        if not lean:
            app.backend.app.lean = None
        tracker = app.backend.tracker
        gate = hold_writer(app)
        raw = raw_event()
        head, body = request_bytes(raw)
        reader, writer = await asyncio.open_connection("127.0.0.1", app.backend.port)
        try:
            writer.write(head + body)
            await until(lambda: waiting(app) == 1, "the insert is queued")
            assert tracker.in_flight == 1
            assert not await tracker.wait_idle(0.05)  # a graceful stop would wait for it
            gate.set()
            answer, payload = await read_answer(reader)
            assert answer.startswith(b"HTTP/1.1 200"), answer
            assert json.loads(payload) == {"received": True, "duplicate": False}
            assert await tracker.wait_idle(5)
        finally:
            gate.set()
            writer.close()
        assert await stored_ids(app) == [json.loads(raw)["id"]]


@pytest.mark.parametrize("lean", [True, False])
@pytest.mark.gen_test(timeout=60)
async def test_a_client_gone_while_the_insert_is_awaited(tmp_path, lean):
    async with running(base_env(tmp_path)) as app:
        if not lean:
            app.backend.app.lean = None
        tracker = app.backend.tracker
        gate = hold_writer(app)
        raw = raw_event()
        head, body = request_bytes(raw)
        reader, writer = await asyncio.open_connection("127.0.0.1", app.backend.port)
        writer.write(head + body)
        await until(lambda: waiting(app) == 1, "the insert is queued")
        assert tracker.in_flight == 1
        writer.close()
        await asyncio.sleep(0.1)
        assert tracker.in_flight == 1  # in flight until its insert is done, on both paths
        before = counts(app)
        gate.set()
        await until(lambda: tracker.in_flight == 0, "the request ends")
        assert delta(before, counts(app)) == {"stored": 1.0, "200": 1.0}
        assert await stored_ids(app) == [json.loads(raw)["id"]]  # stored once, for a retry
        again = await post(app, raw, sign(raw, WH_LIVE))  # the server still answers
        assert again.json() == {"received": True, "duplicate": True}


@pytest.mark.gen_test(timeout=60)
async def test_keep_alive_expect_continue_and_other_methods(tmp_path):
    async with running(base_env(tmp_path)) as app:
        reader, writer = await asyncio.open_connection("127.0.0.1", app.backend.port)
        try:
            raws = [raw_event(), raw_event()]
            head, body = request_bytes(raws[0], "Expect: 100-continue\r\n")
            writer.write(head)
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 100")
            writer.write(body)
            answer, payload = await read_answer(reader)
            assert answer.startswith(b"HTTP/1.1 200") and b"close" not in answer.lower()
            head, body = request_bytes(raws[1])  # the same connection answers again
            writer.write(head + body)
            answer, payload = await read_answer(reader)
            assert answer.startswith(b"HTTP/1.1 200"), answer
            assert json.loads(payload) == {"received": True, "duplicate": False}
        finally:
            writer.close()
        assert await stored_ids(app) == sorted(json.loads(r)["id"] for r in raws)
        for method in ("GET", "HEAD", "OPTIONS", "PUT"):
            resp = await app.client.request(method, "/webhooks")
            assert resp.status_code == 405, method
            assert resp.headers["allow"] == "POST"
        query = raw_event()
        resp = await app.client.post("/webhooks?x=1", content=query.encode(),
                                     headers={"Stripe-Signature": sign(query, WH_LIVE)})
        assert resp.json() == {"received": True, "duplicate": False}  # the full path
