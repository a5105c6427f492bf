"""The shared lease code (models/leases.py) as tasks use it: one renewing UPDATE that says which
rows it renewed, and a keeper that reports the held rows it lost. Real SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio

import pytest
from conftest import wait_for

from models.base import now
from models.db import Storage, open_database
from models.leases import LeaseKeeper, renew_rows_returning
from models.migrate import migrate
from models.tasks import Task, TaskStatus, running_count


def _task(task_id: str, status: TaskStatus, holder: str | None, lease: float | None) -> None:
    t = now()
    Task.create(id=task_id, account_id="acct_1", mode="test", name="x", status=status,
                claimed_by=holder, lease_until=lease, attempts=1, created_at=t,
                next_attempt_at=t)


def test_renewal_returns_the_rows_still_held_by_the_holder(db_url):
    db = open_database(db_url)
    migrate(db)
    try:
        t = now()
        _task("task_mine", TaskStatus.RUNNING, "me", t + 1)
        _task("task_lapsed", TaskStatus.RUNNING, "me", t - 1)  # lapsed, nobody took it: ours
        _task("task_taken", TaskStatus.RUNNING, "other", t + 1)
        _task("task_cancelled", TaskStatus.CANCELLED, "me", None)
        _task("task_done", TaskStatus.SUCCEEDED, "me", None)
        ids = ["task_mine", "task_lapsed", "task_taken", "task_cancelled", "task_done",
               "task_deleted"]
        renewed = renew_rows_returning(Task, Task.lease_until, ids, t + 60, Task.claimed_by,
                                       "me", still=Task.status == TaskStatus.RUNNING)
        assert renewed == {"task_mine", "task_lapsed"}
        leases = dict(Task.select(Task.id, Task.lease_until).tuples())
        assert leases["task_mine"] == leases["task_lapsed"] == t + 60
        assert leases["task_taken"] == t + 1 and leases["task_cancelled"] is None
        assert renew_rows_returning(Task, Task.lease_until, [], t, Task.claimed_by, "me") == set()
    finally:
        db.close()


@pytest.mark.gen_test(timeout=30)
async def test_the_keeper_reports_a_held_row_it_could_not_renew(db_url):
    db = open_database(db_url)
    migrate(db)
    storage = Storage(db, workers=2)
    lost: list[set[str]] = []
    calls: list[list[str]] = []

    def renew(ids: list[str], until: float) -> set[str]:
        calls.append(sorted(ids))
        return renew_rows_returning(Task, Task.lease_until, ids, until, Task.claimed_by, "me",
                                    still=Task.status == TaskStatus.RUNNING)

    keeper: LeaseKeeper[str] = LeaseKeeper(storage, renew, clock=now, lease=0.6,
                                           name="test lease", on_lost=lost.append)
    try:
        t = now()
        for task_id in ("task_a", "task_b", "task_c"):
            await storage.run(_task, task_id, TaskStatus.RUNNING, "me", t + 0.6)
            keeper.hold(task_id)
        keeper.release("task_c")  # released rows are neither renewed nor reported
        await storage.run(lambda: Task.update(status=TaskStatus.CANCELLED, lease_until=None)
                          .where(Task.id == "task_b").execute())
        await storage.run(lambda: Task.update(status=TaskStatus.CANCELLED, lease_until=None)
                          .where(Task.id == "task_c").execute())

        async def reported() -> bool:
            await asyncio.sleep(0)
            return bool(lost)
        await wait_for(reported, 10, "the keeper reported the cancelled row")
        assert lost[0] == {"task_b"}
        assert calls[0] == ["task_a", "task_b"]  # one renewal for every held row
        lease_a = await storage.run(lambda: Task.get_by_id("task_a").lease_until)
        assert lease_a > t + 0.6  # renewed
    finally:
        await keeper.stop()
        storage.close()



def test_running_count_counts_live_leases_of_one_account_and_task(db_url):
    """What a task's status note says it waits for: running tasks of the same account and name
    under a live lease (a lapsed one belongs to a dead process and is claimable)."""
    migrate(open_database(db_url))
    t = now()
    rows = [("t1", "acct_1", "sync", TaskStatus.RUNNING, t + 30),
            ("t2", "acct_1", "sync", TaskStatus.RUNNING, t + 30),
            ("t3", "acct_1", "sync", TaskStatus.RUNNING, t - 30),  # lapsed
            ("t4", "acct_1", "sync", TaskStatus.QUEUED, None),
            ("t5", "acct_1", "other", TaskStatus.RUNNING, t + 30),
            ("t6", "acct_2", "sync", TaskStatus.RUNNING, t + 30)]
    Task.insert_many([{"id": i, "account_id": a, "mode": "test", "name": n, "status": st,
                       "lease_until": lease, "created_at": t, "next_attempt_at": t}
                      for i, a, n, st, lease in rows]).execute()
    assert running_count("acct_1", "sync") == 2
    assert running_count("acct_2", "sync") == 1
    assert running_count("acct_3", "sync") == 0
