"""Long-running tasks: one durable row per task, claimed with a lease that its runner renews.

A task row moves queued -> running -> succeeded | failed | cancelled. A failed attempt goes
back to queued with a later `next_attempt_at` (backoff) until `max_attempts`; a running task
whose lease ran out (its process died) is claimable again, and the claim counts the attempt.

Claims (`claim_tasks`) never serialise the replicas on each other:

- PostgreSQL: the candidates are read with `FOR UPDATE SKIP LOCKED` in one short transaction, so
  two replicas polling at once take different rows. Per-account concurrency needs one more step:
  for each (account, task) group among its candidates a claimer takes a transaction-level
  advisory lock (`pg_try_advisory_xact_lock`, skipping groups another claimer holds), and only
  then counts the group's running tasks, in a statement that starts after the lock was taken and
  so sees every claim committed before it.
- SQLite: the whole claim is one short write transaction (`BEGIN IMMEDIATE`), which is serial.

`Task` is an `AccountModel`: an uninstall deletes the account's tasks in that mode (queued ones
never start; a running one loses its row, so its runner's next lease renewal fails and it is
cancelled) together with their results.
"""

from __future__ import annotations

import json
import secrets
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import peewee as pw

from models.base import AccountModel, now
from models.db import is_sqlite, write_transaction
from models.installation import Installation

#: `pg_advisory_xact_lock(class, key)`: the class for per-(account, task) claim locks, and for
#: the per-account start limit.
CLAIM_LOCK_CLASS = 0x7A5C
START_LOCK_CLASS = 0x7A5D


class TaskStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED = (TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED)


class Task(AccountModel):
    id = pw.CharField(max_length=40, primary_key=True)  # task_<32 hex>
    name = pw.CharField(max_length=128)
    input = pw.TextField(default="{}")  # JSON object: the signed fields of the start request
    status = pw.CharField(max_length=16, default=TaskStatus.QUEUED)
    progress = pw.DoubleField(null=True)  # 0..1
    note = pw.TextField(null=True)
    result = pw.TextField(null=True)  # JSON
    error = pw.TextField(null=True)
    attempts = pw.IntegerField(default=0)  # claims so far (a claim after a crash counts)
    max_attempts = pw.IntegerField(default=3)
    lease_until = pw.DoubleField(null=True)
    claimed_by = pw.CharField(max_length=128, null=True)
    created_at = pw.DoubleField(default=now)
    started_at = pw.DoubleField(null=True)
    finished_at = pw.DoubleField(null=True)
    next_attempt_at = pw.DoubleField(default=now)

    class Meta:
        indexes = (
            (("status", "next_attempt_at"), False),
            (("status", "finished_at"), False),  # the status page and retention (008)
            (("account_id", "name", "status"), False),
        )


@dataclass(frozen=True, slots=True)
class TaskView:
    """An immutable copy of a row, safe to hand to the event loop."""

    id: str
    account_id: str
    mode: str
    name: str
    input: dict[str, Any]
    status: TaskStatus
    progress: float | None
    note: str | None
    result: Any
    error: str | None
    attempts: int
    max_attempts: int
    claimed_by: str | None
    lease_until: float | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    next_attempt_at: float

    @classmethod
    def of(cls, row: Task) -> TaskView:
        return cls(row.id, row.account_id, row.mode, row.name, json.loads(row.input or "{}"),
                   TaskStatus(row.status), row.progress, row.note,
                   json.loads(row.result) if row.result is not None else None, row.error,
                   row.attempts, row.max_attempts, row.claimed_by, row.lease_until,
                   row.created_at, row.started_at, row.finished_at, row.next_attempt_at)


def new_task_id() -> str:
    return "task_" + secrets.token_hex(16)


def _lock_key(text: str) -> int:
    """A signed 32-bit key for `pg_advisory_xact_lock(int, int)`."""
    value = zlib.crc32(text.encode())
    return value - (1 << 32) if value >= 1 << 31 else value


class TooManyTasks(Exception):
    """The account already has `limit` unfinished tasks."""


