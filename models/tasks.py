"""Long-running tasks: one durable row per task, claimed with a lease that its runner renews.

A task row moves queued -> running -> succeeded | failed | cancelled. A failed attempt goes
back to queued with a later `next_attempt_at` (backoff) until `max_attempts`; a running task
whose lease ran out (its process died) is claimable again, and the claim counts the attempt.

A worker records the outcomes of its finished attempts and claims new tasks in one short write
transaction (`settle_and_claim`: one commit for many tasks). A claim is two statements, and
claims never serialise the replicas on each other:

- PostgreSQL: the candidates are read with `FOR UPDATE SKIP LOCKED`, so two replicas polling at
  once take different rows. Per-account concurrency needs one more thing: the same statement
  takes a transaction-level advisory lock per (account, task) group of its candidates
  (`pg_try_advisory_xact_lock`, skipping groups another claimer holds). The claiming UPDATE ...
  RETURNING then counts the group's running tasks; it starts after the lock was taken and so sees
  every claim committed before it.
- SQLite: the whole claim is one short write transaction (`BEGIN IMMEDIATE`), which is serial.

Leases use the shared definitions of `models/leases.py` ("held", "expired", one renewing
UPDATE for all the tasks a worker holds, `renew_tasks`).

A start (`enqueue`) is bounded per account (`StartBounds`, docs/security.md): the input's
size, starts in the last minute, unfinished tasks, and the bytes the account's task rows take
(inputs, results, errors). The counts and the insert are one write transaction, serial per
account across replicas. Stored errors are cut to `MAX_ERROR_CHARS`.

`Task` is an `AccountModel`: an uninstall deletes the account's tasks in that mode (queued ones
never start; a running one loses its row, so its runner's next lease renewal fails and it is
cancelled) together with their results.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import secrets
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import peewee as pw

from models.base import AccountModel, now
from models.db import is_sqlite, write_transaction
from models.installation import Installation
from models.leases import expired, held, renew_rows_returning

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
    #: What the row counts for against its account's storage bound: the bytes of its input,
    #: result and error, and ROW_BYTES; kept by every write of those columns (`enqueue`,
    #: `_record`, `retry_task`), so the bound sums one column of an index.
    size = pw.IntegerField(default=0)

    class Meta:
        indexes = (
            (("status", "next_attempt_at"), False),
            (("status", "finished_at"), False),  # the status page and retention (008)
            (("account_id", "name", "status"), False),
            # the per-account start bounds (011): starts in the last minute, SUM(size)
            (("account_id", "created_at", "size"), False),
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


class InputTooLarge(ValueError):
    """The task's input, as stored (compact JSON), is longer than its task allows."""


class StartsThrottled(Exception):
    """The account started its `StartBounds.per_minute` tasks in the last minute."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        #: Seconds until the oldest of those starts is a minute old.
        self.retry_after = retry_after


class StorageFull(Exception):
    """The account's tasks already take `StartBounds.stored_bytes`."""


#: Bytes a task row counts for besides its input, result and error (its other columns and
#: its index entries, roughly): so that many small tasks count too, and the sum that checks
#: the bound reads at most `stored_bytes / ROW_BYTES` index entries.
ROW_BYTES = 256
#: The longest error text stored for a task (an error may quote the task's input).
MAX_ERROR_CHARS = 2000
START_WINDOW = 60.0


@dataclass(frozen=True, slots=True)
class StartBounds:
    """What one account may start and keep (README, "Configuration"; docs/security.md)."""

    max_pending: int = 20  # unfinished tasks (`TASK_MAX_PENDING`)
    per_minute: int = 30  # starts in the last minute (`TASK_STARTS_PER_MINUTE`)
    stored_bytes: int = 10 * 1024 * 1024  # inputs, results, errors (`TASK_MAX_STORED_BYTES`)
    input_bytes: int = 16 * 1024  # this task's input (`@task(max_input_bytes=...)`)


#: The defaults of the settings and of `@task(max_input_bytes=...)` (declared here, once).
DEFAULT_BOUNDS = StartBounds()


def _octets(sql: str) -> str:
    """SQL for the length in bytes of the text expression `sql` (0 when NULL)."""
    if is_sqlite(Task._meta.database):
        return f"COALESCE(LENGTH(CAST({sql} AS BLOB)), 0)"
    return f"COALESCE(OCTET_LENGTH({sql}), 0)"


