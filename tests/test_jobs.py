"""Scheduled per-account jobs (issue 6): real APScheduler in the loop, real HTTP to localstripe
through a recording proxy, real SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from conftest import SAMPLE_PACKAGES, WH_TEST, base_env, compact, event, running, wait_for
from stripe_proxy import StripeProxy

from jobs.context import Toolbox
from jobs.events import EventProcessor
from jobs.registry import Registry, job, on_event
from jobs.runner import JobRunner
from jobs.scheduler import job_id
from jobs.stripe_api import LimitedHTTPClient, RateLimiter, StripeClients
from models.db import Storage, open_database
from models.events import store_event
from models.installation import Installation, apply_state
from models.installation_index import InstallationIndex
from models.jobs import JobRun
from models.migrate import migrate
from service.config import Config
from service.services import Services

AUTH, DEAUTH = "account.application.authorized", "account.application.deauthorized"
KEYS = {"STRIPE_SECRET_KEY_TEST": "sk_test_platformkey", "STRIPE_SECRET_KEY_LIVE":
        "sk_live_platformkey", "INSTALL_SYNC": "off"}  # localstripe has no Install API


def registry_with(*funcs) -> Registry:
    """A registry holding only these jobs: a test is about its own jobs, not about whether the
    shipped daily job happens to be due at the moment it runs."""
    registry = Registry()
    for f in funcs:
        registry.jobs[f.__job_spec__.name] = f.__job_spec__
    return registry


# ---- the clock -------------------------------------------------------------------------------
# Every test here runs on an injected clock (time-machine, ticking from a fixed moment), never on
# the wall clock. The tests about scheduling run at several moments of one day: across midnight
# UTC, at noon, and inside the daily slots of the shipped job for the accounts they use, where
# its catch-up and its regular fire could otherwise add runs the test does not expect.
DAY = datetime(2026, 3, 14, tzinfo=UTC)
_DAILY = Registry.discover(SAMPLE_PACKAGES).jobs["balance_snapshot"]


def _in_daily_slot(account: str, mode: str) -> datetime:
    return DAY + timedelta(seconds=_DAILY.offset(account, mode) + 600)


MOMENTS = {
    "across-midnight": DAY - timedelta(seconds=2),
    "noon": DAY + timedelta(hours=12),
    "acct_1-live-daily-slot": _in_daily_slot("acct_1", "live"),
    "acct_1-test-daily-slot": _in_daily_slot("acct_1", "test"),
    "acct_2-live-daily-slot": _in_daily_slot("acct_2", "live"),
}
#: Half past an hour: just after a fire time of the hourly (and 100-second) jobs some tests use,
#: so the next one is far off: the scheduler cannot fire a job meanwhile, or pass a fire time
#: between start-up and the test's reading of the clock, however slowly the machine runs.
mid_hour = pytest.mark.parametrize("clock", [DAY + timedelta(minutes=30)], ids=["mid-hour"],
                                   indirect=True)
at_every_moment = pytest.mark.parametrize("clock", list(MOMENTS.values()), ids=list(MOMENTS),
                                          indirect=True)


@pytest.fixture(autouse=True)
def clock(request):
    """The clock of this test: `MOMENTS["across-midnight"]` unless parametrised."""
    moment = getattr(request, "param", MOMENTS["across-midnight"])
    with time_machine.travel(moment, tick=True) as traveller:
        yield traveller


async def runs(app, *where):
    return await app.backend.storage.run(
        lambda: list(JobRun.select().where(*where).order_by(JobRun.id)) if where
        else list(JobRun.select().order_by(JobRun.id)))


@contextlib.asynccontextmanager
async def proxied(tmp_path, localstripe):
    """A backend whose Stripe API is localstripe behind a recording proxy."""
    proxy = StripeProxy(localstripe)
    try:
        async with running(base_env(tmp_path, STRIPE_API_BASE=proxy.url, **KEYS)) as app:
            yield app, proxy
    finally:
        await proxy.close()



@at_every_moment
@pytest.mark.gen_test(timeout=60)
async def test_install_runs_the_example_job_with_the_accounts_header_and_mode_key(
        tmp_path, localstripe):
    async with proxied(tmp_path, localstripe) as (app, proxy):
        await app.webhook(event(AUTH, "acct_1", livemode=False), secret=WH_TEST)
        (run,) = await wait_for(lambda: runs(app, JobRun.outcome == "succeeded"))
        assert (run.job, run.account_id, run.mode, run.attempt) == (
            "balance_snapshot", "acct_1", "test", 1)
        (call,) = [s for s in proxy.seen if s.path == "/v1/balance"]
        assert call.headers["stripe-account"] == "acct_1"
        assert call.headers["authorization"] == "Bearer sk_test_platformkey"
        # jobs are scheduled for the account and visible to the extension
        sched = app.backend.scheduler
        assert sched.next_run("balance_snapshot", "acct_1", "test") is not None
        body = (await app.signed("/api/jobs", {"user_id": "usr_1",
                                               "account_id": "acct_1"})).json()
        (row,) = body["jobs"]
        assert row["job"] == "balance_snapshot" and row["mode"] == "test"
        assert row["next_run"] > time.time() and row["paused"] is False
        assert row["last_run"]["outcome"] == "succeeded"
        balance = (await app.signed("/api/balance", {"user_id": "usr_1",
                                                     "account_id": "acct_1"})).json()
        assert balance["live"] is None
        assert balance["test"]["available"][0]["amount"] == 2000  # localstripe's balance
        # uninstall: jobs stop, app data goes
        await app.webhook(event(DEAUTH, "acct_1", livemode=False,
                                created=int(time.time()) + 1), secret=WH_TEST)
        await app.settle()
        assert sched.next_run("balance_snapshot", "acct_1", "test") is None
        assert sched.job_count() == 0
        resp = await app.signed("/api/balance", {"user_id": "usr_1", "account_id": "acct_1"})
        assert resp.status_code == 403


@pytest.mark.gen_test(timeout=60)
async def test_live_mode_uses_the_live_key(tmp_path, localstripe):
    async with proxied(tmp_path, localstripe) as (app, proxy):
        await app.webhook(event(AUTH, "acct_live1", livemode=True))
        await wait_for(lambda: runs(app, JobRun.outcome == "succeeded"))
        (call,) = [s for s in proxy.seen if s.path == "/v1/balance"]
        assert call.headers["authorization"] == "Bearer sk_live_platformkey"
        assert call.headers["stripe-account"] == "acct_live1"


@pytest.mark.gen_test(timeout=60)
async def test_429_backs_off_then_succeeds(tmp_path, localstripe):
    async with proxied(tmp_path, localstripe) as (app, proxy):
        proxy.fail_next(429, times=2, type_="rate_limit_error")
        await app.webhook(event(AUTH, "acct_1", livemode=False), secret=WH_TEST)
        (run,) = await wait_for(lambda: runs(app, JobRun.outcome == "succeeded"))
        calls = [s for s in proxy.seen if s.path == "/v1/balance"]
        assert [c.status for c in calls] == [429, 429, 200]
        assert run.attempt == 1  # absorbed by the client's backoff, not a job retry
        metrics = (await app.client.get("/metrics")).text
        assert 'stripe_api_calls_total{mode="test",outcome="429"} 2.0' in metrics



def test_429_backoff_is_full_jitter_below_a_cap_or_follows_retry_after():
    client = LimitedHTTPClient(RateLimiter(10), base_delay=0.5, max_delay=30.0, timeout=5)
    for _ in range(200):
        assert 0.0 <= client.backoff(2, {}) <= 2.0
        assert 0.0 <= client.backoff(20, None) <= 30.0
        assert 3.0 <= client.backoff(0, {"retry-after": "3"}) <= 3.5
        assert 30.0 <= client.backoff(0, {"retry-after": "600"}) <= 30.5

@pytest.mark.gen_test(timeout=60)
async def test_5xx_is_retried_by_the_client_with_backoff(tmp_path, localstripe):
    async with proxied(tmp_path, localstripe) as (app, proxy):
        proxy.fail_next(500, times=2)
        await app.webhook(event(AUTH, "acct_1", livemode=False), secret=WH_TEST)
        (run,) = await wait_for(lambda: runs(app, JobRun.outcome == "succeeded"))
        calls = [s for s in proxy.seen if s.path == "/v1/balance"]
        assert [c.status for c in calls] == [500, 500, 200]
        assert calls[2].at - calls[0].at > 0.5  # the library's jittered backoff waited
        assert run.attempt == 1


@pytest.mark.gen_test(timeout=60)
async def test_revoked_access_pauses_the_account(tmp_path, localstripe):
    async with proxied(tmp_path, localstripe) as (app, proxy):
        proxy.fail_next(401, type_="invalid_request_error")
        await app.webhook(event(AUTH, "acct_1", livemode=False), secret=WH_TEST)
        (run,) = await wait_for(lambda: runs(app, JobRun.outcome == "revoked"))
        assert run.attempt == 1 and "AuthenticationError" in run.error
        assert len([s for s in proxy.seen if s.path == "/v1/balance"]) == 1  # no retries
        view = app.backend.installations.get("acct_1", "test")
        assert view.active and view.jobs_paused
        assert app.backend.scheduler.job_count() == 0
        body = (await app.signed("/api/jobs", {"user_id": "usr_1",
                                               "account_id": "acct_1"})).json()
        assert body["jobs"][0]["paused"] is True and body["jobs"][0]["next_run"] is None


@mid_hour
@pytest.mark.gen_test(timeout=60)
async def test_failing_job_is_retried_and_recorded(tmp_path):
    calls: list[int] = []

    @job(every=3600, attempts=3, retry_delay=0.01)
    async def flaky(ctx):
        calls.append(ctx.attempt)
        if ctx.attempt < 3:
            raise ValueError(f"try {ctx.attempt}")

    @job(every=3600, attempts=2, retry_delay=0.01)
    async def broken(ctx):
        raise RuntimeError("always")

    async with running(base_env(tmp_path), registry=registry_with(flaky, broken)) as app:
        await app.webhook(event(AUTH, "acct_1"))
        await app.settle()
        fire = datetime.fromtimestamp(int(time.time()), UTC)
        runner = app.backend.runner
        assert await runner.fire("flaky", "acct_1", "live", fire) == "succeeded"
        assert calls == [1, 2, 3]
        assert await runner.fire("broken", "acct_1", "live", fire) == "failed"
        assert await runner.fire("broken", "acct_1", "live", fire) == "not_claimed"
        flaky_run, broken_run = await runs(app, JobRun.job.in_(("flaky", "broken")))
        assert (flaky_run.outcome, flaky_run.attempt, flaky_run.error) == ("succeeded", 3, None)
        assert (broken_run.outcome, broken_run.attempt) == ("failed", 2)
        assert "RuntimeError: always" in broken_run.error
        assert await runner.fire("flaky", "acct_2", "live", fire) == "not_active"


@pytest.mark.gen_test(timeout=30)
async def test_runner_and_processor_report_outcomes_through_callbacks(tmp_path):
    @job(every=3600)
    async def fine(ctx):
        pass

    @on_event("customer.created")
    async def greet(ctx):
        raise RuntimeError("not today")

    db = open_database(f"sqlite:///{tmp_path}/callbacks.db")
    migrate(db)
    apply_state("acct_1", "live", True, 1, "setup")
    storage = Storage(db, workers=2)
    index = InstallationIndex(storage)
    await index.load()
    registry = Registry(jobs={"fine": fine.__job_spec__}, handlers={"customer.created": [greet]})
    clients = StripeClients({}, {"live": 10, "test": 10})
    outcomes, statuses = [], []
    runner = JobRunner(Toolbox(registry, storage, index, clients, replica="r"),
                       on_outcome=lambda name, outcome: outcomes.append((name, outcome)))
    processor = EventProcessor(Toolbox(registry, storage, index, clients),
                               on_processed=lambda type_, status: statuses.append((type_, status)))
    try:
        fire = datetime.fromtimestamp(int(time.time()), UTC)
        assert await runner.fire("fine", "acct_1", "live", fire) == "succeeded"
        assert await runner.fire("fine", "acct_1", "live", fire) == "not_claimed"  # not run
        assert await runner.fire("fine", "acct_2", "live", fire) == "not_active"  # not run
        await storage.run(store_event, "evt_1", "customer.created", "acct_1", True, 1, "{}")
        assert await processor.process("evt_1") == "failed"
        assert outcomes == [("fine", "succeeded")] and statuses == [("customer.created", "failed")]
        quiet = JobRunner(Toolbox(registry, storage, index, clients, replica="q"))  # no callback
        later = datetime.fromtimestamp(int(time.time()) + 60, UTC)
        assert await quiet.fire("fine", "acct_1", "live", later) == "succeeded"
    finally:
        await clients.close()
        storage.close()
        db.close()

@mid_hour
@pytest.mark.gen_test(timeout=60)
async def test_a_run_whose_account_uninstalled_meanwhile_does_not_start(tmp_path):
    ran: list[str] = []

    @job(every=3600)
    async def noted(ctx):
        ran.append(ctx.account_id)

    async with running(base_env(tmp_path), registry=registry_with(noted)) as app:
        await app.webhook(event(AUTH, "acct_1"))
        await app.settle()
        # another replica uninstalls in the database; this one has not heard yet
        await app.backend.storage.run(apply_state, "acct_1", "live", False,
                                      int(time.time()) + 5, "elsewhere")
        assert app.backend.installations.is_active("acct_1", "live")
        fire = datetime.fromtimestamp(int(time.time()), UTC)
        assert await app.backend.runner.fire("noted", "acct_1", "live", fire) == "not_claimed"
        assert ran == []
        await app.backend.installations.refresh()  # the replica poll
        assert app.backend.scheduler.next_run("noted", "acct_1", "live") is None


@at_every_moment
@pytest.mark.gen_test(timeout=60)
async def test_restart_rebuilds_the_schedule_and_runs_one_missed_fire(tmp_path, clock):
    ran: list[datetime] = []

    @job(every=100, misfire_grace=1000)
    async def periodic(ctx):
        ran.append(ctx.fire_time)

    registry = registry_with(periodic)
    env = base_env(tmp_path, SCHEDULER="on")
    clock.move_to(datetime.fromtimestamp(time.time() // 100 * 100 + 30, UTC))  # clear of a
    # regular fire (every 100 s) for the 70 s ahead
    db = open_database(env["DATABASE_URL"])
    migrate(db)
    for account in ("acct_1", "acct_2"):
        apply_state(account, "live", True, int(time.time()) - 5000, "before")
    Installation.update(installed_at=time.time() - 5000).execute()
    db.close()
    async with running(env, registry=registry) as app:
        sched = app.backend.scheduler
        assert sched.next_run("periodic", "acct_1", "live") is not None
        assert sched.next_run("periodic", "acct_2", "live") is not None
        await wait_for(lambda: runs(app, JobRun.outcome == "succeeded"))
        await asyncio.sleep(0.2)
        done = await runs(app)
    # several fires were missed over 5000 s; within the grace, only the latest runs, once
    assert len(ran) == 2 and len(done) == 2
    expected = registry.jobs["periodic"].previous_fire("acct_1", "live", datetime.now(UTC),
                                                       1000)
    assert int(expected.timestamp()) in {r.fire_time for r in done}
    assert all(r.fire_time % 100 == 0 for r in done)  # fire times aligned, same on every replica
    async with running(env, registry=registry) as app:
        await asyncio.sleep(0.5)
        assert len(await runs(app)) == 2  # already recorded: not run again
    assert len(ran) == 2


def test_three_schedulers_on_postgresql_run_each_fire_once(pg_url):
    executions: list[tuple[str, int, str]] = []
    lock = threading.Lock()

    @job(every=1)
    async def tick(ctx):
        with lock:
            executions.append((ctx.account_id, int(ctx.fire_time.timestamp()), "x"))
        await asyncio.sleep(0.05)

    accounts = [f"acct_r{i}" for i in range(40)]
    db = open_database(pg_url)
    migrate(db)
    for account in accounts:
        apply_state(account, "live", True, 1, "setup")

    config = Config(database_url=pg_url, db_workers=4, job_concurrency=50,
                    app_packages=SAMPLE_PACKAGES[2:])

    async def replica(name: str, stop_at: float) -> None:
        registry = Registry()
        registry.jobs["tick"] = tick.__job_spec__
        services = await Services.open(config, until="scheduler", registry=registry,
                                       replica=name, database=db)
        await asyncio.sleep(stop_at - time.time())
        await services.stop(5)

    async def main() -> None:
        stop_at = time.time() + 3.5
        await asyncio.gather(*(replica(f"replica{i}", stop_at) for i in range(3)))

    asyncio.run(main())
    keys = [(a, t) for a, t, _ in executions]
    assert len(keys) >= len(accounts) * 2, "too few fires to prove anything"
    assert len(keys) == len(set(keys)), "a fire ran twice"
    rows = list(JobRun.select())
    assert len(rows) == len(keys)
    assert {r.outcome for r in rows} == {"succeeded"}
    assert len({r.replica for r in rows}) >= 2, "the work was not shared between replicas"
    db.close()


@at_every_moment
@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("scheduler", ["on", "off"])
async def test_jobs_endpoint_shape(tmp_path, scheduler):
    async with running(base_env(tmp_path, SCHEDULER=scheduler)) as app:
        await app.webhook(event(AUTH, "acct_1"))
        await app.settle()
        resp = await app.signed("/api/jobs", compact({"user_id": "usr_1",
                                                      "account_id": "acct_1"}))
        body = resp.json()
        assert body["account_id"] == "acct_1"
        (row,) = body["jobs"]
        assert set(row) >= {"job", "mode", "paused", "next_run", "last_run"}
        assert row["mode"] == "live" and isinstance(row["next_run"], int)
        assert time.time() < row["next_run"] <= time.time() + 86400
        health = (await app.client.get("/healthz")).json()
        assert health["scheduler"]["running"] is (scheduler == "on")


@mid_hour
@pytest.mark.gen_test(timeout=60)
async def test_start_adds_jobs_soonest_first_with_their_trigger_times(tmp_path):
    """Start-up plans every job's next fire, sorts by (fire time, id) and adds them in that
    order: the schedule holds each job at its trigger's next fire time, in that order, and a
    cron that never fires again (30 February) is held paused, as APScheduler itself holds it."""

    @job(every=100)
    async def periodic(ctx):
        pass

    @job(cron="0 0 30 2 *")
    async def never(ctx):
        pass

    registry = registry_with(periodic, never)
    env = base_env(tmp_path, SCHEDULER="on")
    db = open_database(env["DATABASE_URL"])
    migrate(db)
    accounts = [f"acct_{i}" for i in range(5)]
    for account in accounts:
        apply_state(account, "live", True, int(time.time()) - 50, "before")
    db.close()
    async with running(env, registry=registry) as app:
        sched = app.backend.scheduler
        now = datetime.now(UTC)
        for account in accounts:
            expected = registry.jobs["periodic"].trigger(account, "live").get_next_fire_time(
                None, now)
            assert sched.next_run("periodic", account, "live") == expected
            assert sched.next_run("never", account, "live") is None
            assert sched._aps.get_job(job_id("never", account, "live")) is not None
        held = [(j.next_run_time, j.id) for j in sched._aps.get_jobs()]
        assert len(held) == 2 * len(accounts)
        timed = [h for h in held if h[0] is not None]
        assert timed == sorted(timed) and held[len(timed):] == [h for h in held if h[0] is None]
