"""Retention (issue 13 §3): what is pruned and what is kept, in small batches, on SQLite and
PostgreSQL, by `prune` on an injected clock and by `run.py prune`."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import pytest
import time_machine
from conftest import ROOT
from test_e2e import cli

from models.db import Storage, open_database
from models.enums import EventStatus, JobOutcome
from models.events import WebhookEvent
from models.install_state import InstallState
from models.jobs import JobRun
from models.migrate import migrate
from models.replicas import Replica
from models.retention import DAY, prune
from models.tasks import Task, TaskStatus
from models.used_signatures import CLOCK_SKEW, UsedSignature

MOMENT = datetime(2026, 3, 14, 12, 0, tzinfo=UTC)


def _event(i: str, status: str, age_days: float, t: float) -> dict:
    at = t - age_days * DAY
    return {"id": f"evt_{i}", "type": "x", "account_id": "acct_1", "livemode": True,
            "created": int(at), "payload": "{}", "received_at": at, "status": status,
            "processed_at": at if status == EventStatus.PROCESSED else None}


def _run(i: int, outcome: str, age_days: float, t: float) -> dict:
    at = t - age_days * DAY
    finished = None if outcome == JobOutcome.RUNNING else at
    return {"job": "j", "account_id": "acct_1", "mode": "live", "fire_time": int(at) + i,
            "started_at": at, "finished_at": finished, "outcome": outcome,
            "lease_until": t + 5 if finished is None else None}


def _fill(t: float) -> None:
    WebhookEvent.insert_many(
        [_event(f"old{i}", EventStatus.PROCESSED, 31, t) for i in range(7)]
        + [_event("new", EventStatus.PROCESSED, 29, t),
           _event("failed_old", EventStatus.FAILED, 91, t),
           _event("dead_kept", EventStatus.DEAD, 89, t),
           _event("pending_old", EventStatus.PENDING, 400, t)]).execute()
    JobRun.insert_many(
        [_run(i, JobOutcome.SUCCEEDED, 31, t) for i in range(5)]
        + [_run(10, JobOutcome.FAILED, 29, t), _run(11, JobOutcome.RUNNING, 400, t)]).execute()
    InstallState.insert_many([
        {"state": "expired", "account_id": "acct_1", "used_at": t - 700, "expires_at": t - 100},
        {"state": "live", "account_id": "acct_1", "used_at": t, "expires_at": t + 500},
    ]).execute()
    Replica.insert_many([
        {"name": "gone:1", "host": "gone", "pid": 1, "version": "0", "started_at": t - 3 * DAY,
         "seen_at": t - 2 * DAY},
        {"name": "here:2", "host": "here", "pid": 2, "version": "0", "started_at": t - DAY,
         "seen_at": t - 10},
    ]).execute()
    UsedSignature.insert_many([  # expired past the clock-skew margin, expired within it, live
        {"key": "a" * 64, "expires_at": t - CLOCK_SKEW - 1},
        {"key": "b" * 64, "expires_at": t - CLOCK_SKEW + 10},
        {"key": "c" * 64, "expires_at": t + 100},
    ]).execute()
    Task.insert_many([
        _task("done_old", TaskStatus.SUCCEEDED, 31, t),
        _task("cancelled_old", TaskStatus.CANCELLED, 31, t),
        _task("done_new", TaskStatus.SUCCEEDED, 29, t),
        _task("failed_old", TaskStatus.FAILED, 91, t),
        _task("failed_kept", TaskStatus.FAILED, 89, t),
        _task("queued_old", TaskStatus.QUEUED, 400, t),
    ]).execute()


def _task(i: str, status: str, age_days: float, t: float) -> dict:
    at = t - age_days * DAY
    finished = at if status in (TaskStatus.SUCCEEDED, TaskStatus.FAILED,
                                TaskStatus.CANCELLED) else None
    return {"id": f"task_{i}", "account_id": "acct_1", "mode": "live", "name": "n",
            "input": "{}", "status": status, "created_at": at, "finished_at": finished}


@pytest.fixture
def clock():
    with time_machine.travel(MOMENT, tick=True) as traveller:
        yield traveller


@pytest.mark.gen_test(timeout=60)
async def test_prune_keeps_what_is_young_failed_or_running_in_small_batches(db_url, clock):
    db = open_database(db_url)
    migrate(db)
    storage = Storage(db, workers=2)
    try:
        await storage.run(_fill, time.time())
        calls = 0
        original = storage.run

        async def counting(fn, *args, **kwargs):
            nonlocal calls
            calls += 1
            return await original(fn, *args, **kwargs)

        storage.run = counting  # count the transactions
        counts = await prune(storage, 30, batch=3)
        assert counts == {"events": 7, "failed_events": 1, "job_runs": 5, "install_states": 1,
                          "tasks": 2, "failed_tasks": 1, "replicas": 1, "used_signatures": 1}
        assert calls == 3 + 1 + 2 + 1 + 1 + 1 + 1 + 1  # 7 events in batches of 3, ...
        left = await original(lambda: sorted(e.id for e in WebhookEvent.select()))
        assert left == ["evt_dead_kept", "evt_new", "evt_pending_old"]
        outcomes = await original(lambda: sorted(r.outcome for r in JobRun.select()))
        assert outcomes == ["failed", "running"]
        assert await original(lambda: [s.state for s in InstallState.select()]) == ["live"]
        assert await original(lambda: [r.name for r in Replica.select()]) == ["here:2"]
        assert await original(lambda: sorted(u.key[0] for u in UsedSignature.select())) == [
            "b", "c"]
        assert await original(lambda: sorted(r.id for r in Task.select())) == [
            "task_done_new", "task_failed_kept", "task_queued_old"]
        assert await prune(storage, 30) == dict.fromkeys(counts, 0)
        # decimals: half a day keeps only what is younger than 12 hours
        assert (await prune(storage, 0.5))["events"] == 1
    finally:
        storage.close()


@pytest.mark.gen_test(timeout=60)
async def test_prune_lets_the_loop_run_between_batches(tmp_path, clock):
    db = open_database(f"sqlite:///{tmp_path}/p.db")
    migrate(db)
    storage = Storage(db, workers=2)
    try:
        t = time.time()
        await storage.run(lambda: WebhookEvent.insert_many(
            [_event(str(i), EventStatus.PROCESSED, 40, t) for i in range(2000)]).execute())
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.ensure_future(ticker())
        assert (await prune(storage, 30, batch=100))["events"] == 2000
        task.cancel()
        assert ticks >= 20  # the loop ran between the 20 batches
    finally:
        storage.close()


def test_run_py_prune(tmp_path):
    url = f"sqlite:///{tmp_path}/cli.db"
    db = open_database(url)
    migrate(db)
    t = time.time()  # the subprocess reads the real clock: ages far from any boundary
    WebhookEvent.insert_many([_event("a", EventStatus.PROCESSED, 2, t),
                              _event("b", EventStatus.PROCESSED, 0.1, t)]).execute()
    db.close()
    out = cli(ROOT, "prune", DATABASE_URL=url, RETENTION_DAYS="0.5")
    assert out.returncode == 0, out.stderr
    assert "RETENTION_DAYS=0.5" in out.stdout and "events: 1" in out.stdout
    db = open_database(url)
    assert [e.id for e in WebhookEvent.select()] == ["evt_b"]
    db.close()
    out = cli(ROOT, "prune", DATABASE_URL=url, RETENTION_DAYS="soon")
    assert out.returncode == 2 and "RETENTION_DAYS" in out.stderr