def enqueue(account_id: str, mode: str, name: str, input: Mapping[str, Any],
            max_attempts: int, max_pending: int) -> TaskView:
    """Insert a queued task, unless the account already has `max_pending` unfinished tasks."""
    with write_transaction():
        db = Task._meta.database
        if not is_sqlite(db):  # two starts of one account at once must not both pass the count
            db.execute_sql("SELECT pg_advisory_xact_lock(%s, %s)",
                           (START_LOCK_CLASS, _lock_key(account_id)))
        pending = Task.select().where(
            (Task.account_id == account_id)
            & Task.status.in_((TaskStatus.QUEUED, TaskStatus.RUNNING))).count()
        if pending >= max_pending:
            raise TooManyTasks(f"{account_id} has {pending} unfinished tasks")
        t = now()
        row = Task.create(id=new_task_id(), account_id=account_id, mode=mode, name=name,
                          input=json.dumps(dict(input), separators=(",", ":")),
                          max_attempts=max_attempts, created_at=t, next_attempt_at=t)
    return TaskView.of(row)


def _claimable(t: float, names: Iterable[str]) -> list[pw.Expression]:
    """Two conditions, each served by the (status, next_attempt_at) index: due queued tasks,
    and running tasks whose lease lapsed (their process died)."""
    named = Task.name.in_(list(names))
    return [(Task.status == TaskStatus.RUNNING) & (Task.lease_until < t) & named,
            (Task.status == TaskStatus.QUEUED) & (Task.next_attempt_at <= t) & named]


def _running_counts(groups: set[tuple[str, str]], t: float) -> dict[tuple[str, str], int]:
    counts: dict[tuple[str, str], int] = {}
    accounts = sorted({a for a, _ in groups})
    if not accounts:
        return counts
    query = (Task.select(Task.account_id, Task.name, pw.fn.COUNT(Task.id).alias("n"))
             .where(Task.account_id.in_(accounts) & (Task.status == TaskStatus.RUNNING)
                    & (Task.lease_until >= t))
             .group_by(Task.account_id, Task.name))
    for row in query:
        counts[(row.account_id, row.name)] = row.n
    return counts


def claim_tasks(limits: Mapping[str, int], slots: int, holder: str,
                lease: float) -> list[TaskView]:
    """Claim up to `slots` due tasks for `holder`, at most `limits[name]` running per account.

    A task is due when it is queued and its `next_attempt_at` has come, or running with a
    lapsed lease; the account must still be installed in the task's mode. Each claim sets the
    lease, increments `attempts` and, on the first claim, `started_at`.
    """
    if slots <= 0 or not limits:
        return []
    t = now()
    db = Task._meta.database
    pg = not is_sqlite(db)
    installed = Installation.select(Installation.id).where(
        (Installation.account_id == Task.account_id) & (Installation.mode == Task.mode)
        & Installation.active)
    # Skip the groups already at their limit while choosing candidates (else a window full of
    # one busy account's tasks would starve the others); the count after the lock decides.
    other = Task.alias("other")
    busy = other.select(pw.fn.COUNT(other.id)).where(
        (other.account_id == Task.account_id) & (other.name == Task.name)
        & (other.status == TaskStatus.RUNNING) & (other.lease_until >= t))
    limit = pw.Case(Task.name, list(limits.items()), 1)
    with write_transaction():
        candidates: list[tuple[str, str, str]] = []
        for cond in _claimable(t, limits):
            query = (Task.select(Task.id, Task.account_id, Task.name)
                     .where(cond & pw.fn.EXISTS(installed) & (busy < limit))
                     .order_by(Task.next_attempt_at).limit(slots * 4 - len(candidates)))
            if pg:
                query = query.for_update(skip_locked=True, of=Task)
            candidates.extend(query.tuples())
            if len(candidates) >= slots * 4:
                break
        groups = {(account, name) for _, account, name in candidates}
        if pg and groups:
            keys = {_lock_key(f"{account}:{name}"): (account, name) for account, name in groups}
            got = db.execute_sql(
                "SELECT k FROM unnest(%s::int[]) AS k WHERE pg_try_advisory_xact_lock(%s, k)",
                (sorted(keys), CLAIM_LOCK_CLASS))
            held = {row[0] for row in got.fetchall()}
            groups = {group for key, group in keys.items() if key in held}
        running = _running_counts(groups, t)
        chosen: list[str] = []
        for task_id, account, name in candidates:
            if len(chosen) >= slots or (account, name) not in groups:
                continue
            if running.get((account, name), 0) >= limits[name]:
                continue
            running[(account, name)] = running.get((account, name), 0) + 1
            chosen.append(task_id)
        if not chosen:
            return []
        (Task.update(status=TaskStatus.RUNNING, claimed_by=holder, lease_until=t + lease,
                     attempts=Task.attempts + 1,
                     started_at=pw.fn.COALESCE(Task.started_at, t))
         .where(Task.id.in_(chosen)).execute())
        rows = list(Task.select().where(Task.id.in_(chosen)))
    return [TaskView.of(row) for row in rows]


