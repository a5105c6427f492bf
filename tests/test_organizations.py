"""Organizations (issue 26): an installation's calls name its account with `Stripe-Context`
once a signed event gave it an organization's context, else with `Stripe-Account` as before,
never both. Read off the wire: a real backend on loopback, real signed webhooks, the real job
runner and stripe library, calling `tests/fake_stripe.py`, which records every request's
headers."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from conftest import APP_SECRET, WH_TEST, base_env, compact, event, running, sign, wait_for
from fake_stripe import FakeStripe, Recorded

from jobs.stripe_api import StripeClients
from models.enums import EventStatus, JobOutcome, Mode
from models.events import WebhookEvent

AUTH = "account.application.authorized"
ORG = "org_6SD3oI0eSQemPzdmaGLJ5j6"
ORG_2 = "org_2Zx9NnH3kLpQ"
TEST_KEY, LIVE_KEY, SANDBOX_KEY = "sk_test_platformkey", "sk_live_platformkey", "sk_test_sandboxkey"
WH_SANDBOX = "whsec_sandbox" + "f" * 24
ACCOUNT = "acct_1OrgMember"


@contextlib.asynccontextmanager
async def backend(tmp_path: Any) -> AsyncIterator[tuple[Any, FakeStripe]]:
    """A backend whose Stripe is the fake (which knows the three platform keys), with no
    scheduler (jobs run only when a test runs them) and no install sync."""
    fake = FakeStripe(keys={TEST_KEY: False, LIVE_KEY: True, SANDBOX_KEY: False})
    fake.start()
    env = base_env(tmp_path, STRIPE_API_BASE=fake.url, SCHEDULER="off", INSTALL_SYNC="off",
                   STRIPE_SECRET_KEY_TEST=TEST_KEY, STRIPE_SECRET_KEY_LIVE=LIVE_KEY,
                   STRIPE_SECRET_KEY_SANDBOX=SANDBOX_KEY,
                   STRIPE_WEBHOOK_SECRETS_SANDBOX=WH_SANDBOX)
    try:
        async with running(env) as app:
            yield app, fake
    finally:
        fake.stop()


SECRETS = {Mode.LIVE: None, Mode.TEST: WH_TEST, Mode.SANDBOX: WH_SANDBOX}


async def deliver(app: Any, type_: str, account: str | None, mode: Mode = Mode.TEST,
                  context: Any = None, created: int | None = None, **kw: Any) -> dict[str, Any]:
    """A signed event of `type_` for `account` in `mode` (signed with that mode's secret),
    carrying `context` (left out when None), delivered and processed; returns the event."""
    ev = event(type_, account, livemode=mode == Mode.LIVE, created=created, **kw)
    if context is not None:
        ev["context"] = context
    secret = SECRETS[mode]
    resp = await (app.webhook(ev) if secret is None else app.webhook(ev, secret=secret))
    assert resp.status_code == 200, resp.text
    assert resp.json()["duplicate"] is False

    async def done() -> WebhookEvent | None:
        row = await app.backend.storage.run(WebhookEvent.get_or_none,
                                            WebhookEvent.id == ev["id"])
        return row if row is not None and row.status == EventStatus.PROCESSED else None

    await wait_for(done, 30, f"event {ev['id']} processed")
    await app.settle()
    return ev


async def install(app: Any, account: str = ACCOUNT, mode: Mode = Mode.TEST) -> None:
    """Installed through Stripe's signed event, as in production."""
    await deliver(app, AUTH, account, mode, created=int(time.time()) - 100)
    assert app.backend.installations.is_active(account, mode)


async def balance_call(app: Any, fake: FakeStripe, account: str = ACCOUNT,
                       mode: Mode = Mode.TEST) -> Recorded:
    """Run the sample app's job (`ctx.stripe.v1.balance.retrieve_async()`) for the account
    once, and return the one request it made to Stripe."""
    before = len(fake.requests)
    outcome, error = await app.run_job("balance_snapshot", account, mode)
    assert outcome == JobOutcome.SUCCEEDED, error
    (call,) = [r for r in fake.requests[before:] if r.path == "/v1/balance"]
    return call


def header(call: Recorded, name: str) -> str | None:
    """A header of a recorded request, by name in any case (None when absent)."""
    found = [v for k, v in call.headers.items() if k.lower() == name.lower()]
    assert len(found) <= 1
    return found[0] if found else None


def names_account(call: Recorded, account: str = ACCOUNT) -> None:
    """The call names the account with `Stripe-Account`, as before organizations."""
    assert header(call, "Stripe-Account") == account
    assert header(call, "Stripe-Context") is None


def names_context(call: Recorded, context: str) -> None:
    """The call names the account with `Stripe-Context` only."""
    assert header(call, "Stripe-Context") == context
    assert header(call, "Stripe-Account") is None


async def stored(app: Any, event_id: str) -> WebhookEvent:
    return await app.backend.storage.run(WebhookEvent.get_by_id, event_id)


# ---- on the wire -----------------------------------------------------------------------------

@pytest.mark.gen_test(timeout=90)
async def test_an_organizations_event_makes_the_next_call_send_stripe_context_only(tmp_path):
    async with backend(tmp_path) as (app, fake):
        await install(app)
        call = await balance_call(app, fake)
        names_account(call)
        assert header(call, "Authorization") == f"Bearer {TEST_KEY}"

        # an event no handler acts on, with the organization's context
        ev = await deliver(app, "product.created", ACCOUNT, context=ORG)
        assert (await stored(app, ev["id"])).context == ORG
        assert app.backend.installations.get(ACCOUNT, Mode.TEST).context == ORG
        names_context(await balance_call(app, fake), ORG)

        # the answer to the extension shows it, in that mode only
        body = (await app.signed("/api/installation", {"user_id": "usr_1",
                                                       "account_id": ACCOUNT})).json()
        assert body["test"]["context"] == ORG
        assert body["live"].get("context") is None and body["sandbox"].get("context") is None


@pytest.mark.gen_test(timeout=90)
async def test_a_context_path_ending_in_the_account_is_taken(tmp_path):
    async with backend(tmp_path) as (app, fake):
        await install(app)
        await deliver(app, "customer.created", ACCOUNT, context=f"{ORG}/{ACCOUNT}")
        names_context(await balance_call(app, fake), f"{ORG}/{ACCOUNT}")


@pytest.mark.gen_test(timeout=90)
async def test_another_accounts_context_changes_nothing(tmp_path):
    async with backend(tmp_path) as (app, fake):
        await install(app)
        for other in ("acct_OTHER", f"{ORG}/acct_OTHER"):
            ev = await deliver(app, "customer.created", ACCOUNT, context=other)
            assert (await stored(app, ev["id"])).context == other  # stored as received
            assert app.backend.installations.get(ACCOUNT, Mode.TEST).context is None
            names_account(await balance_call(app, fake))
        # nor does it undo an organization's context the installation has
        await deliver(app, "customer.created", ACCOUNT, context=ORG)
        await deliver(app, "customer.created", ACCOUNT, context=f"{ORG}/acct_OTHER")
        names_context(await balance_call(app, fake), ORG)


@pytest.mark.gen_test(timeout=90)
async def test_an_older_event_does_not_undo_a_newer_context(tmp_path):
    async with backend(tmp_path) as (app, fake):
        await install(app)
        t = int(time.time())
        await deliver(app, "customer.created", ACCOUNT, context=ORG, created=t)
        # older events, arriving later: another organization's, and the account's own
        await deliver(app, "customer.updated", ACCOUNT, context=ORG_2, created=t - 10)
        await deliver(app, "customer.updated", ACCOUNT, context=ACCOUNT, created=t - 5)
        names_context(await balance_call(app, fake), ORG)
        # a newer one does change it
        await deliver(app, "customer.updated", ACCOUNT, context=ORG_2, created=t + 10)
        names_context(await balance_call(app, fake), ORG_2)


@pytest.mark.gen_test(timeout=90)
async def test_a_context_equal_to_the_account_clears_it(tmp_path):
    async with backend(tmp_path) as (app, fake):
        await install(app)
        t = int(time.time())
        await deliver(app, "customer.created", ACCOUNT, context=ORG, created=t)
        names_context(await balance_call(app, fake), ORG)
        ev = await deliver(app, "customer.updated", ACCOUNT, context=ACCOUNT, created=t + 1)
        assert (await stored(app, ev["id"])).context == ACCOUNT
        assert app.backend.installations.get(ACCOUNT, Mode.TEST).context is None
        names_account(await balance_call(app, fake))


@pytest.mark.parametrize("bad", ["x y", 42, "org_", "org_abc/acct_", ["org_abc"], {"id": "org_a"},
                                 "org_" + "a" * 300, "acct_1/org_2"])
@pytest.mark.gen_test(timeout=90)
async def test_a_malformed_context_is_stored_as_null_and_the_event_kept(tmp_path, bad):
    async with backend(tmp_path) as (app, fake):
        await install(app)
        await deliver(app, "customer.created", ACCOUNT, context=ORG, created=int(time.time()))
        ev = await deliver(app, "customer.updated", ACCOUNT, context=bad,
                           created=int(time.time()) + 5)
        row = await stored(app, ev["id"])
        assert row.context is None and row.type == "customer.updated"
        names_context(await balance_call(app, fake), ORG)  # changed nothing


@pytest.mark.gen_test(timeout=90)
async def test_an_event_for_an_account_not_installed_sets_nothing(tmp_path):
    async with backend(tmp_path) as (app, fake):
        ev = await deliver(app, "customer.created", "acct_1NotHere", context=ORG)
        assert (await stored(app, ev["id"])).context == ORG
        assert app.backend.installations.get("acct_1NotHere", Mode.TEST) is None
        # installed later: its calls go out as before, until an event says otherwise
        await install(app, "acct_1NotHere")
        names_account(await balance_call(app, fake, "acct_1NotHere"), "acct_1NotHere")


@pytest.mark.gen_test(timeout=90)
async def test_a_platform_event_and_an_event_without_context_set_nothing(tmp_path):
    async with backend(tmp_path) as (app, fake):
        await install(app)
        await deliver(app, "customer.created", None, context=ORG)
        ev = await deliver(app, "customer.created", ACCOUNT)
        assert (await stored(app, ev["id"])).context is None
        names_account(await balance_call(app, fake))
        await deliver(app, "customer.created", ACCOUNT, context=ORG)
        await deliver(app, "customer.updated", ACCOUNT, created=int(time.time()) + 5)
        names_context(await balance_call(app, fake), ORG)  # no context says nothing


@pytest.mark.gen_test(timeout=90)
async def test_the_context_belongs_to_the_mode_of_the_verifying_secret(tmp_path):
    """A sandbox event (verified with the sandbox secret; its body says livemode false, as a
    test event's does) sets the sandbox installation's context, not the test one's."""
    async with backend(tmp_path) as (app, fake):
        await install(app, ACCOUNT, Mode.TEST)
        await install(app, ACCOUNT, Mode.SANDBOX)
        ev = await deliver(app, "customer.created", ACCOUNT, Mode.SANDBOX, context=ORG)
        row = await stored(app, ev["id"])
        assert row.mode == Mode.SANDBOX and row.context == ORG
        sandbox = await balance_call(app, fake, mode=Mode.SANDBOX)
        names_context(sandbox, ORG)
        assert header(sandbox, "Authorization") == f"Bearer {SANDBOX_KEY}"
        test = await balance_call(app, fake, mode=Mode.TEST)
        names_account(test)
        assert header(test, "Authorization") == f"Bearer {TEST_KEY}"


@pytest.mark.gen_test(timeout=90)
async def test_a_restarted_backend_keeps_the_context(tmp_path):
    async with backend(tmp_path) as (app, fake):
        await install(app)
        await deliver(app, "customer.created", ACCOUNT, context=ORG)
    async with backend(tmp_path) as (app, fake):
        names_context(await balance_call(app, fake), ORG)


@pytest.mark.gen_test(timeout=90)
async def test_a_redelivered_event_is_a_duplicate_and_changes_nothing_again(tmp_path):
    async with backend(tmp_path) as (app, fake):
        await install(app)
        t = int(time.time())
        old = await deliver(app, "customer.created", ACCOUNT, context=ORG_2, created=t)
        await deliver(app, "customer.updated", ACCOUNT, context=ORG, created=t + 1)
        raw = json.dumps(old, indent=2)
        resp = await app.webhook(raw, header=sign(raw, WH_TEST))
        assert resp.status_code == 200 and resp.json()["duplicate"] is True
        await app.settle()
        names_context(await balance_call(app, fake), ORG)


# ---- stripe-python's own request options -----------------------------------------------------

def _options(client: Any) -> dict[str, Any]:
    """The account-naming options stripe-python sends every request of `client` with."""
    options = client._requestor._options
    return {"stripe_account": options.stripe_account, "stripe_context": options.stripe_context}


def test_stripe_clients_send_exactly_one_of_the_two_headers():
    contexts = {(ACCOUNT, "test"): ORG}
    clients = StripeClients({"live": LIVE_KEY, "test": TEST_KEY, "sandbox": SANDBOX_KEY},
                            {"live": 10.0, "test": 10.0, "sandbox": 10.0},
                            contexts=lambda account, mode: contexts.get((account, mode)))
    with_context = _options(clients.for_account(ACCOUNT, "test"))
    assert with_context["stripe_context"] == ORG and with_context["stripe_account"] is None
    plain = _options(clients.for_account(ACCOUNT, "live"))
    assert plain["stripe_account"] == ACCOUNT and plain["stripe_context"] is None
    platform = _options(clients.for_platform("test"))
    assert platform["stripe_account"] is None and platform["stripe_context"] is None
    # without a context lookup at all: as before organizations
    bare = StripeClients({"test": TEST_KEY}, {"test": 10.0})
    options = _options(bare.for_account(ACCOUNT, "test"))
    assert options["stripe_account"] == ACCOUNT and options["stripe_context"] is None


@pytest.mark.gen_test(timeout=30)
async def test_stripe_python_puts_one_header_on_the_wire():
    fake = FakeStripe(keys={TEST_KEY: False})
    fake.start()
    contexts = {(ACCOUNT, "test"): ORG}
    clients = StripeClients({"test": TEST_KEY}, {"test": 10.0}, fake.url,
                            contexts=lambda account, mode: contexts.get((account, mode)))
    try:
        await clients.for_account(ACCOUNT, "test").v1.balance.retrieve_async()
        await clients.for_account("acct_1Plain", "test").v1.balance.retrieve_async()
        await clients.for_platform("test").v1.balance.retrieve_async()
        org, plain, platform = fake.requests
        names_context(org, ORG)
        names_account(plain, "acct_1Plain")
        assert header(platform, "Stripe-Account") is None
        assert header(platform, "Stripe-Context") is None
    finally:
        await clients.close()
        fake.stop()



@pytest.mark.gen_test(timeout=90)
async def test_the_install_event_itself_may_carry_the_context(tmp_path):
    async with backend(tmp_path) as (app, fake):
        await deliver(app, AUTH, ACCOUNT, context=ORG, created=int(time.time()) - 100)
        assert app.backend.installations.is_active(ACCOUNT, Mode.TEST)
        names_context(await balance_call(app, fake), ORG)


@pytest.mark.gen_test(timeout=90)
async def test_a_newer_event_repeating_the_context_still_outranks_an_older_different_one(
        tmp_path):
    """ORG at t, ORG again at t+20, then (late) the account's own at t+10: the newest event
    (t+20) says ORG, so ORG stays."""
    async with backend(tmp_path) as (app, fake):
        await install(app)
        t = int(time.time())
        await deliver(app, "customer.created", ACCOUNT, context=ORG, created=t)
        await deliver(app, "customer.updated", ACCOUNT, context=ORG, created=t + 20)
        await deliver(app, "customer.updated", ACCOUNT, context=ACCOUNT, created=t + 10)
        names_context(await balance_call(app, fake), ORG)


# ---- what the extension is told: /api/installation -------------------------------------------

IDS = {"user_id": "usr_1", "account_id": ACCOUNT}


@pytest.mark.gen_test(timeout=60)
async def test_installation_answers_each_modes_context_and_the_org_id_sent(tmp_path):
    async with backend(tmp_path) as (app, _):
        await install(app, ACCOUNT, Mode.SANDBOX)
        await deliver(app, "customer.created", ACCOUNT, Mode.SANDBOX, context=ORG)
        resp = await app.signed("/api/installation", {"org_id": ORG, **IDS})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["org_id"] == ORG and body["account_id"] == ACCOUNT
        assert body["sandbox"]["active"] is True and body["sandbox"]["context"] == ORG
        assert body["live"] == {"active": False, "since": None, "context": None}
        assert body["test"] == {"active": False, "since": None, "context": None}
        # without org_id (an account in no organization), or with null: none answered
        for sent in ({}, {"org_id": None}):
            body = (await app.signed("/api/installation", {**sent, **IDS})).json()
            assert "org_id" not in body and body["sandbox"]["context"] == ORG


@pytest.mark.parametrize("bad", ["org", "org_", "acct_1", "org_a b", "org_a/acct_1", "ORG_abc",
                                 "org_" + "a" * 252, 42, True, ["org_a"], {"id": "org_a"}, ""])
@pytest.mark.gen_test(timeout=60)
async def test_a_malformed_org_id_is_400_with_a_clear_error(tmp_path, bad):
    async with backend(tmp_path) as (app, _):
        resp = await app.signed("/api/installation", {"org_id": bad, **IDS})
        assert resp.status_code == 400, resp.text
        error = resp.json()["error"]
        assert "org_id" in error["message"] and error["code"] == "bad_request"
        assert resp.headers["access-control-allow-origin"] == "*"


@pytest.mark.gen_test(timeout=60)
async def test_the_longest_org_id_is_answered(tmp_path):
    async with backend(tmp_path) as (app, _):
        longest = "org_" + "a" * 251
        resp = await app.signed("/api/installation", {"org_id": longest, **IDS})
        assert resp.status_code == 200 and resp.json()["org_id"] == longest


@pytest.mark.gen_test(timeout=60)
async def test_an_org_id_the_signature_does_not_cover_is_401(tmp_path):
    async with backend(tmp_path) as (app, _):
        raw = compact({"org_id": ORG, **IDS})
        resp = await app.signed("/api/installation", raw, header=sign(compact(IDS), APP_SECRET))
        assert resp.status_code == 401
        assert "org_id" in resp.json()["error"]["message"]


@pytest.mark.gen_test(timeout=60)
async def test_the_sandbox_snapshot_is_answered_under_sandbox(tmp_path):
    """The sample app (the example's copy) loops `MODES`: a sandbox install's data has its key."""
    async with backend(tmp_path) as (app, fake):
        await install(app, ACCOUNT, Mode.SANDBOX)
        await balance_call(app, fake, mode=Mode.SANDBOX)
        body = (await app.signed("/api/balance", IDS)).json()
        assert body["live"] is None and body["test"] is None
        assert body["sandbox"]["available"] == [] and body["sandbox"]["taken_at"] > 0
