"""Long-running tasks (issue 15): started by signed requests, claimed with leases, run once,
resumed after a kill -9, cancelled by an uninstall. Real backends on loopback, real SQLite and
PostgreSQL, localstripe as the Stripe API, `run.py` as a subprocess where the test kills it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter

import httpx
import pytest
import tornado.web
from conftest import (
    APP_SECRET,
    ROOT,
    WH_TEST,
    base_env,
    compact,
    event,
    free_port,
    running,
    server_child,
    sign,
    wait_for,
)
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from jobs.registry import Registry
from jobs.tasks import task
from models.db import open_database
from models.tasks import Task, TaskStatus, enqueue

AUTH, DEAUTH = "account.application.authorized", "account.application.deauthorized"
KEYS = {"STRIPE_SECRET_KEY_TEST": "sk_test_platformkey",
        "STRIPE_SECRET_KEY_LIVE": "sk_live_platformkey"}


def registry_of(*funcs) -> Registry:
    registry = Registry()
    for f in funcs:
        registry.tasks[f.__task_spec__.name] = f.__task_spec__
    return registry


def ident(account: str = "acct_1", **fields) -> dict:
    return {**fields, "user_id": "usr_1", "account_id": account}



async def install(app, account: str = "acct_1") -> None:
    await app.webhook(event(AUTH, account, livemode=False), secret=WH_TEST)
    await app.settle()
    # settle() sees only processing already started: on a loaded machine the event may not
    # have been picked up yet when it looks, so wait for the install itself (a ceiling)
    await wait_for(lambda: asyncio.sleep(0, app.backend.installations.is_active(account, "test")),
                   20, f"{account} installed")


async def status_of(app, task_id: str, account: str = "acct_1") -> dict:
    resp = await app.signed("/api/tasks/status", ident(account, task_id=task_id))
    assert resp.status_code == 200, resp.text
    return resp.json()


async def finished(app, task_id: str, account: str = "acct_1", timeout: float = 30.0) -> dict:
    async def done():
        body = await status_of(app, task_id, account)
        return body if body["status"] in ("succeeded", "failed", "cancelled") else None
    return await wait_for(done, timeout, f"task {task_id} finished")


def customer_count(localstripe: str) -> int:
    count, after = 0, None
    while True:
        params = {"limit": 100, **({"starting_after": after} if after else {})}
        page = httpx.get(localstripe + "/v1/customers", params=params,
                         auth=("sk_test_x", ""), timeout=10).json()
        count += len(page["data"])
        if not page["has_more"]:
            return count
        after = page["data"][-1]["id"]


def add_customers(localstripe: str, n: int) -> None:
    for i in range(n):
        httpx.post(localstripe + "/v1/customers", data={"email": f"c{i}@example.com"},
                   auth=("sk_test_x", ""), timeout=10).raise_for_status()


# ---- start, poll, finish ---------------------------------------------------------------------

@pytest.mark.gen_test(timeout=90)
async def test_sync_customers_start_poll_finish(tmp_path, db_url, localstripe):
    add_customers(localstripe, 7)
    total = customer_count(localstripe)
    env = base_env(tmp_path, DATABASE_URL=db_url, STRIPE_API_BASE=localstripe, **KEYS)
    async with running(env) as app:
        await install(app)
        summary = await app.signed("/api/customers/summary", ident())
        assert summary.json() == {"account_id": "acct_1", "live": None, "test": None,
                                  "sandbox": None}
        resp = await app.signed("/api/tasks/sync_customers", ident(page_size=3))
        assert resp.status_code == 202, resp.text
        started = resp.json()
        assert started["status"] == "queued" and started["name"] == "sync_customers"
        assert started["task_id"].startswith("task_") and started["mode"] == "test"
        body = await finished(app, started["task_id"])
        assert body["status"] == "succeeded", body
        assert body["result"]["count"] == total and body["progress"] == 1.0
        assert body["attempts"] == 1 and body["finished"] >= body["created"]
        summary = (await app.signed("/api/customers/summary", ident())).json()
        assert summary["test"]["count"] == total and summary["test"]["syncing"] is False
        assert summary["test"]["latest"]["id"] == body["result"]["latest"]
        metrics = (await app.client.get("/metrics")).text
        assert 'task_runs_total{outcome="succeeded",task="sync_customers"} 1.0' in metrics


# ---- the input is what the signature covers ---------------------------------------------------

@task()
async def echo(ctx):
    return {"input": ctx.input, "mode": ctx.mode, "key": ctx.idempotency_key("charge")}


@pytest.mark.gen_test(timeout=60)
async def test_only_signed_fields_reach_the_task(tmp_path):
    async with running(base_env(tmp_path), registry=registry_of(echo)) as app:
        await install(app)
        # fully signed body: every field but identity, roles and mode is input
        resp = await app.signed("/api/tasks/echo", ident(note="hi", n=2, mode="test",
                                                         stripe_roles=["admin"]))
        assert resp.status_code == 202, resp.text
        body = await finished(app, resp.json()["task_id"])
        assert body["result"]["input"] == {"note": "hi", "n": 2}
        assert body["result"]["mode"] == "test"
        # only the two-key identity is signed: the extra field is not passed
        raw = compact(ident(note="injected"))
        header = sign(compact({"user_id": "usr_1", "account_id": "acct_1"}), APP_SECRET)
        resp = await app.signed("/api/tasks/echo", raw, header=header)
        assert resp.status_code == 202, resp.text
        other = await finished(app, resp.json()["task_id"])
        assert other["result"]["input"] == {}
        # the idempotency key is per task and label
        assert other["result"]["key"] != body["result"]["key"]


@pytest.mark.gen_test(timeout=60)
async def test_idempotency_key_is_the_same_on_a_retry(tmp_path):
    keys: list[str] = []

    @task(attempts=2, retry_delay=0.01)
    async def flaky(ctx):
        keys.append(ctx.idempotency_key("refund"))
        if ctx.attempt == 1:
            raise RuntimeError("first attempt fails")
        return "ok"

    async with running(base_env(tmp_path), registry=registry_of(flaky)) as app:
        await install(app)
        resp = await app.signed("/api/tasks/flaky", ident())
        body = await finished(app, resp.json()["task_id"])
        assert body["status"] == "succeeded" and body["attempts"] == 2
        assert len(keys) == 2 and keys[0] == keys[1]


@pytest.mark.gen_test(timeout=60)
async def test_failures_retry_then_fail(tmp_path):
    @task(attempts=3, retry_delay=0.01)
    async def broken(ctx):
        raise ValueError("nope")

    async with running(base_env(tmp_path), registry=registry_of(broken)) as app:
        await install(app)
        resp = await app.signed("/api/tasks/broken", ident())
        body = await finished(app, resp.json()["task_id"])
        assert body["status"] == "failed" and body["attempts"] == 3
        assert "ValueError: nope" in body["error"]
        assert "Traceback" not in body["error"]


# ---- who may see and start what ---------------------------------------------------------------

@pytest.mark.gen_test(timeout=60)
async def test_errors_and_other_accounts(tmp_path):
    async with running(base_env(tmp_path, TASK_CONCURRENCY="0"),
                       registry=registry_of(echo)) as app:
        resp = await app.signed("/api/tasks/echo", ident())
        assert resp.status_code == 403  # not installed
        await install(app, "acct_1")
        await install(app, "acct_2")
        resp = await app.signed("/api/tasks/nonexistent", ident())
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "unknown_task"
        resp = await app.signed("/api/tasks/echo", ident(mode="live"))
        assert resp.status_code == 403  # installed in test mode only
        task_id = (await app.signed("/api/tasks/echo", ident())).json()["task_id"]
        # the status route is not a task named "status"
        mine = await status_of(app, task_id)
        assert mine["status"] == "queued" and mine["progress"] is None
        assert "free worker slot" in mine["note"]
        theirs = await app.signed("/api/tasks/status", ident("acct_2", task_id=task_id))
        assert theirs.status_code == 404
        assert "acct_1" not in theirs.text and "echo" not in theirs.text
        bad = await app.signed("/api/tasks/status", ident(task_id=123))
        assert bad.status_code == 400
        assert (await app.client.options("/api/tasks/echo")).status_code == 204


@pytest.mark.gen_test(timeout=60)
async def test_a_flood_of_starts_is_limited(tmp_path):
    env = base_env(tmp_path, TASK_CONCURRENCY="0", TASK_MAX_PENDING="5")
    async with running(env, registry=registry_of(echo)) as app:
        await install(app, "acct_1")
        await install(app, "acct_2")
        answers = await asyncio.gather(*(app.signed("/api/tasks/echo", ident())
                                         for _ in range(12)))
        codes = Counter(r.status_code for r in answers)
        assert codes == {202: 5, 429: 7}
        limited = next(r for r in answers if r.status_code == 429)
        assert limited.json()["error"]["code"] == "too_many_requests"
        assert limited.headers["Retry-After"]
        # another account is not held back by the first one's flood
        assert (await app.signed("/api/tasks/echo", ident("acct_2"))).status_code == 202


# ---- uninstall ---------------------------------------------------------------------------------

@pytest.mark.gen_test(timeout=60)
async def test_uninstall_cancels_queued_and_running_tasks(tmp_path, db_url):
    started, cancelled = asyncio.Event(), asyncio.Event()

    @task(concurrency_per_account=1)
    async def forever(ctx):
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    env = base_env(tmp_path, DATABASE_URL=db_url)
    async with running(env, registry=registry_of(forever)) as app:
        await install(app)
        first = (await app.signed("/api/tasks/forever", ident())).json()["task_id"]
        second = (await app.signed("/api/tasks/forever", ident())).json()["task_id"]
        await asyncio.wait_for(started.wait(), 20)
        queued = await status_of(app, second)
        assert queued["status"] == "queued"
        assert "limit 1" in queued["note"]  # waits for the account's running one
        await app.webhook(event(DEAUTH, "acct_1", livemode=False,
                                created=int(time.time()) + 1), secret=WH_TEST)
        await app.settle()
        await asyncio.wait_for(cancelled.wait(), 10)
        rows = await app.backend.storage.run(lambda: list(Task.select()))
        assert rows == []  # deleted with the other app data
        await asyncio.sleep(0.5)
        assert not app.backend.task_worker.running
        assert first != second


@pytest.mark.gen_test(timeout=60)
async def test_cancel_and_retry_from_the_command_line(tmp_path):
    started = asyncio.Event()

    @task()
    async def slow(ctx):
        started.set()
        await asyncio.sleep(3600)

    url = f"sqlite:///{tmp_path}/app.db"
    env = base_env(tmp_path, TASK_LEASE_SECONDS="1")
    async with running(env, registry=registry_of(slow)) as app:
        await install(app)
        task_id = (await app.signed("/api/tasks/slow", ident())).json()["task_id"]
        await asyncio.wait_for(started.wait(), 20)
        cli_env = {**os.environ, "DATABASE_URL": url}
        out = await asyncio.to_thread(subprocess.run, [sys.executable, "run.py", "tasks",
                                      "cancel", task_id], cwd=ROOT, env=cli_env,
                                      capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert "cancelled" in out.stdout
        body = await finished(app, task_id)
        assert body["status"] == "cancelled"
        await wait_for(lambda: asyncio.sleep(0, not app.backend.task_worker.running), 10,
                       "the running task stopped")
        out = await asyncio.to_thread(subprocess.run, [sys.executable, "run.py", "tasks",
                                      "list", "--account", "acct_1"], cwd=ROOT, env=cli_env,
                                      capture_output=True, text=True, timeout=60)
        assert task_id in out.stdout and "cancelled" in out.stdout
        started.clear()
        out = await asyncio.to_thread(subprocess.run, [sys.executable, "run.py", "tasks",
                                      "retry", task_id], cwd=ROOT, env=cli_env,
                                      capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        await asyncio.wait_for(started.wait(), 20)  # picked up again by the server's worker
        assert (await status_of(app, task_id))["status"] == "running"


# ---- several workers ---------------------------------------------------------------------------

@pytest.mark.gen_test(timeout=120)
async def test_two_backends_run_each_task_once(tmp_path, db_url):
    """Two backends with 4 slots each share one database. The tasks hold until 8 run at once,
    which only both backends together can reach: each task runs once, the work is shared, and
    no account ever has more than its 2 allowed runs at once."""
    runs: Counter[str] = Counter()
    now_running: Counter[str] = Counter()
    peak: Counter[str] = Counter()
    enough = asyncio.Event()
    total_running = 0

    @task(concurrency_per_account=2)
    async def work(ctx):
        nonlocal total_running
        runs[ctx.task_id] += 1
        now_running[ctx.account_id] += 1
        total_running += 1
        peak[ctx.account_id] = max(peak[ctx.account_id], now_running[ctx.account_id])
        if total_running >= 8:
            enough.set()
        try:
            await asyncio.wait_for(enough.wait(), 30)
            await asyncio.sleep(0.01)
        finally:
            now_running[ctx.account_id] -= 1
            total_running -= 1
        return ctx.account_id

    registry = registry_of(work)
    accounts = [f"acct_w{i}" for i in range(6)]
    env = base_env(tmp_path, DATABASE_URL=db_url, TASK_CONCURRENCY="4", TASK_MAX_PENDING="100")
    async with running(env, registry=registry) as one, running(env, registry=registry) as two:
        for account in accounts:
            await install(one, account)
        await two.backend.installations.refresh()
        ids = []
        for i in range(60):
            view = await one.backend.storage.run(enqueue, accounts[i % 6], "test", "work", {},
                                                 3, 100)
            ids.append(view.id)
        one.backend.task_worker.wake()
        two.backend.task_worker.wake()

        async def all_done():
            rows = await one.backend.storage.run(lambda: list(Task.select()))
            return rows if all(r.status == TaskStatus.SUCCEEDED for r in rows) else None
        rows = await wait_for(all_done, 90, "all tasks succeeded")
    assert sorted(runs) == sorted(ids) and set(runs.values()) == {1}
    assert {r.attempts for r in rows} == {1}
    assert len({r.claimed_by for r in rows}) == 2, "the work was not shared"
    assert max(peak.values()) <= 2


# ---- kill -9 midway, then resume ----------------------------------------------------------------

class GatedProxy:
    """Forwards to localstripe and records each customers-list query; once `hold_after` lists
    went through, further lists wait until `gate` opens (so a test knows where the task is)."""

    def __init__(self, upstream: str, hold_after: int) -> None:
        self.upstream, self.hold_after = upstream, hold_after
        self.lists: list[dict[str, str]] = []
        self.gate = asyncio.Event()
        self.client = httpx.AsyncClient(timeout=10)
        proxy = self

        class Handler(tornado.web.RequestHandler):
            async def get(self) -> None:
                if self.request.path == "/v1/customers":
                    proxy.lists.append({k: v[0].decode()
                                        for k, v in self.request.query_arguments.items()})
                    if len(proxy.lists) > proxy.hold_after:
                        await proxy.gate.wait()
                resp = await proxy.client.get(
                    proxy.upstream + self.request.uri,
                    headers={k: v for k, v in self.request.headers.items()
                             if k.lower() in ("authorization", "stripe-account")})
                self.set_status(resp.status_code)
                self.set_header("Content-Type", "application/json")
                self.finish(resp.content)

        sockets = bind_sockets(0, "127.0.0.1")
        self.url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
        self.server = HTTPServer(tornado.web.Application([(r"/.*", Handler)]))
        self.server.add_sockets(sockets)

    async def close(self) -> None:
        self.gate.set()
        self.server.stop()
        await self.client.aclose()


async def signed_post(client: httpx.AsyncClient, path: str, body: dict) -> httpx.Response:
    raw = compact(body)
    return await client.post(path, content=raw, headers={"Stripe-Signature":
                                                         sign(raw, APP_SECRET)})


@pytest.mark.gen_test(timeout=180)
async def test_kill_9_midway_then_resume_from_the_cursor(tmp_path, db_url, localstripe):
    add_customers(localstripe, 9)
    total = customer_count(localstripe)
    proxy = GatedProxy(localstripe, hold_after=2)
    env = base_env(tmp_path, DATABASE_URL=db_url, STRIPE_API_BASE=proxy.url,
                   PORT=str(free_port()), TASK_LEASE_SECONDS="2", REPLICA_POLL_SECONDS="1",
                   **KEYS)
    try:
        async with server_child("run.py", env) as (proc, client):
            raw = json.dumps(event(AUTH, "acct_k", livemode=False))
            await client.post("/webhooks", content=raw,
                              headers={"Stripe-Signature": sign(raw, WH_TEST)})

            async def installed():
                resp = await signed_post(client, "/api/installation", ident("acct_k"))
                return resp.json()["test"]["active"]
            await wait_for(installed, 20, "installed")
            resp = await signed_post(client, "/api/tasks/sync_customers",
                                     ident("acct_k", page_size=2))
            assert resp.status_code == 202, resp.text
            task_id = resp.json()["task_id"]
            # two pages counted and checkpointed; the third list waits at the gate
            await wait_for(lambda: asyncio.sleep(0, len(proxy.lists) > 2), 30, "third page")
            midway = (await signed_post(client, "/api/tasks/status",
                                        ident("acct_k", task_id=task_id))).json()
            assert midway["status"] == "running" and 0 < midway["progress"] < 1
            proc.kill()  # kill -9
            await asyncio.to_thread(proc.wait, 10)
        cursor = proxy.lists[2]["starting_after"]
        before = len(proxy.lists)
        proxy.gate.set()
        async with server_child("run.py", env) as (proc, client):
            async def done():
                body = (await signed_post(client, "/api/tasks/status",
                                          ident("acct_k", task_id=task_id))).json()
                return body if body["status"] == "succeeded" else None
            body = await wait_for(done, 60, "resumed task succeeded")
            summary = (await signed_post(client, "/api/customers/summary",
                                         ident("acct_k"))).json()
        assert body["attempts"] == 2  # the killed attempt counts
        assert body["result"]["count"] == total and summary["test"]["count"] == total
        # the second process went on from the last checkpoint, not from the beginning
        assert proxy.lists[before].get("starting_after") == cursor
        assert all("starting_after" in q for q in proxy.lists[before:])
    finally:
        await proxy.close()
    db = open_database(db_url)
    try:
        row = Task.get_by_id(task_id)
        assert row.status == TaskStatus.SUCCEEDED and row.lease_until is None
    finally:
        db.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_task_whose_install_lacks_a_declared_permission_fails_without_running(tmp_path):
    """Issue 14 for tasks: a declared permission the install has not granted fails the run as
    `missing_permission`; the task (and so Stripe) is not called, and it is not retried."""
    from cli.devtools import make_event
    from cli.fake_installs import install_object

    called: list[str] = []

    @task(permissions=["customer_write"])
    async def tag_customers(ctx):
        called.append(ctx.account_id)
        return {}

    async with running(base_env(tmp_path, **KEYS), registry=registry_of(tag_customers)) as app:
        obj = install_object("acct_1", "com.example.testapp", False, install_id="apinst_1",
                             permissions_granted=["customer_read"])
        created = make_event("apps.install.created", None, False, obj=obj)
        assert (await app.webhook(created, secret=WH_TEST)).status_code == 200
        await app.settle()
        resp = await app.signed("/api/tasks/tag_customers", ident())
        assert resp.status_code == 202, resp.text
        body = await finished(app, resp.json()["task_id"])
        assert body["status"] == "failed" and body["attempts"] == 1
        assert "missing_permission" in body["error"] and "customer_write" in body["error"]
        assert called == []
        metrics = (await app.client.get("/metrics")).text
        assert 'task_runs_total{outcome="missing_permission",task="tag_customers"} 1.0' in metrics


# ---- the claim and the record, on the model ----------------------------------------------------

def test_claims_hold_the_per_account_limit_and_outcomes_need_the_attempt(db_url):
    """settle_and_claim: at most `limit` running per account across claimers (ranked within one
    claim), outcomes recorded only for the holder's current attempt, a retry goes back queued."""
    from models.installation import Installation
    from models.migrate import migrate
    from models.tasks import Outcome, settle_and_claim

    db = open_database(db_url)
    migrate(db)
    try:
        t = time.time()
        for account in ("acct_a", "acct_b", "acct_c"):
            Installation.create(account_id=account, mode="test", active=True, installed_at=t,
                                confirmed=True, state_at=1, created_at=t, updated_at=t)
            for _ in range(4):
                enqueue(account, "test", "pair", {"n": 1}, 3, 100)
        enqueue("acct_gone", "test", "pair", {}, 3, 100)  # not installed: never claimed
        limits = {"pair": 2}
        _, first = settle_and_claim([], limits, 10, "one", 30)
        assert Counter(v.account_id for v in first) == {"acct_a": 2, "acct_b": 2, "acct_c": 2}
        assert {v.attempts for v in first} == {1} and first[0].input == {"n": 1}
        assert settle_and_claim([], limits, 10, "two", 30) == ([], [])  # every group is full
        a = [v for v in first if v.account_id == "acct_a"]
        outcomes = [Outcome(a[0].id, 1, TaskStatus.SUCCEEDED, result={"ok": True}, progress=1.0),
                    Outcome(a[1].id, 1, TaskStatus.QUEUED, error="boom", retry_at=t + 3600),
                    Outcome(first[-1].id, 2, TaskStatus.SUCCEEDED)]  # not its attempt
        assert settle_and_claim(outcomes[:1], limits, 0, "two", 30) == ([False], [])  # not its
        recorded, second = settle_and_claim(outcomes, limits, 10, "one", 30)
        assert recorded == [True, True, False]
        assert [v.account_id for v in second] == ["acct_a", "acct_a"]  # room the outcomes made
        assert {v.claimed_by for v in second} == {"one"}
        done, retried = Task.get_by_id(a[0].id), Task.get_by_id(a[1].id)
        assert (done.status, json.loads(done.result), done.lease_until) == (
            TaskStatus.SUCCEEDED, {"ok": True}, None)
        assert done.finished_at is not None and done.progress == 1.0
        assert (retried.status, retried.error, retried.next_attempt_at, retried.finished_at) == (
            TaskStatus.QUEUED, "boom", t + 3600, None)
        assert Task.get_by_id(first[-1].id).status == TaskStatus.RUNNING
    finally:
        db.close()


