"""Retention: what is old enough to delete, deleted in small batches that never hold the loop.

`RETENTION_DAYS` (default 30, decimals allowed) decides:

- webhook events processed more than `RETENTION_DAYS` ago (their payloads are the bulk of the
  database);
- failed and dead events received more than three times as long ago (`FAILED_FACTOR`): kept
  longer for the operator to look at and replay;
- job runs finished more than `RETENTION_DAYS` ago (runs under way are never touched);
- install states past their expiry;
- tasks that succeeded or were cancelled more than `RETENTION_DAYS` ago, failed ones three times
  as long ago (queued and running tasks are never touched);
- processes not seen for a day (their heartbeat rows);
- used extension signatures expired for longer than `CLOCK_SKEW` (models/used_signatures.py).

`prune(storage, days)` deletes them `BATCH` rows per short transaction (one `Storage.run` each,
so the event loop never waits on it and no write lock is held for long), yielding to the loop
between batches; `prune_forever` does it every hour in the server (`service/server.py`) and
`run.py prune` now. Several replicas pruning at once is harmless: each batch deletes by primary
key what is still there.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import peewee as pw

from models.base import now
from models.db import Storage, write_transaction
from models.enums import EventStatus
from models.events import WebhookEvent
from models.install_state import InstallState
from models.jobs import ACTIVE, JobRun
from models.replicas import Replica
from models.tasks import Task, TaskStatus
from models.used_signatures import CLOCK_SKEW, UsedSignature

log = logging.getLogger("app.retention")

BATCH = 500
FAILED_FACTOR = 3
DAY = 86400.0
PRUNE_INTERVAL = 3600.0

Target = tuple[str, type[pw.Model], pw.Expression]


def targets(retention_days: float, t: float) -> list[Target]:
    """What is prunable at time `t`, by name (the names `prune` counts under)."""
    keep = retention_days * DAY
    return [
        ("events", WebhookEvent, (WebhookEvent.status == EventStatus.PROCESSED)
         & (WebhookEvent.processed_at < t - keep)),
        ("failed_events", WebhookEvent,
         WebhookEvent.status.in_((EventStatus.FAILED, EventStatus.DEAD))
         & (WebhookEvent.received_at < t - FAILED_FACTOR * keep)),
        ("job_runs", JobRun, (JobRun.finished_at < t - keep) & JobRun.outcome.not_in(ACTIVE)),
        ("install_states", InstallState, InstallState.expires_at < t),
        ("tasks", Task, Task.status.in_((TaskStatus.SUCCEEDED, TaskStatus.CANCELLED))
         & (Task.finished_at < t - keep)),
        ("failed_tasks", Task, (Task.status == TaskStatus.FAILED)
         & (Task.finished_at < t - FAILED_FACTOR * keep)),
        ("replicas", Replica, Replica.seen_at < t - DAY),
        ("used_signatures", UsedSignature, UsedSignature.expires_at < t - CLOCK_SKEW),
    ]


def delete_batch(model: type[pw.Model], cond: pw.Expression, limit: int = BATCH) -> int:
    """Runs in a database thread: delete up to `limit` rows matching `cond` in one short
    transaction; returns how many."""
    key = model._meta.primary_key
    with write_transaction():
        ids = [row[0] for row in model.select(key).where(cond).limit(limit).tuples()]
        if not ids:
            return 0
        return model.delete().where(key.in_(ids)).execute()


async def prune(storage: Storage, retention_days: float, batch: int = BATCH,
                clock: Callable[[], float] = now, pause: float = 0.0) -> dict[str, int]:
    """Delete everything prunable now, `batch` rows at a time; returns the counts by target.

    Between batches it yields to the event loop (and sleeps `pause` seconds, to leave the
    database to other writers for a while)."""
    counts: dict[str, int] = {}
    for name, model, cond in targets(retention_days, clock()):
        counts[name] = 0
        while True:
            deleted = await storage.run(delete_batch, model, cond, batch)
            counts[name] += deleted
            if deleted < batch:
                break
            await asyncio.sleep(pause)
    return counts


async def prune_forever(storage: Storage, retention_days: float,
                        interval: float = PRUNE_INTERVAL, first_delay: float = 60.0) -> None:
    """In the server: `prune` a minute after start-up, then every `interval` seconds."""
    await asyncio.sleep(first_delay)
    while True:
        try:
            counts = await prune(storage, retention_days)
            if any(counts.values()):
                log.info("pruned (older than %g days): %s", retention_days,
                         ", ".join(f"{n} {name}" for name, n in counts.items()))
        except Exception as exc:  # the database may be down; try again next time
            log.warning("pruning failed: %s", type(exc).__name__)
        await asyncio.sleep(interval)
