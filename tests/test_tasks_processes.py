"""Two separate server processes (`tests/task_server.py`: `run.py serve` plus one recording
task) share one database, on PostgreSQL and on one SQLite file. Many tasks are started through
both; each runs exactly once (one attempt), no two runs of one account overlap (its concurrency
is 1), and the processes ran tasks side by side (the task's barrier needs both)."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import defaultdict

import httpx
import pytest
from conftest import (
    APP_SECRET,
    base_env,
    compact,
    free_port,
    server_child,
    sign,
    wait_for,
)

from models.db import open_database
from models.installation import Installation
from models.migrate import migrate
from models.tasks import Task, TaskStatus

ACCOUNTS = [f"acct_p{i}" for i in range(6)]
PER_ACCOUNT = 8
SLOTS = 3  # per process: six accounts at once need both processes


async def start(client: httpx.AsyncClient, account: str, n: int) -> str:
    # `n` makes each start's body, and so its signature, new: a signature starts one task
    raw = compact({"n": n, "user_id": "usr_1", "account_id": account})
    resp = await client.post("/api/tasks/record_run", content=raw,
                             headers={"Stripe-Signature": sign(raw, APP_SECRET)})
    assert resp.status_code == 202, resp.text
    return resp.json()["task_id"]


def install(url: str) -> None:
    db = open_database(url)
    try:
        migrate(db)  # once, before both processes start
        t = time.time()
        for account in ACCOUNTS:
            Installation.create(account_id=account, mode="test", active=True, installed_at=t,
                                confirmed=True, state_at=1, created_at=t, updated_at=t)
    finally:
        db.close()


def rows_of(url: str) -> list[Task]:
    db = open_database(url)
    try:
        return list(Task.select())
    finally:
        db.close()


@pytest.mark.gen_test(timeout=90)
async def test_two_processes_run_each_task_once(tmp_path, db_url):
    install(db_url)
    run_dir = tmp_path / "runs"
    env = base_env(tmp_path, DATABASE_URL=db_url, SCHEDULER="off", LOG_LEVEL="warning",
                   TASK_CONCURRENCY=str(SLOTS), TASK_MAX_PENDING="100",
                   TASK_RUN_DIR=str(run_dir), TASK_BARRIER=str(2 * SLOTS))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("STRIPE_")}, **env}
    script = "tests/task_server.py"
    async with server_child(script, {**env, "PORT": str(free_port())}) as (_, one), \
            server_child(script, {**env, "PORT": str(free_port())}) as (_, two):
        ids = []
        for i in range(PER_ACCOUNT):  # through both processes, each waking its worker
            for account in ACCOUNTS:
                ids.append(await start(one if i % 2 else two, account, i))

        async def all_done() -> list[Task] | None:
            rows = await asyncio.to_thread(rows_of, db_url)
            return rows if all(r.status in (TaskStatus.SUCCEEDED, TaskStatus.FAILED)
                               for r in rows) else None
        rows = await wait_for(all_done, 60, "every task finished")

    assert sorted(r.id for r in rows) == sorted(ids)
    assert {r.status for r in rows} == {TaskStatus.SUCCEEDED}
    assert {r.attempts for r in rows} == {1}
    runs = [json.loads(line) for line in (run_dir / "runs.log").read_text().splitlines()]
    assert sorted(run[0] for run in runs) == sorted(ids), "a task ran twice, or not at all"
    assert (run_dir / "released").exists(), f"never {2 * SLOTS} runs at once: not shared"
    assert len({run[2] for run in runs}) == 2 and len({r.claimed_by for r in rows}) == 2
    spans: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for _, account, _, started, ended in runs:
        spans[account].append((started, ended))
    for account, times in spans.items():
        times.sort()
        overlaps = [(a, b) for a, b in zip(times, times[1:], strict=False) if b[0] < a[1]]
        assert not overlaps, f"{account} ran two tasks at once: {overlaps}"