def _size_of(input_: str, result: str, error: str) -> pw.SQL:
    """The `size` of a row whose input, result and error are these SQL expressions."""
    return pw.SQL(f"{_octets(input_)} + {_octets(result)} + {_octets(error)} + {ROW_BYTES}")


def stored_bytes(account_id: str) -> int:
    """What the account's task rows take, as the storage bound counts it: the bytes of their
    inputs, results and errors, and `ROW_BYTES` per row (the sum of their `size`, read from
    the (account_id, created_at, size) index)."""
    total = Task.select(pw.fn.SUM(Task.size)).where(Task.account_id == account_id).scalar()
    return int(total or 0)


def _check_bounds(account_id: str, size: int, t: float, bounds: StartBounds) -> None:
    """Inside the start's write transaction, under the account's lock: raise when this start
    would pass one of the account's bounds; the cheapest count first."""
    recent, oldest = (Task.select(pw.fn.COUNT(Task.id), pw.fn.MIN(Task.created_at))
                      .where((Task.account_id == account_id)
                             & (Task.created_at > t - START_WINDOW)).tuples().get())
    if recent >= bounds.per_minute:
        wait = max(1, math.ceil(oldest + START_WINDOW - t))
        raise StartsThrottled(f"{account_id} started {recent} tasks in the last minute "
                              f"(limit {bounds.per_minute})", wait)
    pending = Task.select().where(
        (Task.account_id == account_id)
        & Task.status.in_((TaskStatus.QUEUED, TaskStatus.RUNNING))).count()
    if pending >= bounds.max_pending:
        raise TooManyTasks(f"{account_id} has {pending} unfinished tasks")
    used = stored_bytes(account_id)
    if used + size + ROW_BYTES > bounds.stored_bytes:
        raise StorageFull(f"{account_id}'s tasks take {used} bytes; this one would take "
                          f"{size + ROW_BYTES} more (limit {bounds.stored_bytes})")


def enqueue(account_id: str, mode: str, name: str, input: Mapping[str, Any],
            max_attempts: int, max_pending: int | None = None,
            bounds: StartBounds | None = None) -> TaskView:
    """Insert a queued task, unless it would pass one of the account's `bounds` (default
    `StartBounds()`, with `max_pending` when given): `InputTooLarge` (checked before the
    database is), `StartsThrottled`, `TooManyTasks` or `StorageFull`, and nothing is stored.

    The counts and the insert are one write transaction, serial per account on every replica:
    SQLite's write lock, or on PostgreSQL a transaction-level advisory lock on the account, so
    two starts at once cannot both pass a count. The counts run once before it too, without
    a lock, so that a refused start costs no writer anything (three reads of one index)."""
    bounds = bounds or DEFAULT_BOUNDS
    if max_pending is not None:
        bounds = dataclasses.replace(bounds, max_pending=max_pending)
    text = json.dumps(dict(input), separators=(",", ":"))
    size = len(text)  # ensure_ascii: characters are bytes
    if size > bounds.input_bytes:
        raise InputTooLarge(f"the input takes {size} bytes as JSON; this task takes at most "
                            f"{bounds.input_bytes}")
    # First without a lock: a start refused here (an account at a bound trying again and
    # again) never waits for, or holds, the write lock.
    _check_bounds(account_id, size, now(), bounds)
    with write_transaction():
        db = Task._meta.database
        if not is_sqlite(db):  # two starts of one account at once must not both pass the count
            db.execute_sql("SELECT pg_advisory_xact_lock(%s, %s)",
                           (START_LOCK_CLASS, _lock_key(account_id)))
        t = now()
        _check_bounds(account_id, size, t, bounds)
        row = Task.create(id=new_task_id(), account_id=account_id, mode=mode, name=name,
                          input=text, max_attempts=max_attempts, created_at=t,
                          next_attempt_at=t, size=size + ROW_BYTES)
    return TaskView.of(row)


def _claimable(t: float, names: list[str], takeover: bool) -> list[pw.Expression]:
    """The due rows, each condition served by the (status, next_attempt_at) index: queued tasks
    whose time has come, and (when `takeover`) running tasks whose lease lapsed (their process
    died), held to the shared definition of "expired" (`models/leases.py`)."""
    named = Task.name.in_(names)
    due = [(Task.status == TaskStatus.QUEUED) & (Task.next_attempt_at <= t) & named]
    if takeover:
        due.insert(0, (Task.status == TaskStatus.RUNNING) & expired(Task.lease_until, t) & named)
    return due


