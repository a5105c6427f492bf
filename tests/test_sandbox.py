"""A sandbox install end to end (issue 26), against the real backend on loopback.

Stripe's parts are played by the Install API fake (cli/fake_installs.py), which lists the
managed sandbox's installs for its key only, in front of tests/fake_stripe.py, which records
each request as it arrived (so the key a job used is read off the wire). The sandbox has its
own key (`SANDBOX_KEY`, a `sk_test_` key other than the test one) and webhook secret
(`WH_SANDBOX`): an install made in a sandbox is the sandbox's, its calls carry the sandbox's
key, and its events are told apart from test ones only by the secret that signed them.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import WH_TEST, base_env, running, sign
from fake_stripe import FakeStripe
from test_install import callback_params, start

from cli.fake_installs import FakeInstalls
from jobs.registry import Registry, job, on_event
from jobs.tasks import task
from models.enums import Mode
from models.events import WebhookEvent
from stripe_app_backend.harness import SANDBOX_ENV, SANDBOX_KEY, WH_SANDBOX, event

APP = "com.example.testapp"
TEST_KEY = "sk_test_" + "t" * 24
ACCOUNT = "acct_sandboxuser"
SEEN: list[tuple[str, str | None, str, bool]] = []


@job(every=86400, attempts=1)
async def touch_stripe(ctx: Any) -> None:
    """Reads the account's balance: one call to Stripe, with the mode's key."""
    await ctx.stripe.v1.balance.retrieve_async()
    SEEN.append(("job", ctx.account_id, ctx.mode, ctx.livemode))


@on_event("customer.created")
async def on_customer(ctx: Any) -> None:
    SEEN.append(("event", ctx.account_id, ctx.mode, ctx.livemode))


@task()
async def which_mode(ctx: Any) -> dict[str, Any]:
    return {"mode": ctx.mode}


def registry() -> Registry:
    reg = Registry()
    reg.jobs[touch_stripe.__job_spec__.name] = touch_stripe.__job_spec__
    reg.handlers["customer.created"] = [on_customer]
    reg.tasks[which_mode.__task_spec__.name] = which_mode.__task_spec__
    return reg


async def stored(app: Any, type_: str) -> list[tuple[str, bool]]:
    """(mode, livemode) of the stored events of `type_` about ACCOUNT, oldest first."""
    def rows() -> list[tuple[str, bool]]:
        return [(e.mode, e.livemode) for e in WebhookEvent.select().where(
            WebhookEvent.type == type_, WebhookEvent.account_id == ACCOUNT)
            .order_by(WebhookEvent.received_at)]
    return await app.backend.storage.run(rows)


@pytest.mark.gen_test(timeout=90)
async def test_a_sandbox_install_end_to_end(tmp_path):
    SEEN.clear()
    stripe = FakeStripe(keys={TEST_KEY: False, SANDBOX_KEY: False})
    stripe.start()
    installs = FakeInstalls(upstream=stripe.url, sandbox_keys=(SANDBOX_KEY,))
    env = base_env(tmp_path, STRIPE_API_BASE=installs.url, STRIPE_SECRET_KEY_TEST=TEST_KEY,
                   INSTALL_SYNC="off", SCHEDULER="off", **SANDBOX_ENV)
    try:
        async with running(env, registry=registry()) as app:
            # the user installs in a sandbox: Stripe lists it among the managed sandbox's
            # installs, and its redirect says livemode=false (as for test mode) and no more
            installs.add(ACCOUNT, APP, sandbox=True)
            state, _ = await start(app.client)
            resp = await app.client.get(
                "/callback/stripe", headers={"Accept": "application/json"},
                params=callback_params(state, account=ACCOUNT, livemode="false"))
            assert resp.status_code == 200, resp.text
            assert resp.json() == {"installed": True, "account_id": ACCOUNT, "mode": "sandbox",
                                   "confirmed": True, "pending": False}
            index = app.backend.installations
            assert index.is_active(ACCOUNT, Mode.SANDBOX)
            assert not index.is_active(ACCOUNT, Mode.TEST)
            # (only the sandbox's key lists that install: the callback's confirmation asked
            # the Install API with it, after test mode's list had not shown it)

            # Stripe's webhook for it, signed with the sandbox's secret: a sandbox event
            result = await app.send_event("account.application.authorized", ACCOUNT,
                                          Mode.SANDBOX)
            assert result.error is None
            assert await stored(app, "account.application.authorized") == [("sandbox", False)]
            assert index.is_active(ACCOUNT, Mode.SANDBOX)
            assert not index.is_active(ACCOUNT, Mode.TEST)

            # a signed extension call for that account: installed in sandbox, not in test
            resp = await app.signed("/api/installation",
                                    {"user_id": "usr_1", "account_id": ACCOUNT})
            assert resp.status_code == 200, resp.text
            answer = resp.json()
            assert answer["sandbox"]["active"] is True and answer["sandbox"]["confirmed"]
            assert answer["test"]["active"] is False and answer["live"]["active"] is False
            resp = await app.signed("/api/whoami", {"user_id": "usr_1", "account_id": ACCOUNT})
            assert resp.json()["modes"] == ["sandbox"]

            # a job's call to Stripe carries the sandbox's key, for the account
            outcome, error = await app.run_job("touch_stripe", ACCOUNT, Mode.SANDBOX)
            assert outcome == "succeeded", error
            (call,) = [r for r in stripe.requests if r.path == "/v1/balance"]
            assert call.headers["Authorization"] == f"Bearer {SANDBOX_KEY}"
            assert call.headers["Stripe-Account"] == ACCOUNT
            assert SEEN == [("job", ACCOUNT, "sandbox", False)]
            # not installed in test mode: no test run
            outcome, _ = await app.run_job("touch_stripe", ACCOUNT, Mode.TEST)
            assert outcome == "not_active"

            # a task started without a mode runs in the one mode installed: sandbox
            view = await app.wait_task(await app.start_task("which_mode", {}, ACCOUNT,
                                                            Mode.SANDBOX))
            assert view.status == "succeeded" and view.result == {"mode": "sandbox"}
            resp = await app.signed("/api/tasks/which_mode",
                                    {"user_id": "usr_1", "account_id": ACCOUNT})
            assert resp.status_code == 202 and resp.json()["mode"] == "sandbox", resp.text
            resp = await app.signed("/api/tasks/which_mode", {
                "mode": "prod", "user_id": "usr_1", "account_id": ACCOUNT})
            assert resp.status_code == 400
            assert resp.json()["error"]["message"] == 'mode must be "live", "test" or "sandbox"'
            resp = await app.signed("/api/tasks/which_mode", {
                "mode": "test", "user_id": "usr_1", "account_id": ACCOUNT})
            assert resp.status_code == 403 and "test mode" in resp.json()["error"]["message"]

            # an event signed with the sandbox's secret reaches the handler as the sandbox's
            SEEN.clear()
            result = await app.send_event("customer.created", ACCOUNT, Mode.SANDBOX)
            assert result.error is None
            assert SEEN == [("event", ACCOUNT, "sandbox", False)]
            assert await stored(app, "customer.created") == [("sandbox", False)]

            # the same body shape signed with the TEST secret is a test event: the account has
            # not installed the app in test mode, so it is not dispatched
            result = await app.send_event("customer.created", ACCOUNT, Mode.TEST)
            assert result.error is None and SEEN == [("event", ACCOUNT, "sandbox", False)]
            assert await stored(app, "customer.created") == [("sandbox", False),
                                                             ("test", False)]

            # a sandbox secret never signs a live event: 400, nothing stored
            live = json.dumps(event("customer.created", ACCOUNT, livemode=True), indent=2)
            resp = await app.webhook(live, WH_SANDBOX)
            assert resp.status_code == 400, resp.text
            assert resp.json()["error"]["code"] == "bad_signature"
            assert len(await stored(app, "customer.created")) == 2

            # the uninstall: Stripe's deauthorized event, signed with the sandbox's secret
            result = await app.send_event("account.application.deauthorized", ACCOUNT,
                                          Mode.SANDBOX)
            assert result.error is None
            assert not index.is_active(ACCOUNT, Mode.SANDBOX)
            outcome, _ = await app.run_job("touch_stripe", ACCOUNT, Mode.SANDBOX)
            assert outcome == "not_active"
            resp = await app.signed("/api/installation",
                                    {"user_id": "usr_1", "account_id": ACCOUNT})
            assert resp.json()["sandbox"]["active"] is False
    finally:
        await installs.close()
        stripe.stop()


@pytest.mark.gen_test(timeout=60)
async def test_a_test_secret_never_makes_a_sandbox_install(tmp_path):
    """An install event signed with the test secret installs in test mode, never the sandbox;
    and a server that serves no sandbox (no sandbox secret) refuses a body signed with one."""
    env = base_env(tmp_path, SCHEDULER="off", INSTALL_SYNC="off", **SANDBOX_ENV)
    async with running(env, registry=registry()) as app:
        raw = json.dumps(event("account.application.authorized", ACCOUNT, livemode=False))
        resp = await app.webhook(raw, WH_TEST)
        assert resp.status_code == 200, resp.text
        await app.settle()
        index = app.backend.installations
        assert index.is_active(ACCOUNT, Mode.TEST)
        assert not index.is_active(ACCOUNT, Mode.SANDBOX)
    plain = tmp_path / "plain"
    plain.mkdir()
    async with running(base_env(plain, SCHEDULER="off")) as app:
        raw = json.dumps(event("customer.created", ACCOUNT, livemode=False))
        resp = await app.webhook(raw, header=sign(raw, WH_SANDBOX))
        assert resp.status_code == 400
