"""Review of issue 26 (sandboxes and organizations' `Stripe-Context`): attacks that found a
defect, each a test that fails until it is fixed. Real parts only: the real backend on
loopback (`stripe_app_backend.harness.running`), real SQLite, the Install API fake in front of
tests/fake_stripe.py."""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import WH_TEST, base_env, running
from fake_stripe import FakeStripe
from test_install import callback_params, marketplace_params, start

from cli.fake_installs import FakeInstalls, install_object
from jobs.registry import Registry, job
from models.enums import Mode
from stripe_app_backend.harness import SANDBOX_ENV, SANDBOX_KEY, event

APP = "com.example.testapp"
TEST_KEY = "sk_test_" + "t" * 24
SANDBOX_ACCOUNT = "acct_sandboxreview"


@job(every=86400, attempts=1)
async def review_touch(ctx: Any) -> None:
    """One call to Stripe with the mode's key, for the account."""
    await ctx.stripe.v1.balance.retrieve_async()


def registry() -> Registry:
    reg = Registry()
    reg.jobs[review_touch.__job_spec__.name] = review_touch.__job_spec__
    return reg


@pytest.mark.gen_test(timeout=60)
async def test_a_test_signed_install_event_never_installs_live(tmp_path):
    """A body verified by the TEST secret is a test event (its `livemode` is false), yet
    `jobs/installs.process_event` takes the installation's mode from `data.object.livemode`:
    `true` there installs (or uninstalls) the account in LIVE mode. A test secret must never
    vouch for live data (service/webhooks.py), and the mode of an event is the verifying
    secret's, never a field of the body (docs/deploy.md, Sandboxes)."""
    env = base_env(tmp_path, SCHEDULER="off", INSTALL_SYNC="off")
    async with running(env) as app:
        obj = install_object("acct_victim", APP, True)  # data.object says livemode: true
        ev = event("apps.install.created", "acct_victim", livemode=False, obj=obj)
        resp = await app.webhook(json.dumps(ev), WH_TEST)
        assert resp.status_code == 200, resp.text
        await app.settle()
        index = app.backend.installations
        assert not index.is_active("acct_victim", Mode.LIVE), (
            "a test-signed event installed the app in live mode")
        # its mode is the event's: test
        assert index.is_active("acct_victim", Mode.TEST)

        # and the reverse: a live installation is not ended by a test-signed deletion
        await app.install("acct_live", Mode.LIVE)
        gone = install_object("acct_live", APP, True, status="uninstalling")
        ev = event("apps.install.deleted", "acct_live", livemode=False, obj=gone)
        resp = await app.webhook(json.dumps(ev), WH_TEST)
        assert resp.status_code == 200, resp.text
        await app.settle()
        assert index.is_active("acct_live", Mode.LIVE), (
            "a test-signed event uninstalled a live installation (and deleted its data)")