@pytest.mark.gen_test(timeout=60)
async def test_progress_held_back_by_the_throttle_is_written_with_the_lease_renewal(tmp_path):
    release = asyncio.Event()

    @task()
    async def steps(ctx):
        await ctx.progress(0.1, note="first")  # written at once
        await ctx.progress(0.7, note="second")  # within a quarter second: held back
        await release.wait()
        return "ok"

    env = base_env(tmp_path, TASK_LEASE_SECONDS="1")
    async with running(env, registry=registry_of(steps)) as app:
        await install(app)
        task_id = (await app.signed("/api/tasks/steps", ident())).json()["task_id"]

        async def second_written():
            body = await status_of(app, task_id)
            return body if body["note"] == "second" else None
        body = await wait_for(second_written, 20, "the held-back progress reached the row")
        assert body["status"] == "running" and body["progress"] == 0.7
        release.set()
        assert (await finished(app, task_id))["status"] == "succeeded"


@pytest.mark.gen_test(timeout=60)
async def test_a_task_claimed_ahead_goes_back_to_the_queue_when_no_slot_frees(tmp_path):
    """One slot. When a run ends the worker claims ahead; if the task it started then runs
    long, the one waiting here for a slot is given back (attempt not counted) for any worker."""
    first_may_end, long_started = asyncio.Event(), asyncio.Event()

    @task()
    async def first(ctx):
        await first_may_end.wait()

    @task()
    async def long(ctx):
        long_started.set()
        await asyncio.sleep(3600)

    env = base_env(tmp_path, TASK_CONCURRENCY="1")
    async with running(env, registry=registry_of(first, long)) as app:
        for account in ("acct_1", "acct_2", "acct_3"):
            await install(app, account)
        a = (await app.signed("/api/tasks/first", ident("acct_1"))).json()["task_id"]
        await wait_for(lambda: asyncio.sleep(0, app.backend.task_worker.running), 20,
                       "the first task runs")
        b = (await app.signed("/api/tasks/long", ident("acct_2"))).json()["task_id"]
        c = (await app.signed("/api/tasks/long", ident("acct_3"))).json()["task_id"]
        first_may_end.set()  # its slot frees: the next turn claims one for it and one ahead
        await asyncio.wait_for(long_started.wait(), 20)
        assert (await finished(app, a))["status"] == "succeeded"

        async def one_given_back():
            rows = await app.backend.storage.run(  # started_at: it was claimed once
                lambda: {r.id: (r.status, r.attempts, r.started_at is not None)
                         for r in Task.select()})
            return rows if sorted([rows[b], rows[c]]) == [("queued", 0, True),
                                                          ("running", 1, True)] else None
        await wait_for(one_given_back, 20, "the task claimed ahead went back to the queue")
        assert len(app.backend.task_worker.running) == 1


