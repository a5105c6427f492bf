"""Rejected webhook deliveries (issue 22, "Also"): each 400 of `POST /webhooks`, on the lean
path and the full one alike, is kept once (reason, headers as sent, the first 2 KiB of the body
and its size) in a table of the newest 100, which the status page shows; a flood is written in
a few small batches, not a transaction per request."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from conftest import WH_LIVE, base_env, event, running, sign

from models.rejected_webhooks import BODY_BYTES, KEEP, RejectedWebhook

TOKEN = "rej-Xq7Vb2Kp9Lm4Nz8Rt1Wc6Hd3Gf5Js0Ya"  # random-looking: the operator token rule
BEARER = {"Authorization": f"Bearer {TOKEN}"}


async def rows(app: Any) -> list[dict[str, Any]]:
    return await app.backend.storage.run(
        lambda: list(RejectedWebhook.select().order_by(RejectedWebhook.id).dicts()))


@pytest.mark.gen_test(timeout=60)
async def test_rejected_deliveries_are_kept_once_and_shown_on_the_status_page(tmp_path):
    async with running(base_env(tmp_path, OPERATOR_TOKEN=TOKEN)) as app:
        rejections = app.backend.app.settings["rejections"]
        good = json.dumps(event("invoice.paid"))
        long_body = "<script>" + "z" * 5000
        sent = [
            ("/webhooks", good, sign(good, "whsec_wrong"), "bad_signature"),  # lean path
            ("/webhooks?via=full", good, sign(good, "whsec_wrong"), "bad_signature"),
            ("/webhooks", long_body, sign(long_body, WH_LIVE), "bad_request: the body is not"),
        ]
        for path, body, header, _ in sent:
            resp = await app.client.post(path, content=body.encode(), headers={
                "Stripe-Signature": header, "X-Probe": "p" * 3000})
            assert resp.status_code == 400
        resp = await app.client.post("/webhooks", content=good.encode(),
                                     headers={"Stripe-Signature": sign(good, WH_LIVE)})
        assert resp.status_code == 200  # accepted deliveries are not kept
        await rejections.idle()
        kept = await rows(app)
        assert len(kept) == 3  # once each: the lean path's failure is not recorded again
        for row, (_, body, header, reason) in zip(kept, sent, strict=True):
            assert row["reason"].startswith(reason), row["reason"]
            headers = dict(json.loads(row["headers"]))
            assert headers["Stripe-Signature"] == header  # as sent, nothing more
            assert headers["X-Probe"] == "p" * 1024 + "..."  # bounded
            assert row["body"] == body[:BODY_BYTES] and row["body_size"] == len(body)
            assert row["remote"] == "127.0.0.1"
        status = await app.client.get("/status.json", headers=BEARER)
        shown = status.json()["rejected_webhooks"]
        assert [r["reason"] for r in shown] == [r["reason"] for r in reversed(kept)]
        assert ["Stripe-Signature", sent[0][2]] in shown[-1]["headers"]
        page = await app.client.get("/status", headers=BEARER)
        assert "Rejected webhook deliveries" in page.text
        assert "&lt;script&gt;zzz" in page.text and "<script>zzz" not in page.text


@pytest.mark.gen_test(timeout=60)
async def test_a_flood_is_written_in_few_batches_and_the_table_keeps_the_newest(
        tmp_path, monkeypatch):
    from service import rejections as module

    writes: list[int] = []
    real = module.record_rejections

    def counting(batch: list[dict[str, Any]], keep: int = KEEP) -> None:
        writes.append(len(batch))
        real(batch, keep)

    monkeypatch.setattr(module, "record_rejections", counting)
    async with running(base_env(tmp_path)) as app:
        log = app.backend.app.settings["rejections"]
        body = json.dumps(event("invoice.paid")).encode()
        # 300 bad deliveries from 10 connections at once, over about half a second
        async def send(n: int) -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", app.backend.port)
            try:
                for i in range(30):
                    writer.write(b"POST /webhooks HTTP/1.1\r\nHost: x\r\nContent-Length: "
                                 + str(len(body)).encode() + b"\r\nX-N: "
                                 + f"{n}-{i}".encode() + b"\r\nStripe-Signature: t=1,v1=00"
                                 + b"\r\n\r\n" + body)
                    head = await reader.readuntil(b"\r\n\r\n")
                    assert head.startswith(b"HTTP/1.1 400"), head
                    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                    await reader.readexactly(length)
            finally:
                writer.close()

        await asyncio.gather(*(send(n) for n in range(10)))
        await log.idle()
        assert sum(writes) + log.dropped == 300
        # at most one write a second (the first at once): the flood took well under 10 s
        assert len(writes) <= 10, writes
        kept = await rows(app)
        assert len(kept) == KEEP
        # after more rejections, still the newest KEEP
        for i in range(30):
            resp = await app.client.post("/webhooks", content=body,
                                         headers={"Stripe-Signature": "t=1,v1=00",
                                                  "X-N": f"last-{i}"})
            assert resp.status_code == 400
        await log.idle()
        kept = await rows(app)
        assert len(kept) == KEEP
        assert [dict(json.loads(r["headers"]))["X-N"] for r in kept[-30:]] == [
            f"last-{i}" for i in range(30)]