def _running_in_group(t: float) -> pw.Select:
    """Per row of `Task`: how many tasks of its account and name are running under a live
    lease (a correlated COUNT over the (account_id, name, status) index)."""
    other = Task.alias("other")
    return other.select(pw.fn.COUNT(other.id)).where(
        (other.account_id == Task.account_id) & (other.name == Task.name)
        & (other.status == TaskStatus.RUNNING) & held(other.lease_until, t))


#: A claim's two statements are built with the ORM once per shape, with these placeholder
#: values, and run with the real ones put in their place: building them costs more than running
#: them (~10 ms a turn on a busy machine).
_T, _UNTIL, _LIMIT, _HOLDER = -7.25e300, -6.25e300, -(2**31) + 7, "\x00holder"
_compiled: dict[tuple[Any, ...], tuple[str, list[Any]]] = {}


def _execute(key: tuple[Any, ...], build: Callable[[], pw.Query],
             values: Mapping[Any, Any]) -> Any:
    """Run the statement `build()` makes (compiled once per `key`) with `values` in place of
    its placeholder parameters; returns the cursor."""
    compiled = _compiled.get(key)
    if compiled is None:
        compiled = _compiled[key] = build().sql()
    sql, params = compiled
    return Task._meta.database.execute_sql(sql, [values.get(p, p) for p in params])


def _candidates(t: float, limits: Mapping[str, int], want: int, pg: bool,
                takeover: bool) -> list[tuple[str, str, str]]:
    """(id, account, name) of up to `2 * want` due tasks whose group has room and whose account
    is installed. On PostgreSQL the rows are locked (`FOR UPDATE SKIP LOCKED`: rows another
    claimer holds are skipped) and so is each group (`pg_try_advisory_xact_lock`, taken in the
    same statement, only for rows that passed the other conditions; a group another claimer
    holds is skipped). Both locks last until the claim's transaction ends."""

    def build(cond: pw.Expression) -> pw.Query:
        installed = Installation.select(Installation.id).where(
            (Installation.account_id == Task.account_id) & (Installation.mode == Task.mode)
            & Installation.active)
        limit = pw.Case(Task.name, list(limits.items()), 1)
        # The running count here only skips full groups while choosing candidates (else a
        # window full of one busy account's tasks would starve the others); the UPDATE's count
        # decides.
        room = pw.fn.EXISTS(installed) & (_running_in_group(_T) < limit)
        if pg:  # CASE: the lock is only tried once the other conditions hold
            group_key = pw.fn.hashtext(Task.account_id.concat(":").concat(Task.name))
            room = pw.Case(None, [(room, pw.fn.pg_try_advisory_xact_lock(CLAIM_LOCK_CLASS,
                                                                         group_key))], False)
        query = (Task.select(Task.id, Task.account_id, Task.name).where(cond & room)
                 .order_by(Task.next_attempt_at).limit(_LIMIT))
        return query.for_update(skip_locked=True, of=Task) if pg else query

    found: list[tuple[str, str, str]] = []
    shape = (pg, tuple(sorted(limits.items())))
    for i, cond in enumerate(_claimable(_T, sorted(limits), takeover)):
        key = ("candidates", takeover, i, *shape)
        cursor = _execute(key, functools.partial(build, cond),
                          {_T: t, _LIMIT: 2 * want - len(found)})
        found.extend(cursor.fetchall())
        if len(found) >= 2 * want:
            break
    return found


#: The columns a claim returns, in `TaskView`'s order.
_VIEW_COLUMNS = (Task.id, Task.account_id, Task.mode, Task.name, Task.input, Task.status,
                 Task.progress, Task.note, Task.result, Task.error, Task.attempts,
                 Task.max_attempts, Task.claimed_by, Task.lease_until, Task.created_at,
                 Task.started_at, Task.finished_at, Task.next_attempt_at)


def _view(row: tuple[Any, ...]) -> TaskView:
    (task_id, account, mode, name, input_, status, progress, note, result, error, attempts,
     max_attempts, claimed_by, lease_until, created, started, finished, next_at) = row
    return TaskView(task_id, account, mode, name, json.loads(input_ or "{}"), TaskStatus(status),
                    progress, note, json.loads(result) if result is not None else None, error,
                    attempts, max_attempts, claimed_by, lease_until, created, started, finished,
                    next_at)


