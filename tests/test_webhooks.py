"""Webhooks: verified, durable, exactly once, safe against disorder (issue 5)."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from conftest import (
    SAMPLE_PACKAGES,
    WH_LIVE,
    WH_LIVE_2,
    WH_TEST,
    _pg_admin,
    base_env,
    event,
    fresh_pg_database,
    running,
    sign,
    sign_many,
)
from sample_app.balance_snapshot import BalanceSnapshot

from jobs.registry import Registry
from models.events import WebhookEvent
from models.installation import Installation

AUTH = "account.application.authorized"
DEAUTH = "account.application.deauthorized"


def counting_registry(fail_times: int = 0) -> tuple[Registry, list[str]]:
    calls: list[str] = []

    async def handler(ctx):
        calls.append(ctx.event["id"])
        if len(calls) <= fail_times:
            raise RuntimeError(f"boom {len(calls)}")

    registry = Registry.discover(SAMPLE_PACKAGES)
    registry.handlers.setdefault("customer.created", []).append(handler)
    return registry, calls


async def installed(app, account: str, mode: str) -> None:
    """Install the app on `account` in `mode` (handlers run only for installed accounts)."""
    from models.installation import Change, InstallChange

    await app.backend.installations.apply(InstallChange(account, mode, Change.INSTALLED,
                                                        int(time.time()) - 60, "setup"))


async def rows(app, model, *where):
    return await app.backend.storage.run(lambda: list(model.select().where(*where))
                                         if where else list(model.select()))


@pytest.mark.gen_test(timeout=30)
async def test_authorized_event_is_stored_and_installs(tmp_path):
    async with running(base_env(tmp_path)) as app:
        ev = event(AUTH, "acct_9", livemode=True)
        resp = await app.webhook(ev)
        assert resp.status_code == 200
        assert resp.json() == {"received": True, "duplicate": False}
        assert "access-control-allow-origin" not in resp.headers
        await app.settle()
        (stored,) = await rows(app, WebhookEvent)
        assert stored.id == ev["id"] and stored.status == "processed" and stored.livemode
        assert stored.payload == json.dumps(ev, indent=2)  # the raw body, byte for byte
        assert app.backend.installations.is_active("acct_9", "live")
        assert not app.backend.installations.is_active("acct_9", "test")
        (inst,) = await rows(app, Installation)
        assert inst.confirmed and inst.active


@pytest.mark.gen_test(timeout=30)
async def test_duplicate_delivery_sequential_and_concurrent(tmp_path):
    registry, calls = counting_registry()
    async with running(base_env(tmp_path), registry=registry) as app:
        await installed(app, "acct_1", "test")
        ev = event("customer.created", "acct_1", livemode=False)
        first = await app.webhook(ev, secret=WH_TEST)
        second = await app.webhook(ev, secret=WH_TEST)
        assert first.json()["duplicate"] is False and second.json()["duplicate"] is True
        ev2 = event("customer.created", "acct_1", livemode=False)
        answers = await asyncio.gather(*(app.webhook(ev2, secret=WH_TEST) for _ in range(12)))
        assert all(a.status_code == 200 for a in answers)
        assert sorted(a.json()["duplicate"] for a in answers) == [False] + [True] * 11
        await app.settle()
        assert sorted(calls) == sorted([ev["id"], ev2["id"]])  # each processed once
        assert len(await rows(app, WebhookEvent)) == 2


@pytest.mark.gen_test(timeout=30)
async def test_live_event_signed_with_the_test_secret_is_refused(tmp_path):
    async with running(base_env(tmp_path)) as app:
        resp = await app.webhook(event(AUTH, "acct_1", livemode=True), secret=WH_TEST)
        assert resp.status_code == 400
        assert resp.json()["error"]["code"] == "bad_signature"
        assert await rows(app, WebhookEvent) == []
        assert not app.backend.installations.is_active("acct_1")


@pytest.mark.gen_test(timeout=30)
async def test_test_event_at_the_live_endpoint_keeps_its_mode(tmp_path):
    async with running(base_env(tmp_path)) as app:
        resp = await app.webhook(event(AUTH, "acct_1", livemode=False), secret=WH_LIVE)
        assert resp.status_code == 200
        await app.settle()
        assert app.backend.installations.is_active("acct_1", "test")
        assert not app.backend.installations.is_active("acct_1", "live")


@pytest.mark.gen_test(timeout=30)
async def test_both_secrets_of_a_mode_while_rolling(tmp_path):
    env = base_env(tmp_path, STRIPE_WEBHOOK_SECRETS_LIVE=f"{WH_LIVE},{WH_LIVE_2}")
    async with running(env) as app:
        for header_of in (lambda raw: sign(raw, WH_LIVE), lambda raw: sign(raw, WH_LIVE_2),
                          lambda raw: sign_many(raw, [WH_LIVE, WH_LIVE_2])):
            raw = json.dumps(event("invoice.paid"), indent=2)
            resp = await app.webhook(raw, header=header_of(raw))
            assert resp.status_code == 200
        assert len(await rows(app, WebhookEvent)) == 3


@pytest.mark.gen_test(timeout=30)
async def test_verification_failures_are_400(tmp_path):
    async with running(base_env(tmp_path, MAX_BODY_SIZE="8192")) as app:
        raw = json.dumps(event("invoice.paid"), indent=2)
        old = sign(raw, WH_LIVE, int(time.time()) - 1000)
        future = sign(raw, WH_LIVE, int(time.time()) + 1000)
        tampered = raw.replace("invoice.paid", "invoice.void")
        cases = [(raw, old), (raw, future), (tampered, sign(raw, WH_LIVE)), (raw, ""),
                 (raw, "t=1,v0=abc"), (raw, sign(raw, "whsec_other"))]
        for body, header in cases:
            resp = await app.client.post("/webhooks", content=body.encode(),
                                         headers={"Stripe-Signature": header} if header else {})
            assert resp.status_code == 400, header
            assert resp.json()["error"]["code"] == "bad_signature"
        for body in ("{not json", json.dumps([1]), json.dumps({"object": "event"}),
                     json.dumps({**event("x.y"), "livemode": "yes"})):
            resp = await app.webhook(body)
            assert resp.status_code == 400, body
        big = json.dumps({**event("x.y"), "pad": "x" * 9000})
        assert (await app.webhook(big)).status_code == 413
        assert await rows(app, WebhookEvent) == []


@pytest.mark.gen_test(timeout=30)
async def test_no_webhook_secret_is_503(tmp_path):
    env = base_env(tmp_path, STRIPE_WEBHOOK_SECRETS_LIVE="", STRIPE_WEBHOOK_SECRETS_TEST="")
    async with running(env) as app:
        resp = await app.webhook(event("x.y"))
        assert resp.status_code == 503
        assert resp.json()["error"]["code"] == "not_configured"


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("order", ["deauth_first", "auth_first"])
async def test_out_of_order_lifecycle(tmp_path, order):
    async with running(base_env(tmp_path)) as app:
        t = int(time.time())
        auth, deauth = event(AUTH, "acct_1", created=t - 10), event(DEAUTH, "acct_1", created=t)
        for ev in ((deauth, auth) if order == "deauth_first" else (auth, deauth)):
            assert (await app.webhook(ev)).status_code == 200
            await app.settle()
        # the older authorized never undoes the newer deauthorized
        assert not app.backend.installations.is_active("acct_1", "live")
        (inst,) = await rows(app, Installation)
        assert not inst.active and inst.state_source == deauth["id"]


@pytest.mark.gen_test(timeout=30)
async def test_install_uninstall_reinstall_and_app_data(tmp_path):
    async with running(base_env(tmp_path)) as app:
        t = int(time.time())
        await app.webhook(event(AUTH, "acct_1", created=t - 20))
        await app.webhook(event(AUTH, "acct_1", livemode=False, created=t - 20), secret=WH_TEST)
        await app.settle()
        await app.backend.storage.run(lambda: [
            BalanceSnapshot.create(account_id="acct_1", mode=m, available="[]", pending="[]")
            for m in ("live", "test")])
        await app.webhook(event(DEAUTH, "acct_1", created=t - 10))
        await app.settle()
        idx = app.backend.installations
        assert not idx.is_active("acct_1", "live") and idx.is_active("acct_1", "test")
        assert (idx.count_active("live"), idx.count_active("test")) == (0, 1)
        left = await rows(app, BalanceSnapshot)
        assert [r.mode for r in left] == ["test"]  # live data deleted, test data kept
        await app.webhook(event(AUTH, "acct_1", created=t))
        await app.settle()
        assert idx.is_active("acct_1", "live")
        installs = await rows(app, Installation)
        assert sorted((i.mode, i.active) for i in installs) == [("live", True), ("test", True)]
        events = await rows(app, WebhookEvent)
        assert len(events) == 4  # the audit trail is kept


@pytest.mark.gen_test(timeout=30)
async def test_failing_handler_is_retried_and_recorded(tmp_path):
    registry, calls = counting_registry(fail_times=2)
    async with running(base_env(tmp_path), registry=registry) as app:
        app.backend.events.retry_base = 0.01
        await installed(app, "acct_1", "live")
        ev = event("customer.created", "acct_1")
        assert (await app.webhook(ev)).status_code == 200
        await app.settle()
        (row,) = await rows(app, WebhookEvent)
        assert row.status == "failed" and row.attempts == 1 and "boom 1" in row.last_error
        deadline = time.time() + 10
        while time.time() < deadline:
            await app.backend.events.poll()
            (row,) = await rows(app, WebhookEvent)
            if row.status == "processed":
                break
            await asyncio.sleep(0.05)
        assert row.status == "processed" and row.attempts == 3 and row.last_error is None
        assert calls == [ev["id"]] * 3


@pytest.mark.gen_test(timeout=60)
async def test_database_unavailable_answers_503_and_writes_nothing(tmp_path, pg_server):
    with fresh_pg_database(pg_server) as (url, name):
        async with running(base_env(tmp_path, DATABASE_URL=url)) as app:
            admin = _pg_admin()
            admin.init(name)
            admin.connect()
            admin.execute_sql("ALTER TABLE webhook_event RENAME TO webhook_event_away")
            ev = event(AUTH, "acct_1")
            resp = await app.webhook(ev)
            assert resp.status_code == 503
            assert resp.json()["error"]["code"] == "unavailable"
            assert "webhook_event" not in resp.text
            admin.execute_sql("ALTER TABLE webhook_event_away RENAME TO webhook_event")
            admin.close()
            await app.settle()
            assert await rows(app, WebhookEvent) == []
            assert await rows(app, Installation) == []  # nothing half-written
            # Stripe retries: now it is stored and applied
            assert (await app.webhook(ev)).json() == {"received": True, "duplicate": False}
            await app.settle()
            assert app.backend.installations.is_active("acct_1", "live")


@pytest.mark.gen_test(timeout=60)
async def test_real_delivery_from_localstripe(tmp_path, localstripe):
    secret = "whsec_localstripe" + "f" * 16
    env = base_env(tmp_path, STRIPE_WEBHOOK_SECRETS_TEST=secret)
    async with running(env) as app:
        hook_id = "wh_" + str(time.time_ns())
        async with httpx.AsyncClient(base_url=localstripe, auth=("sk_test_x", "")) as stripe_api:
            resp = await stripe_api.post(f"/_config/webhooks/{hook_id}", json={
                "url": f"{app.url}/webhooks", "secret": secret, "events": ["customer.created"]})
            assert resp.status_code == 200
            customer = (await stripe_api.post("/v1/customers",
                                              data={"email": "a@example.com"})).json()
            deadline = time.time() + 15
            found = []
            while time.time() < deadline and not found:
                await asyncio.sleep(0.2)
                found = await rows(app, WebhookEvent, WebhookEvent.type == "customer.created")
            await stripe_api.post(f"/_config/webhooks/{hook_id}", json={
                "url": "http://127.0.0.1:9/none", "secret": secret, "events": ["none"]})
        assert found, "localstripe's delivery was not stored"
        stored = found[0]
        assert "\n  " in stored.payload  # pretty-printed: the raw body was what got verified
        assert json.loads(stored.payload)["data"]["object"]["id"] == customer["id"]
        assert stored.livemode is False


@pytest.mark.gen_test(timeout=60)
async def test_handlers_run_only_for_the_platform_and_accounts_with_the_app(tmp_path):
    """Issue 23: an event about an account that does not have the app installed (in the event's
    mode) is stored and marked processed, but reaches no `@on_event` handler; the platform's own
    events and those of installed accounts do, and the lifecycle is applied first, so the
    event that installs reaches the handlers of the install it makes."""
    from jobs.registry import on_event
    from models.installation import apply_state

    seen: list[tuple[str | None, str, str]] = []

    @on_event("*")
    async def note(ctx):
        seen.append((ctx.account_id, str(ctx.mode), ctx.type))

    registry = Registry(handlers={"*": [note]})
    async with running(base_env(tmp_path), registry=registry) as app:
        sent = [event("account.application.authorized", "acct_in"),
                event("customer.created", "acct_in"),
                event("customer.created", "acct_out"),  # no installation at all
                event("customer.created", None),  # the platform's own
                ]
        for ev in sent:
            assert (await app.webhook(ev)).status_code == 200
            await app.settle()
        test_mode = event("customer.created", "acct_in", livemode=False)  # installed live only
        assert (await app.webhook(test_mode, secret=WH_TEST)).status_code == 200
        await app.settle()
        assert seen == [("acct_in", "live", "account.application.authorized"),
                        ("acct_in", "live", "customer.created"),
                        (None, "live", "customer.created")]
        rows = await app.backend.storage.run(lambda: {r.id: r.status
                                                      for r in WebhookEvent.select()})
        assert rows == {ev["id"]: "processed" for ev in [*sent, test_mode]}
        # installed by another replica, not yet heard of here: the database is asked
        await app.backend.storage.run(apply_state, "acct_out", "live", True, int(time.time()),
                                      "elsewhere", confirm=True)
        assert not app.backend.installations.is_active("acct_out")
        await app.webhook(event("customer.updated", "acct_out"))
        await app.settle()
        assert seen[-1] == ("acct_out", "live", "customer.updated")