@pytest.mark.gen_test(timeout=90)
async def test_a_sandbox_install_link_leaves_no_test_installation_behind(tmp_path):
    """A sandbox install from an install link: the callback says only `livemode=false` (test
    and sandbox alike), so with a sandbox configured it records a PENDING test claim (before
    the fix it activated a provisional TEST row). When the Install API cannot confirm at once
    (its sandbox list lags, or answers slowly), that row stays; then Stripe's signed sandbox
    event installs the SANDBOX row, and nothing undoes the provisional test one: the sandbox
    account has the app "installed" in test mode too (a sandbox account is never installed in
    test mode: it is an account of its own) until the DAILY test sync. Meanwhile test-mode
    jobs run for it with the test key, `/api/installation` says test active, and a task or
    endpoint without `mode` runs in test mode (the first of MODES)."""
    stripe = FakeStripe(keys={TEST_KEY: False, SANDBOX_KEY: False})
    stripe.start()
    installs = FakeInstalls(upstream=stripe.url, sandbox_keys=(SANDBOX_KEY,))
    env = base_env(tmp_path, STRIPE_API_BASE=installs.url, STRIPE_SECRET_KEY_TEST=TEST_KEY,
                   INSTALL_SYNC="off", SCHEDULER="off", **SANDBOX_ENV)
    try:
        async with running(env, registry=registry()) as app:
            # the callback arrives before the managed sandbox's list shows the install
            state, _ = await start(app.client)
            resp = await app.client.get(
                "/callback/stripe", headers={"Accept": "application/json"},
                params=callback_params(state, account=SANDBOX_ACCOUNT, livemode="false"))
            # with a sandbox configured, livemode=false does not say test: nothing takes
            # effect until Stripe says where the install is (no test-mode job runs for it)
            assert resp.status_code == 202, resp.text
            assert resp.json()["pending"] is True and resp.json()["installed"] is False
            index = app.backend.installations
            assert not index.is_active(SANDBOX_ACCOUNT, Mode.TEST)
            # Stripe's own word follows: the install is in the sandbox, and its signed event
            installs.add(SANDBOX_ACCOUNT, APP, sandbox=True)
            result = await app.send_event("account.application.authorized", SANDBOX_ACCOUNT,
                                          Mode.SANDBOX)
            assert result.error is None
            assert index.is_active(SANDBOX_ACCOUNT, Mode.SANDBOX)
            assert not index.is_active(SANDBOX_ACCOUNT, Mode.TEST), (
                "the callback's provisional test install outlives Stripe's sandbox install")
            resp = await app.signed("/api/whoami", {"user_id": "usr_1",
                                                    "account_id": SANDBOX_ACCOUNT})
            assert resp.json()["modes"] == ["sandbox"], resp.text
    finally:
        await installs.close()
        stripe.stop()


@pytest.mark.gen_test(timeout=90)
async def test_a_sandbox_marketplace_install_leaves_no_test_install_pending_forever(tmp_path):
    """The Marketplace variant: the callback (no `state`, `livemode=false`) records a PENDING
    test install; Stripe's sandbox event installs the sandbox row, and the test row keeps
    `pending: true` for good (nothing clears `pending_at` but an INSTALLED or a CONTRADICTED in
    test mode, and the test sync leaves inactive rows alone): the extension is told, forever,
    that a test install waits for Stripe on a sandbox account."""
    stripe = FakeStripe(keys={TEST_KEY: False, SANDBOX_KEY: False})
    stripe.start()
    installs = FakeInstalls(upstream=stripe.url, sandbox_keys=(SANDBOX_KEY,))
    env = base_env(tmp_path, STRIPE_API_BASE=installs.url, STRIPE_SECRET_KEY_TEST=TEST_KEY,
                   INSTALL_SYNC="off", SCHEDULER="off", **SANDBOX_ENV)
    try:
        async with running(env, registry=registry()) as app:
            resp = await app.client.get(
                "/callback/stripe", headers={"Accept": "application/json"},
                params=marketplace_params("usr_1", SANDBOX_ACCOUNT, livemode="false"))
            assert resp.status_code == 202, resp.text
            installs.add(SANDBOX_ACCOUNT, APP, sandbox=True)
            result = await app.send_event("account.application.authorized", SANDBOX_ACCOUNT,
                                          Mode.SANDBOX)
            assert result.error is None
            resp = await app.signed("/api/installation", {"user_id": "usr_1",
                                                          "account_id": SANDBOX_ACCOUNT})
            answer = resp.json()
            assert answer["sandbox"]["active"] is True, answer
            assert answer["test"].get("pending") is not True, (
                "a test install of a sandbox account is still said to be pending", answer)
            # and the daily test sync does not clear it either
            await app.backend.install_sync.sync(Mode.TEST)
            view = app.backend.installations.get(SANDBOX_ACCOUNT, Mode.TEST)
            assert view is None or not view.pending, view
    finally:
        await installs.close()
        stripe.stop()