def _claim(t: float, limits: Mapping[str, int], want: int, holder: str, lease: float,
           takeover: bool) -> list[TaskView]:
    """Inside a write transaction: two statements, the candidates and one UPDATE ... RETURNING.

    Of each group's candidates at most `limits[name]` are ranked 1, 2, ...; the UPDATE takes a
    candidate only when the group's running count plus its rank stays within the limit. On
    PostgreSQL that count is read by a statement that starts after the group's advisory lock was
    taken, so it sees every claim another replica committed before."""
    pg = not is_sqlite(Task._meta.database)
    ranks: dict[str, int] = {}
    per_group: dict[tuple[str, str], int] = {}
    for task_id, account, name in _candidates(t, limits, want, pg, takeover):
        rank = per_group.get((account, name), 0) + 1
        if rank <= limits[name] and len(ranks) < want:
            per_group[(account, name)] = rank
            ranks[task_id] = rank
    if not ranks:
        return []
    ranked = max(ranks.values()) > 1
    ids = [f"\x00id{i}" for i in range(len(ranks))]
    rank_marks = [-(2**31) + 100 + i for i in range(len(ranks))]

    def build() -> pw.Query:
        rank: Any = pw.Case(Task.id, list(zip(ids, rank_marks, strict=True)), 0) if ranked \
            else 1
        # (a Select's `+` would mean UNION ALL: build the sum as an expression)
        fits = (pw.Expression(_running_in_group(_T), pw.OP.ADD, rank)
                <= pw.Case(Task.name, list(limits.items()), 1))
        return (Task.update(status=TaskStatus.RUNNING, claimed_by=_HOLDER, lease_until=_UNTIL,
                            attempts=Task.attempts + 1,
                            started_at=pw.fn.COALESCE(Task.started_at, _T))
                .where(Task.id.in_(ids) & fits).returning(*_VIEW_COLUMNS))

    values: dict[Any, Any] = {_T: t, _UNTIL: t + lease, _HOLDER: holder}
    values.update(zip(ids, ranks, strict=True))
    values.update(zip(rank_marks, ranks.values(), strict=True))
    key = ("claim", len(ranks), ranked, pg, tuple(sorted(limits.items())))
    order = {task_id: i for i, task_id in enumerate(ranks)}  # the queue's order
    rows = sorted(_execute(key, build, values).fetchall(), key=lambda row: order[row[0]])
    return [_view(row) for row in rows]


@dataclass(frozen=True, slots=True)
class Outcome:
    """The end of an attempt, recorded by `settle_and_claim` (`record` for one)."""

    task_id: str
    attempt: int
    status: TaskStatus
    result: Any = None
    error: str | None = None
    retry_at: float | None = None  # put the task back in the queue for then
    progress: float | None = None
    note: str | None = None


#: How many outcomes one UPDATE records (8 parameters each; SQLite allows 32,766).
RECORD_CHUNK = 500


