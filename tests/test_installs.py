"""Stripe's Install API (issue 14): `apps.install.*` events, reconciliation against the Install
API fake (a real HTTP server forwarding the rest to localstripe), permissions, uninstall. Real
backend on loopback, real SQLite."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
from conftest import ROOT, WH_TEST, base_env, event, running, wait_for
from sample_app.balance_snapshot import BalanceSnapshot
from test_e2e import cli

from cli.fake_installs import FakeInstalls, install_object
from jobs.installs import SyncFailed
from jobs.registry import Registry, job
from models.installation import Installation
from models.jobs import JobRun

APP = "com.example.testapp"
AUTH, DEAUTH = "account.application.authorized", "account.application.deauthorized"
KEYS = {"STRIPE_SECRET_KEY_TEST": "sk_test_platformkey",
        "STRIPE_SECRET_KEY_LIVE": "sk_live_platformkey"}


@contextlib.asynccontextmanager
async def with_fake(tmp_path, localstripe, sync: str = "off", **kwargs):
    fake = FakeInstalls(upstream=localstripe)
    try:
        env = base_env(tmp_path, STRIPE_API_BASE=fake.url, INSTALL_SYNC=sync, **KEYS)
        async with running(env, **kwargs) as app:
            yield app, fake
    finally:
        await fake.close()



async def runs(app, *where):
    return await app.backend.storage.run(
        lambda: list(JobRun.select().where(JobRun.account_id != "platform", *where)
                     .order_by(JobRun.id)))


async def installation(app, account: str, mode: str = "test"):
    return (await app.signed("/api/installation", {"user_id": "usr_1",
                                                   "account_id": account})).json()[mode]


def install_event(type_: str, account: str, livemode: bool = False, created: int | None = None,
                  **fields):
    obj = install_object(account, APP, livemode, install_id="apinst_" + account, **fields)
    return event(type_, account=None, livemode=livemode, created=created, obj=obj)


@pytest.mark.gen_test(timeout=60)
async def test_install_events_act_like_the_lifecycle_events_and_apply_once(tmp_path,
                                                                           localstripe):
    async with with_fake(tmp_path, localstripe) as (app, _):
        t = int(time.time())
        ev = install_event("apps.install.created", "acct_ev", created=t,
                           permissions_granted=["balance_read"])
        assert (await app.webhook(ev, secret=WH_TEST)).status_code == 200
        await app.settle()
        await wait_for(lambda: runs(app, JobRun.outcome == "succeeded"))
        # the old event for the same change: applied already, the job does not run again
        await app.webhook(event(AUTH, "acct_ev", livemode=False, created=t), secret=WH_TEST)
        await app.settle()
        state = await installation(app, "acct_ev")
        assert state["active"] is True and state["permissions_granted"] == ["balance_read"]
        assert state["permissions_pending"] == [] and state["approval_required"] is False
        assert len(await runs(app)) == 1
        # updated: permissions recorded; an older update does not undo a newer one
        await app.webhook(install_event("apps.install.updated", "acct_ev", created=t + 2,
                                        permissions_granted=["balance_read"],
                                        permissions_pending=["customer_read"]), secret=WH_TEST)
        await app.settle()
        await app.webhook(install_event("apps.install.updated", "acct_ev", created=t + 1,
                                        permissions_granted=[]), secret=WH_TEST)
        await app.settle()
        state = await installation(app, "acct_ev")
        assert state["permissions_pending"] == ["customer_read"]
        assert state["approval_required"] is True and state["active"] is True
        assert (await installation(app, "acct_ev", "live")) == {"active": False, "since": None,
                                                                "context": None}
        # deleted: deactivated, app data gone; the old event after it changes nothing more
        assert await app.backend.storage.run(BalanceSnapshot.select().count) == 1
        await app.webhook(install_event("apps.install.deleted", "acct_ev", created=t + 3),
                          secret=WH_TEST)
        await app.settle()
        assert (await installation(app, "acct_ev"))["active"] is False
        assert await app.backend.storage.run(BalanceSnapshot.select().count) == 0
        await app.webhook(event(DEAUTH, "acct_ev", livemode=False, created=t + 3),
                          secret=WH_TEST)
        await app.settle()
        assert (await installation(app, "acct_ev"))["active"] is False
        assert app.backend.scheduler.next_run("balance_snapshot", "acct_ev", "test") is None


@pytest.mark.gen_test(timeout=60)
async def test_missed_webhook_start_up_sync_installs_and_the_job_runs(tmp_path, localstripe):
    fake = FakeInstalls(upstream=localstripe)
    fake.add("acct_missed", APP, livemode=False, permissions_granted=["balance_read"])
    fake.add("acct_elsewhere", "com.example.other", livemode=False)
    try:
        env = base_env(tmp_path, STRIPE_API_BASE=fake.url, INSTALL_SYNC="on", **KEYS)
        async with running(env) as app:  # no webhook at all: the start-up sync finds it
            (run,) = await wait_for(lambda: runs(app, JobRun.outcome == "succeeded"))
            assert (run.account_id, run.mode, run.job) == ("acct_missed", "test",
                                                           "balance_snapshot")
            state = await installation(app, "acct_missed")
            assert state["active"] is True and state["permissions_granted"] == ["balance_read"]
            assert (await installation(app, "acct_elsewhere"))["active"] is False
            metrics = (await app.client.get("/metrics")).text
            assert 'install_sync_changes_total{change="activated",mode="test"} 1.0' in metrics
            claims = await app.backend.storage.run(lambda: list(JobRun.select().where(
                JobRun.job == "installs.sync")))
            assert {(c.mode, c.outcome) for c in claims} == {("live", "succeeded"),
                                                             ("test", "succeeded")}
            # a second replica starting now does not sync again: the claim is taken
            assert await app.backend.install_sync.run_claimed("test", claims[0].fire_time) \
                is None
    finally:
        await fake.close()


@pytest.mark.gen_test(timeout=60)
async def test_sync_deactivates_what_stripe_no_longer_has(tmp_path, localstripe):
    async with with_fake(tmp_path, localstripe) as (app, fake):
        fake.add("acct_stays", APP, livemode=False)
        for account in ("acct_stays", "acct_gone"):
            await app.webhook(event(AUTH, account, livemode=False,
                                    created=int(time.time()) - 10), secret=WH_TEST)
        await app.settle()
        await wait_for(lambda: runs(app, JobRun.outcome == "succeeded", JobRun.account_id
                                    == "acct_gone"))
        result = await app.backend.install_sync.sync("test")
        assert (result.listed, result.activated, result.deactivated) == (1, 0, 1)
        assert (await installation(app, "acct_gone"))["active"] is False
        assert (await installation(app, "acct_stays"))["active"] is True
        remaining = await app.backend.storage.run(
            lambda: [r.account_id for r in BalanceSnapshot.select()])
        assert "acct_gone" not in remaining
        assert app.backend.scheduler.next_run("balance_snapshot", "acct_gone", "test") is None
        metrics = (await app.client.get("/metrics")).text
        assert 'install_sync_changes_total{change="deactivated",mode="test"} 1.0' in metrics
        # nothing differs any more: a second sync changes nothing
        again = await app.backend.install_sync.sync("test")
        assert (again.activated, again.deactivated, again.updated) == (0, 0, 0)


@pytest.mark.gen_test(timeout=60)
async def test_a_listing_that_fails_midway_changes_nothing(tmp_path, localstripe):
    async with with_fake(tmp_path, localstripe) as (app, fake):
        for i in range(250):
            fake.add(f"acct_{i:03d}", APP, livemode=False)
        await app.webhook(event(AUTH, "acct_onlyhere", livemode=False,
                                created=int(time.time()) - 10), secret=WH_TEST)
        await app.settle()
        before = await app.backend.storage.run(
            lambda: [(r.account_id, r.active) for r in Installation.select()])
        fake.fail_list_after(2, status=500)  # two pages of 100, then Stripe errs (retried)
        with pytest.raises(SyncFailed):
            await app.backend.install_sync.sync("test")
        after = await app.backend.storage.run(
            lambda: [(r.account_id, r.active) for r in Installation.select()])
        assert after == before == [("acct_onlyhere", True)]
        fake.fail_list_after(None)
        result = await app.backend.install_sync.sync("test")
        assert (result.listed, result.activated, result.deactivated) == (250, 250, 1)


@pytest.mark.gen_test(timeout=60)
async def test_a_fire_whose_install_lacks_a_permission_is_recorded_and_not_sent(tmp_path,
                                                                               localstripe):
    called: list[str] = []

    @job(every=3600, permissions=["balance_read"])
    async def needs_balance(ctx):
        called.append(ctx.account_id)
        await ctx.stripe.v1.balance.retrieve_async()

    registry = Registry()
    registry.jobs["needs_balance"] = needs_balance.__job_spec__
    async with with_fake(tmp_path, localstripe, registry=registry) as (app, fake):
        fake.add("acct_granted", APP, livemode=False, permissions_granted=["balance_read"])
        fake.add("acct_lacking", APP, livemode=False, permissions_granted=["customer_read"],
                 permissions_pending=["balance_read"])
        await app.backend.install_sync.sync("test")
        from datetime import UTC, datetime
        fire = datetime.fromtimestamp(int(time.time()), UTC)
        runner = app.backend.runner
        assert await runner.fire("needs_balance", "acct_granted", "test", fire) == "succeeded"
        assert await runner.fire("needs_balance", "acct_lacking", "test", fire) == \
            "missing_permission"
        assert called == ["acct_granted"]
        (run,) = await runs(app, JobRun.account_id == "acct_lacking")
        assert run.outcome == "missing_permission" and "balance_read" in run.error
        state = await installation(app, "acct_lacking")
        assert state["permissions_pending"] == ["balance_read"]
        assert state["approval_required"] is True


def test_cli_sync_and_uninstall(tmp_path, localstripe):
    async def scenario():
        fake = FakeInstalls(upstream=localstripe)
        try:
            fake.add("acct_cli", APP, livemode=False)
            env = {"DATABASE_URL": f"sqlite:///{tmp_path}/cli.db", "STRIPE_API_BASE": fake.url,
                   "STRIPE_APP_ID": APP, **KEYS}
            loop = asyncio.get_running_loop()
            out = await loop.run_in_executor(None, lambda: cli(ROOT, "installs", "sync",
                                                               "--test", **env))
            assert out.returncode == 0, out.stdout + out.stderr
            assert "1 installs listed, 1 activated" in out.stdout
            assert "install sync acct_cli/test: activated" in out.stderr
            out = await loop.run_in_executor(None, lambda: cli(
                ROOT, "installs", "uninstall", "--account", "acct_cli", "--test", **env))
            assert out.returncode == 0, out.stdout + out.stderr
            assert fake.state.installs == {}
            out = await loop.run_in_executor(None, lambda: cli(
                ROOT, "installs", "uninstall", "--account", "acct_cli", "--test", **env))
            assert out.returncode == 1 and "cannot uninstall acct_cli (test)" in out.stderr
        finally:
            await fake.close()
        return env

    env = asyncio.run(scenario())
    from models.db import open_database
    db = open_database(env["DATABASE_URL"])
    try:
        row = Installation.get(Installation.account_id == "acct_cli")
        assert (row.mode, row.active, row.install_status) == ("test", False, "uninstalling")
    finally:
        db.close()


@pytest.mark.gen_test(timeout=60)
async def test_simulate_sends_install_events(tmp_path, localstripe):
    async with with_fake(tmp_path, localstripe) as (app, fake):
        env = {"STRIPE_WEBHOOK_SECRETS_TEST": WH_TEST, "STRIPE_APP_ID": APP,
               "STRIPE_API_BASE": fake.url, **KEYS}
        loop = asyncio.get_running_loop()

        def simulate(*args: str):
            return cli(ROOT, "simulate", "--url", app.url, "event", *args, **env)

        out = await loop.run_in_executor(None, lambda: simulate(
            "apps.install.created", "--account", "acct_sim", "--test", "--granted",
            "balance_read", "--pending", "customer_read"))
        assert out.returncode == 0, out.stdout + out.stderr
        assert '"object": "apps.install"' in out.stdout and '"account": null' in out.stdout
        # the Install API fake (a loopback STRIPE_API_BASE) lists it under the event's id
        [(install_id, listed)] = fake.state.installs.items()
        assert listed["account"] == "acct_sim" and listed["livemode"] is False
        assert f'"id": "{install_id}"' in out.stdout
        await app.settle()
        state = await installation(app, "acct_sim")
        assert state["active"] is True and state["permissions_granted"] == ["balance_read"]
        assert state["permissions_pending"] == ["customer_read"]
        out = await loop.run_in_executor(None, lambda: simulate(
            "apps.install.deleted", "--account", "acct_sim", "--test"))
        assert out.returncode == 0, out.stdout + out.stderr
        assert fake.state.installs == {}
        await app.settle()
        assert (await installation(app, "acct_sim"))["active"] is False


def test_bulk_activation_leaves_a_row_a_webhook_wrote_meanwhile(db_url):
    """A sync inserts the installs it found missing in one statement per chunk; an account a
    webhook wrote between the sync's read and its write keeps the newer state (the ordering
    rule), and both kinds come back as rows."""
    from jobs.installs import InstallFacts
    from models.db import open_database
    from models.installation import Change, InstallChange, apply_state, change_many
    from models.migrate import migrate

    db = open_database(db_url)
    migrate(db)
    t = int(time.time())
    facts = {a: InstallFacts(a, "test", f"apinst_{a}", "installed", ("balance_read",), (), False)
             for a in ("acct_new1", "acct_new2", "acct_raced")}
    # a deauthorization newer than the sync's listing arrived after the sync read the table
    apply_state("acct_raced", "test", False, t + 5, "evt_newer")
    changes = [InstallChange(a, "test", Change.INSTALLED, t - 1, "sync", facts=f)
               for a, f in facts.items()]
    out = change_many(changes, frozenset((a, "test") for a in facts))
    assert [(o.view.account_id, o.view.active, o.flipped) for o in out] == [
        ("acct_new1", True, True), ("acct_new2", True, True), ("acct_raced", False, False)]
    rows = {r.account_id: r for r in Installation.select()}
    assert rows["acct_new1"].confirmed and rows["acct_new1"].install_id == "apinst_acct_new1"
    assert rows["acct_new1"].permissions_granted == '["balance_read"]'
    assert rows["acct_raced"].state_source == "evt_newer" and not rows["acct_raced"].active
    db.close()


@pytest.mark.gen_test(timeout=60)
async def test_install_callbacks_ask_the_install_api_at_once(tmp_path, localstripe):
    """Issue 23: with a platform key for the mode, the callback asks the Install API at once:
    a Marketplace install Stripe has takes effect (the common case stays immediate), one it
    lacks stays pending; an install link's mode Stripe has is confirmed, and a mode it
    contradicts is undone, its jobs stopped."""
    from test_install import BROWSER, callback_params, marketplace_params, start

    json_hdr = {"Accept": "application/json"}
    async with with_fake(tmp_path, localstripe) as (app, fake):
        fake.add("acct_mk", APP, livemode=False)
        resp = await app.client.get("/callback/stripe", headers=BROWSER,
                                    params=marketplace_params("usr_1", "acct_mk",
                                                              livemode="false"))
        assert resp.status_code == 200 and "The app is installed" in resp.text
        view = app.backend.installations.get("acct_mk", "test")
        assert view.active and view.confirmed and view.install_id
        assert app.backend.scheduler.next_run("balance_snapshot", "acct_mk", "test") is not None
        # installed in test only: a live-mode Marketplace callback shows the test install, and
        # installs nothing in live
        resp = await app.client.get("/callback/stripe", headers=json_hdr,
                                    params=marketplace_params("usr_2", "acct_mk"))
        assert resp.status_code == 200 and resp.json()["mode"] == "test"
        assert not app.backend.installations.is_active("acct_mk", "live")
        assert not app.backend.installations.get("acct_mk", "live").pending
        # Stripe lists the app on the account in no mode (yet): pending
        resp = await app.client.get("/callback/stripe", headers=json_hdr,
                                    params=marketplace_params("usr_1", "acct_none"))
        assert resp.status_code == 202 and resp.json()["pending"] is True
        assert not app.backend.installations.is_active("acct_none")
        # an install link that did not say its mode (live assumed): Stripe has the install in
        # test mode only, so live is undone at once, no job is left for it, and test is
        # installed instead
        fake.add("acct_link", APP, livemode=False)
        state, _ = await start(app.client)
        resp = await app.client.get("/callback/stripe", headers=json_hdr,
                                    params=callback_params(state, account="acct_link"))
        assert resp.status_code == 200
        assert resp.json() == {"installed": True, "account_id": "acct_link", "mode": "test",
                               "confirmed": True, "pending": False}
        assert not app.backend.installations.is_active("acct_link", "live")
        assert app.backend.scheduler.next_run("balance_snapshot", "acct_link", "live") is None
        assert app.backend.installations.get("acct_link", "test").installed_by == "usr_1"
        # a link in a mode Stripe lists nowhere yet (perhaps not yet): provisional, not undone
        state, _ = await start(app.client)
        resp = await app.client.get("/callback/stripe", headers=json_hdr, params=callback_params(
            state, account="acct_lag", livemode="false"))
        assert resp.status_code == 200 and resp.json()["confirmed"] is False
        assert app.backend.installations.is_active("acct_lag", "test")
