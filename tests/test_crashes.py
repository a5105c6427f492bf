"""Issue 13 §4: crashes and outages lose no time.

A real server process killed with SIGKILL mid-processing and restarted; leases on events and
job runs on SQLite and PostgreSQL; interrupted runs retried once; manual runs; skipped fires;
the concurrency slot let go during a retry's backoff; `ctx.idempotency_key`. Time is the
injected clock (time-machine) wherever a lease or a fire time is compared.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import time_machine
from conftest import (
    ROOT,
    WH_LIVE,
    WH_TEST,
    base_env,
    compact,
    event,
    free_port,
    running,
    sign,
    start_server,
)
from stripe_proxy import StripeProxy

from jobs.context import Toolbox
from jobs.registry import Registry, job
from jobs.runner import JobContext, JobRunner
from jobs.scheduler import JobScheduler
from jobs.stripe_api import StripeClients
from models.db import Storage, open_database
from models.enums import RunKind
from models.events import WebhookEvent, claim_event, finish_event, renew_events, store_event
from models.installation import apply_state
from models.installation_index import InstallationIndex
from models.jobs import JobRun, attach_last_runs, claim_run
from models.leases import LEASE_SECONDS
from models.migrate import migrate

AUTH = "account.application.authorized"
MOMENT = datetime(2026, 3, 14, 12, 0, tzinfo=UTC)


@pytest.fixture
def clock():
    """The injected clock of a test that runs an event loop: started before the loop (the loop's
    own clock moves with it), ticking from `MOMENT`."""
    with time_machine.travel(MOMENT, tick=True) as traveller:
        yield traveller


def registry_with(*funcs) -> Registry:
    registry = Registry()
    for f in funcs:
        registry.jobs[f.__job_spec__.name] = f.__job_spec__
    return registry


# ---- kill -9 under webhook load, then restart --------------------------------------------------

def _count(db_path: str, sql: str) -> int:
    with sqlite3.connect(db_path, timeout=10) as conn:
        return conn.execute(sql).fetchone()[0]


def test_kill_9_under_webhook_load_installs_take_effect_within_10_s_of_restart(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRIPE_")}
    env.update(base_env(tmp_path, PORT=str(port), SCHEDULER="off", LOG_LEVEL="warning"))
    db_path = f"{tmp_path}/app.db"
    accounts = [f"acct_k{i}" for i in range(40)]
    bodies = []
    for i, account in enumerate(accounts):
        bodies.append(json.dumps(event(AUTH, account)))
        bodies.append(json.dumps(event("invoice.paid", account, event_id=f"evt_inv{i}")))
    proc = start_server(["tests/hang_server.py"], env, port)
    try:
        async def load() -> list[int]:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=20) as c:
                async def send(body: str) -> int:
                    r = await c.post("/webhooks", content=body.encode(),
                                     headers={"Stripe-Signature": sign(body, WH_LIVE)})
                    return r.status_code
                return list(await asyncio.gather(*(send(b) for b in bodies)))

        assert set(asyncio.run(load())) == {200}
        # As many install events as the processor takes at once (8) are claimed and held (their
        # leases renewed) by the doomed process; the others wait for a slot.
        deadline = time.monotonic() + 20
        while _count(db_path, "SELECT count(*) FROM webhook_event WHERE status='processing'") \
                < 8:
            assert time.monotonic() < deadline, "the install events were never claimed"
            time.sleep(0.05)
        time.sleep(2 * LEASE_SECONDS / 3)  # leases renewed at least once meanwhile
        assert _count(db_path, "SELECT count(*) FROM installation WHERE active") == 0
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert _count(db_path, "SELECT count(*) FROM webhook_event WHERE status='processing'") \
        == 8

    restarted = time.monotonic()
    proc = start_server(["run.py"], env, port)
    try:
        while _count(db_path, "SELECT count(*) FROM installation WHERE active") < len(accounts):
            assert time.monotonic() - restarted < 30, "installs never took effect"
            time.sleep(0.05)
        took = time.monotonic() - restarted
        print(f"\ninstalls took effect {took:.2f} s after the restart "
              f"(lease {LEASE_SECONDS:g} s)")
        assert took <= 10.0, f"installs took {took:.1f} s after the restart"
        # each event's outcome is written just after its installation
        while _count(db_path, "SELECT count(*) FROM webhook_event WHERE status != 'processed'"):
            assert time.monotonic() - restarted < 30, "events never all processed"
            time.sleep(0.05)
        assert _count(db_path, f"SELECT count(*) FROM webhook_event WHERE type='{AUTH}' "
                               "AND attempts = 2") == 8  # the claims the crash left behind
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)


# ---- leases on the database ---------------------------------------------------------------------

def test_event_lease_is_short_renewed_by_its_holder_only_and_taken_over_when_it_lapses(db_url):
    db = open_database(db_url)
    migrate(db)
    try:
        with time_machine.travel(MOMENT, tick=False) as clock:
            store_event("evt_l", "customer.created", "acct_1", True, 1, "{}")
            assert claim_event("evt_l", holder="a").claimed_by == "a"
            assert claim_event("evt_l", holder="b") is None  # held
            clock.shift(LEASE_SECONDS - 1)
            assert renew_events(["evt_l"], time.time() + LEASE_SECONDS, "b") == 0  # not b's
            assert renew_events(["evt_l"], time.time() + LEASE_SECONDS, "a") == 1
            clock.shift(LEASE_SECONDS - 1)  # past the first lease, within the renewed one
            assert claim_event("evt_l", holder="b") is None
            clock.shift(2)  # a stopped renewing: it died
            taken = claim_event("evt_l", holder="b")
            assert taken is not None and taken.attempts == 2 and taken.claimed_by == "b"
            finish_event("evt_l", None, 1, holder="a")  # the former holder records nothing
            assert WebhookEvent.get_by_id("evt_l").status == "processing"
            assert finish_event("evt_l", None, 2, holder="b") == "processed"
            assert WebhookEvent.get_by_id("evt_l").locked_until is None
    finally:
        db.close()


@contextlib.asynccontextmanager
async def runner_for(db_url: str, registry: Registry, accounts: tuple[str, ...] = ("acct_1",),
                     replica: str | None = None,
                     **runner_kw: Any) -> AsyncIterator[tuple[Storage, JobRunner, JobScheduler]]:
    """A job runner (and a scheduler, not started) on a migrated database where `accounts` have
    the app installed in live mode; stopped and closed afterwards."""
    db = open_database(db_url)
    migrate(db)
    storage = Storage(db, workers=2)
    try:
        for account in accounts:
            await storage.run(apply_state, account, "live", True, 1, "setup")
        index = InstallationIndex(storage)
        await index.load()
        runner = JobRunner(Toolbox(registry, storage, index, StripeClients({}, {"live": 1}),
                                   replica=replica), **runner_kw)
        yield storage, runner, JobScheduler(registry, runner, index)
        await runner.stop()
    finally:
        storage.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_run_left_running_by_a_dead_process_is_interrupted_and_retried_once(db_url,
                                                                                   clock):
    ran: list[tuple[str, int]] = []

    @job(every=3600, misfire_grace=600)
    async def hourly(ctx: JobContext) -> None:
        ran.append((ctx.kind, ctx.attempt))

    async with runner_for(db_url, registry_with(hourly), ("acct_1", "acct_2"),
                          replica="alive") as (storage, runner, scheduler):
        fire = int(time.time()) - 60
        old = int(time.time()) - 3600  # beyond the grace of 600 s
        # A dead replica's claims: its lease lapses and nobody renews it.
        for account, at in (("acct_1", fire), ("acct_2", old)):
            await storage.run(claim_run, "hourly", account, "live", at, "dead",
                              RunKind.FIRE, time.time() + LEASE_SECONDS)
        assert await scheduler.sweep() == 0  # still within the lease
        clock.shift(LEASE_SECONDS + 1)
        assert await scheduler.sweep() == 2
        await asyncio.gather(*scheduler._extra)
        assert await scheduler.sweep() == 0
        rows = await storage.run(lambda: list(JobRun.select().order_by(JobRun.id)))
        got = [(r.account_id, r.kind, r.outcome, r.lease_until) for r in rows]
        assert got == [("acct_1", "fire", "interrupted", None),
                       ("acct_2", "fire", "interrupted", None),
                       ("acct_1", "retry", "succeeded", None)]
        assert "lease ran out" in rows[0].error
        assert ran == [("retry", 1)]
        # retried once only: a second retry claim of that fire loses
        again = await runner.fire("hourly", "acct_1", "live",
                                  datetime.fromtimestamp(fire, UTC), kind=RunKind.RETRY)
        assert again == "not_claimed"
        # visible where an operator and the extension look
        (shown,) = await storage.run(attach_last_runs, [{"job": "hourly", "mode": "live"}],
                                     "acct_2")
        assert shown["last_run"]["outcome"] == "interrupted"


@pytest.mark.gen_test(timeout=60)
async def test_a_long_run_keeps_its_lease_while_it_runs(tmp_path, clock):
    release = asyncio.Event()

    @job(every=3600)
    async def long(ctx: JobContext) -> None:
        await release.wait()

    async with runner_for(f"sqlite:///{tmp_path}/long.db", registry_with(long), replica="r",
                          lease=1.0) as (storage, runner, scheduler):
        task = asyncio.ensure_future(runner.fire("long", "acct_1", "live",
                                                 datetime.now(UTC)))
        # three leases long; the lease (renewed every third of it) leaves room for a loaded
        # machine's stalls, which a shorter one turned into a failure that was not the code's
        await asyncio.sleep(3.0)
        assert await scheduler.sweep() == 0
        (row,) = await storage.run(lambda: list(JobRun.select()))
        assert row.outcome == "running" and row.lease_until > time.time()
        release.set()
        assert await task == "succeeded"


# ---- manual runs ---------------------------------------------------------------------------------

@pytest.mark.gen_test(timeout=60)
async def test_manual_runs_are_their_own_runs_unless_one_is_running_now(db_url, clock):
    gate = asyncio.Event()
    seen: list[str] = []

    @job(every=3600)
    async def report(ctx: JobContext) -> None:
        seen.append(ctx.idempotency_key("x"))
        if ctx.kind == RunKind.MANUAL and ctx.seq == 3:
            await gate.wait()

    async with runner_for(db_url, registry_with(report), replica="cli") as (storage, runner, _):
        now = MOMENT  # every run below starts in this very second (the clock is moved back)
        # a fire in this second (the install run, or a scheduled fire)
        assert await runner.fire("report", "acct_1", "live", now) == "succeeded"
        clock.move_to(MOMENT)
        assert await runner.run_now("report", "acct_1", "live") == ("succeeded", None)
        clock.move_to(MOMENT)
        assert await runner.run_now("report", "acct_1", "live") == ("succeeded", None)
        clock.move_to(MOMENT)
        third = asyncio.ensure_future(runner.run_now("report", "acct_1", "live"))
        while len(seen) < 4:
            await asyncio.sleep(0.01)
        clock.move_to(MOMENT)
        outcome, busy = await runner.run_now("report", "acct_1", "live")
        assert outcome == "already_running" and busy.replica == "cli"
        gate.set()
        assert await third == ("succeeded", None)
        rows = await storage.run(lambda: list(JobRun.select().order_by(JobRun.id)))
        assert [(r.kind, r.seq, r.fire_time) for r in rows] == [
            ("fire", 0, int(now.timestamp())), ("manual", 1, int(now.timestamp())),
            ("manual", 2, int(now.timestamp())), ("manual", 3, int(now.timestamp()))]
        assert len(set(seen)) == 4  # each manual run is its own fire for Stripe


# ---- idempotency keys ----------------------------------------------------------------------------

def test_idempotency_key_is_the_same_for_every_attempt_of_a_fire_and_differs_between_fires():
    fire = MOMENT
    clients = StripeClients({}, {"live": 1})

    def ctx(attempt=1, kind=RunKind.FIRE, at=fire, account="acct_1", seq=0):
        return JobContext("balance_snapshot", account, "live", at, attempt, kind=kind, seq=seq,
                          storage=None, clients=clients)

    key = ctx().idempotency_key("payout")
    assert key == ctx(attempt=3).idempotency_key("payout")
    assert key == ctx(kind=RunKind.RETRY).idempotency_key("payout")  # the retry of that fire
    assert key != ctx(at=fire + timedelta(days=1)).idempotency_key("payout")
    assert key != ctx(account="acct_2").idempotency_key("payout")
    assert key != ctx().idempotency_key("refund")
    assert key != ctx(kind=RunKind.MANUAL, seq=1).idempotency_key("payout")
    assert len(key) <= 255 and key.startswith("job_")


@pytest.mark.gen_test(timeout=60)
async def test_the_idempotency_key_reaches_stripe_on_a_post(tmp_path, localstripe, clock):
    keys: list[str] = []

    @job(every=3600, attempts=2, retry_delay=0.01)
    async def make_customer(ctx: JobContext) -> None:
        key = ctx.idempotency_key("customer")
        keys.append(key)
        await ctx.stripe.v1.customers.create_async({"description": "from a job"},
                                                   {"idempotency_key": key})
        if ctx.attempt == 1:
            raise RuntimeError("fail after the side effect: the retry must not repeat it")

    proxy = StripeProxy(localstripe)
    try:
        env = base_env(tmp_path, STRIPE_API_BASE=proxy.url, SCHEDULER="off",
                       STRIPE_SECRET_KEY_TEST="sk_test_platformkey")
        async with running(env, registry=registry_with(make_customer)) as app:
            await app.webhook(event(AUTH, "acct_1", livemode=False), secret=WH_TEST)
            await app.settle()
            fire = datetime.fromtimestamp(int(time.time()), UTC)
            assert await app.backend.runner.fire("make_customer", "acct_1", "test",
                                                 fire) == "succeeded"
        posts = [s for s in proxy.seen if s.method == "POST" and s.path == "/v1/customers"]
        assert len(posts) == 2 and len(set(keys)) == 1
        assert [p.headers["idempotency-key"] for p in posts] == keys
    finally:
        await proxy.close()


# ---- the concurrency slot during backoff, and skipped fires --------------------------------------

@pytest.mark.gen_test(timeout=90)
async def test_retries_against_an_unreachable_stripe_do_not_starve_a_job_that_does_not_call_it(
        tmp_path, clock):
    ticks: list[int] = []

    @job(every=1, attempts=4, retry_delay=2.0)
    async def balance(ctx: JobContext) -> None:  # the example job's shape: it calls Stripe
        await ctx.stripe.v1.balance.retrieve_async()

    @job(every=1)
    async def tick(ctx: JobContext) -> None:
        ticks.append(int(ctx.fire_time.timestamp()))

    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    accounts = ["acct_1", "acct_2", "acct_3"]
    env = base_env(tmp_path, STRIPE_API_BASE=dead, JOB_CONCURRENCY="2",
                   STRIPE_SECRET_KEY_LIVE="sk_live_platformkey")
    async with running(env, registry=registry_with(balance, tick)) as app:
        app.backend.clients.max_network_retries = 0
        for account in accounts:
            await app.webhook(event(AUTH, account))
        await app.settle()
        start = int(time.time())
        await asyncio.sleep(6)
        end = int(time.time())
        rows = await app.backend.storage.run(lambda: list(JobRun.select()))
        metrics = (await app.client.get("/metrics")).text
        body = (await app.signed("/api/jobs", compact({"user_id": "usr_1",
                                                       "account_id": "acct_1"}))).json()
    tick_rows = [r for r in rows if r.job == "tick"]
    tick_fires = {r.fire_time for r in tick_rows if r.account_id == "acct_1"}
    expected = set(range(start + 1, end))
    assert expected <= tick_fires, f"tick fires missing: {sorted(expected - tick_fires)}"
    assert not [r for r in tick_rows if r.outcome == "skipped"]
    # the Stripe job's fires overlap its own retries: those are recorded as skipped, with why
    skipped = [r for r in rows if r.job == "balance" and r.outcome == "skipped"]
    assert skipped and {r.error for r in skipped} == {"the previous fire was still running"}
    assert 'job_runs_total{job="balance",outcome="skipped"}' in metrics
    shown = {row["job"]: row["last_run"] for row in body["jobs"]}
    assert shown["balance"]["outcome"] in ("skipped", "retrying", "failed")


def test_jobs_run_twice_in_a_row_and_refused_while_running_and_list_says_why(tmp_path,
                                                                             localstripe):
    from test_e2e import cli

    url = f"sqlite:///{tmp_path}/cli.db"
    db = open_database(url)
    migrate(db)
    apply_state("acct_cli", "test", True, 1, "setup")
    db.close()
    env = {"DATABASE_URL": url, "STRIPE_API_BASE": localstripe,
           "STRIPE_SECRET_KEY_TEST": "sk_test_cli"}
    args = ("jobs", "run", "balance_snapshot", "--account", "acct_cli", "--test")
    for _ in range(2):  # no longer `not_claimed` when run again within the same second
        out = cli(ROOT, *args, **env)
        assert out.returncode == 0 and "succeeded" in out.stdout, out.stdout + out.stderr
    db = open_database(url)
    # another process is running it right now (its lease is live)
    t = time.time()  # the subprocess reads the real clock: a lease an hour long
    JobRun.insert(job="balance_snapshot", account_id="acct_cli", mode="test", fire_time=int(t),
                  replica="web-1", started_at=t, outcome="running", kind="fire",
                  lease_until=t + 3600).execute()
    out = cli(ROOT, *args, **env)
    assert out.returncode == 1 and "is running right now" in out.stderr and "web-1" in out.stderr
    JobRun.update(outcome="skipped", error="the previous fire was still running",
                  lease_until=None, finished_at=t).where(JobRun.replica == "web-1").execute()
    db.close()
    out = cli(ROOT, "jobs", "list", **env)
    assert "skipped" in out.stdout and "the previous fire was still running" in out.stdout