@pytest.mark.gen_test(timeout=60)
async def test_a_lone_surrogate_in_a_task_input_is_kept_as_its_escape(tmp_path, caplog):
    """JSON may escape a lone UTF-16 surrogate (`JSON.stringify` writes `"\\ud800"`): a task's
    input is stored as JSON with every non-ASCII character escaped, so it reaches the task and
    comes back in its status as the same escape, never a 500 (issue 23)."""
    async with running(base_env(tmp_path), registry=registry_of(echo)) as app:
        await install(app)
        raw = json.dumps(ident(note="a\ud800b", **{"k\udfff": 1}), separators=(",", ":"))
        assert "\\ud800" in raw
        resp = await app.signed("/api/tasks/echo", raw)
        assert resp.status_code == 202, resp.text
        done = await finished(app, resp.json()["task_id"])
        assert done["result"]["input"] == {"note": "a\ud800b", "k\udfff": 1}
        assert "Traceback" not in caplog.text


@pytest.mark.gen_test(timeout=60)
async def test_a_task_that_fails_for_good_gets_one_log_line(tmp_path, caplog):
    """Whatever ends a task as failed (bad input, a credential not set, an error on its last
    attempt), the log gets one line naming the task, its id, account and mode, and the error
    as stored; a secret the task read is redacted from it (issue 24)."""
    from jobs.tasks import BadInput

    @task(attempts=1)
    async def bad_input(ctx):
        raise BadInput("amount must be positive")

    @task(attempts=1)
    async def unconfigured(ctx):
        await ctx.credentials.get("acme_api_key")

    @task(attempts=2, retry_delay=0.01)
    async def crashing(ctx):
        raise RuntimeError("x" * 5000)

    env = base_env(tmp_path, CREDENTIALS_KEYS="UZmN3JbkH1hlVw-ySUlMkMpcqAeu4pUHNFrKNW0h8pY=")
    async with running(env, registry=registry_of(bad_input, unconfigured, crashing)) as app:
        await install(app)
        caplog.set_level("INFO", logger="app.tasks")
        ids = {}
        for name in ("bad_input", "unconfigured", "crashing"):
            resp = await app.signed(f"/api/tasks/{name}", ident())
            assert resp.status_code == 202, resp.text
            ids[name] = resp.json()["task_id"]
            assert (await finished(app, ids[name]))["status"] == "failed"
    for name, error in (("bad_input", "bad input: amount must be positive"),
                        ("unconfigured", "acme_api_key"), ("crashing", "RuntimeError: xxx")):
        lines = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"
                 and ids[name] in r.getMessage() and "failed (" in r.getMessage()
                 and "retry in" not in r.getMessage()]
        assert len(lines) == 1, (name, lines)
        assert f"task {name} {ids[name]} for acct_1/test failed" in lines[0]
        assert error in lines[0] and len(lines[0]) < 2500