def _held(task_id: str, holder: str, attempt: int) -> pw.Expression:
    return ((Task.id == task_id) & (Task.status == TaskStatus.RUNNING)
            & (Task.claimed_by == holder) & (Task.attempts == attempt))


def renew_lease(task_id: str, holder: str, attempt: int, lease: float,
                progress: float | None = None, note: str | None = None,
                report: bool = False) -> bool:
    """Extend the lease (and record progress); False when the task is no longer ours: cancelled,
    deleted by an uninstall, or taken over after our lease lapsed."""
    fields: dict[str, Any] = {"lease_until": now() + lease}
    if report:
        fields.update(progress=progress, note=note)
    return bool(Task.update(**fields).where(_held(task_id, holder, attempt)).execute())


def finish_task(task_id: str, holder: str, attempt: int, status: TaskStatus, *,
                result: Any = None, error: str | None = None,
                retry_at: float | None = None, progress: float | None = None,
                note: str | None = None) -> bool:
    """Record the end of an attempt; `retry_at` puts the task back in the queue for then."""
    fields: dict[str, Any] = {"lease_until": None, "error": error, "progress": progress,
                              "note": note}
    if retry_at is not None:
        fields.update(status=TaskStatus.QUEUED, next_attempt_at=retry_at)
    else:
        fields.update(status=status, finished_at=now(),
                      result=None if result is None else json.dumps(result))
    return bool(Task.update(**fields).where(_held(task_id, holder, attempt)).execute())


def release_task(task_id: str, holder: str, attempt: int) -> bool:
    """Give a task back to the queue at once, its attempt not counted (a graceful shutdown)."""
    return bool(Task.update(status=TaskStatus.QUEUED, lease_until=None, next_attempt_at=now(),
                            attempts=Task.attempts - 1)
                .where(_held(task_id, holder, attempt)).execute())


def get_task(task_id: str, account_id: str | None = None) -> TaskView | None:
    cond = Task.id == task_id
    if account_id is not None:
        cond &= Task.account_id == account_id
    row = Task.get_or_none(cond)
    return TaskView.of(row) if row else None


def cancel_task(task_id: str) -> TaskView | None:
    """Cancel a queued or running task (its runner stops at its next lease renewal)."""
    Task.update(status=TaskStatus.CANCELLED, finished_at=now(), lease_until=None).where(
        (Task.id == task_id)
        & Task.status.in_((TaskStatus.QUEUED, TaskStatus.RUNNING))).execute()
    return get_task(task_id)


def retry_task(task_id: str) -> TaskView | None:
    """Queue a finished (failed or cancelled) task again now, with a fresh set of attempts."""
    Task.update(status=TaskStatus.QUEUED, attempts=0, next_attempt_at=now(), finished_at=None,
                lease_until=None, claimed_by=None, error=None, result=None).where(
        (Task.id == task_id) & Task.status.in_(FINISHED)).execute()
    return get_task(task_id)


def list_tasks(account_id: str | None = None, failed: bool = False,
               limit: int = 50) -> list[TaskView]:
    query = Task.select().order_by(Task.created_at.desc()).limit(limit)
    if account_id:
        query = query.where(Task.account_id == account_id)
    if failed:
        query = query.where(Task.status == TaskStatus.FAILED)
    return [TaskView.of(row) for row in query]


def count_by_status() -> dict[str, int]:
    counts = dict.fromkeys(TaskStatus, 0)
    query = Task.select(Task.status, pw.fn.COUNT(Task.id).alias("n")).group_by(Task.status)
    for row in query:
        counts[TaskStatus(row.status)] = row.n
    return {str(k): v for k, v in counts.items()}


def oldest_due_queued(names: Iterable[str]) -> float | None:
    """When the longest-waiting due queued task became due, or None."""
    t = now()
    return (Task.select(pw.fn.MIN(Task.next_attempt_at))
            .where((Task.status == TaskStatus.QUEUED) & (Task.next_attempt_at <= t)
                   & Task.name.in_(list(names))).scalar())


def running_count(account_id: str, name: str) -> int:
    return _running_counts({(account_id, name)}, now()).get((account_id, name), 0)