def _record(outcomes: Sequence[Outcome], holder: str) -> list[bool]:
    """Record `outcomes` with one UPDATE ... FROM (VALUES ...) ... RETURNING per `RECORD_CHUNK`
    (PostgreSQL, and SQLite >= 3.35; written as SQL because building a query this size with
    the ORM costs more than running it). Per outcome, whether it was recorded (False: that
    attempt is no longer `holder`'s: cancelled, deleted, or taken over)."""
    done: set[str] = set()
    db = Task._meta.database
    table = Task._meta.table_name
    p = db.param
    new_result = (f'CASE WHEN v.column8 IS NULL THEN CAST(v.column7 AS TEXT) '
                  f'ELSE "{table}".result END')
    size = _size_of(f'"{table}".input', new_result, "CAST(v.column6 AS TEXT)").sql
    for start in range(0, len(outcomes), RECORD_CHUNK):
        chunk = outcomes[start:start + RECORD_CHUNK]
        rows = ", ".join([f"({', '.join([p] * 8)})"] * len(chunk))
        # v.column1..8: id, attempt, status, progress, note, error, result, retry_at
        sql = (
            f'UPDATE "{table}" SET status = CAST(v.column3 AS TEXT), '
            f"progress = CAST(v.column4 AS DOUBLE PRECISION), note = CAST(v.column5 AS TEXT), "
            f"error = CAST(v.column6 AS TEXT), lease_until = NULL, "
            f"result = {new_result}, size = {size}, "
            f"finished_at = CASE WHEN v.column8 IS NULL THEN {p} "
            f'ELSE "{table}".finished_at END, '
            f"next_attempt_at = COALESCE(CAST(v.column8 AS DOUBLE PRECISION), "
            f'"{table}".next_attempt_at) '
            f"FROM (VALUES {rows}) AS v "
            f'WHERE "{table}".id = v.column1 AND "{table}".attempts = CAST(v.column2 AS INTEGER)'
            f' AND "{table}".status = {p} AND "{table}".claimed_by = {p} '
            f"RETURNING id")
        params: list[Any] = [now()]
        for o in chunk:
            retry = o.retry_at is not None
            params += [o.task_id, o.attempt, str(TaskStatus.QUEUED if retry else o.status),
                       o.progress, o.note,
                       None if o.error is None else o.error[:MAX_ERROR_CHARS],
                       None if o.result is None or retry else json.dumps(o.result), o.retry_at]
        params += [str(TaskStatus.RUNNING), holder]
        done.update(row[0] for row in db.execute_sql(sql, params).fetchall())
    return [o.task_id in done for o in outcomes]


def settle_and_claim(outcomes: Sequence[Outcome], limits: Mapping[str, int], want: int,
                     holder: str, lease: float,
                     takeover: bool = True) -> tuple[list[bool], list[TaskView]]:
    """One short write transaction (one commit): record `outcomes`, then claim up to `want` due
    tasks for `holder`, at most `limits[name]` running per account and task name.

    A task is due when it is queued and its `next_attempt_at` has come, or (`takeover`) running
    with a lapsed lease; its account must be installed in the task's mode. A claim sets the
    lease, increments `attempts` and, on the first claim, `started_at`. Returns, per outcome,
    whether it was recorded (False: the task was no longer ours), and the claimed tasks. The
    outcomes are recorded first, so a finished task's group has room for the claim.
    """
    if not outcomes and (want <= 0 or not limits):
        return [], []
    with write_transaction():
        recorded = _record(outcomes, holder)
        claimed = (_claim(now(), limits, want, holder, lease, takeover)
                   if want > 0 and limits else [])
    return recorded, claimed


def record(outcome: Outcome, holder: str) -> bool:
    """Record one outcome on its own (a worker that stopped claiming)."""
    return _record([outcome], holder)[0]


def _held(task_id: str, holder: str, attempt: int) -> pw.Expression:
    return ((Task.id == task_id) & (Task.status == TaskStatus.RUNNING)
            & (Task.claimed_by == holder) & (Task.attempts == attempt))


@dataclass(frozen=True, slots=True)
class Progress:
    task_id: str
    attempt: int
    progress: float | None
    note: str | None


def _write_progress(reports: Sequence[Progress], holder: str) -> None:
    for r in reports:
        Task.update(progress=r.progress, note=r.note).where(
            _held(r.task_id, holder, r.attempt)).execute()


def report_progress(reports: Sequence[Progress], holder: str) -> None:
    """Write the progress of tasks `holder` runs (one UPDATE each, one transaction)."""
    if reports:
        with write_transaction():
            _write_progress(reports, holder)


def renew_tasks(task_ids: list[str], until: float, holder: str,
                reports: Sequence[Progress] = ()) -> set[str]:
    """Push the lease of the running tasks `holder` holds to `until`, in one UPDATE, and write
    the progress not written yet; returns the ids renewed (the others are no longer ours:
    cancelled, deleted by an uninstall, or taken over after our lease lapsed)."""
    with write_transaction():
        renewed = renew_rows_returning(Task, Task.lease_until, task_ids, until, Task.claimed_by,
                                       holder, still=Task.status == TaskStatus.RUNNING)
        _write_progress(reports, holder)
    return renewed


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
                lease_until=None, claimed_by=None, error=None, result=None,
                size=_size_of(f'"{Task._meta.table_name}".input', "NULL", "NULL")).where(
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
    """How many of the account's `name` tasks run now under a live lease."""
    return int(Task.select().where(
        (Task.account_id == account_id) & (Task.name == name)
        & (Task.status == TaskStatus.RUNNING) & held(Task.lease_until, now())).count())
