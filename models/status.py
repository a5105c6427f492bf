"""Read-models for the operator's status page (service/status.py): every figure in one
database call, aggregates computed by the database (GROUP BY, COUNT over index ranges) and
rows in pages (LIMIT/OFFSET over an index), so that the page costs the same with 100,000
installations and a million events as with ten. Indexes: migration 003.

    snapshot(now, pages) -> dict        # runs in a database thread (Storage.run)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import peewee as pw

from models.db import is_sqlite
from models.enums import MODES, JobOutcome, Mode
from models.events import WebhookEvent
from models.installation import Installation
from models.jobs import JobRun
from models.rejected_webhooks import latest_rejections
from models.replicas import seen_since
from models.tasks import Task, TaskStatus

PAGE_SIZE = 20
HOURS = 24
#: Job outcomes the page lists as failures: the run did not do its work, for whatever reason
#: (an error, a refused key, a crash, no key for the mode, a permission not granted).
FAILURE_OUTCOMES = (JobOutcome.FAILED, JobOutcome.REVOKED, JobOutcome.INTERRUPTED,
                    JobOutcome.NOT_CONFIGURED, JobOutcome.MISSING_PERMISSION)
#: The accounts named for each failure outcome (the first found; "and more" past them).
ACCOUNTS_NAMED = 10
#: Statuses of events that are not done (counted over the status index, never a full scan).
OPEN_STATUSES = ("pending", "processing", "failed", "dead")


@dataclass(frozen=True)
class Pages:
    """Zero-based page numbers of the paged lists."""

    paused: int = 0
    events: int = 0
    failures: int = 0
    tasks: int = 0


def _rows(query: pw.Query) -> list[dict[str, Any]]:
    return list(query.dicts())


def _page(query: pw.ModelSelect, page: int) -> list[dict[str, Any]]:
    return _rows(query.limit(PAGE_SIZE).offset(max(0, page) * PAGE_SIZE))


def _hour_bucket(start: float) -> pw.Node:
    """The hour (0..HOURS-1) an event's `received_at` falls in, counted from `start`."""
    offset = (WebhookEvent.received_at - start) / 3600
    if is_sqlite(WebhookEvent._meta.database):
        return pw.Cast(offset, "INTEGER")  # truncates; values are >= 0, so it floors
    return pw.fn.FLOOR(offset)  # PostgreSQL's cast rounds


def installations(pages: Pages) -> dict[str, Any]:
    I = Installation  # noqa: N806, E741
    # `col = 1`, not a bare boolean column: SQLite uses an index only for the former.
    is_active = I.active == True  # noqa: E712
    is_paused = (I.jobs_paused == True) & is_active  # noqa: E712
    active = dict(I.select(I.mode, pw.fn.COUNT(I.id)).where(is_active)
                  .group_by(I.mode).tuples())
    paused_count = dict(I.select(I.mode, pw.fn.COUNT(I.id)).where(is_paused)
                        .group_by(I.mode).tuples())
    fields = (I.account_id, I.mode, I.active, I.installed_by, I.installed_at, I.uninstalled_at,
              I.confirmed, I.pause_reason, I.updated_at)
    return {
        "active": {m: active.get(m, 0) for m in MODES},
        "paused_count": {m: paused_count.get(m, 0) for m in MODES},
        # Latest first whatever happened since (`active` says): an ORDER BY ... LIMIT on
        # the time's own index, which a filter on `active` would make the planner abandon.
        "latest_installs": _rows(I.select(*fields).where(I.installed_at.is_null(False))
                                 .order_by(I.installed_at.desc()).limit(10)),
        "latest_uninstalls": _rows(I.select(*fields).where(I.uninstalled_at.is_null(False))
                                   .order_by(I.uninstalled_at.desc()).limit(10)),
        "paused": _page(I.select(*fields).where(is_paused).order_by(I.updated_at.desc()),
                        pages.paused),
    }


def webhooks(now: float, pages: Pages) -> dict[str, Any]:
    E = WebhookEvent  # noqa: N806
    start = (int(now) // 3600 - (HOURS - 1)) * 3600
    bucket = _hour_bucket(start)
    hourly: dict[int, dict[str, int]] = {}
    query = (E.select(bucket.alias("hour"), E.status, pw.fn.COUNT(pw.SQL("*")).alias("n"))
             .where(E.received_at >= start).group_by(bucket, E.status).tuples())
    for hour, status, n in query:
        hourly.setdefault(int(hour), {})[status] = n
    open_counts = dict(E.select(E.status, pw.fn.COUNT(pw.SQL("*")))
                       .where(E.status.in_(OPEN_STATUSES)).group_by(E.status).tuples())
    problems = (E.select(E.id, E.type, E.account_id, E.livemode, E.sandbox, E.status, E.attempts,
                         E.last_error, E.received_at, E.next_attempt_at)
                .where(E.status.in_(("failed", "dead"))).order_by(E.received_at.desc()))
    return {
        "hours_start": start,
        "hourly": [{"hour": start + h * 3600, **hourly.get(h, {})} for h in range(HOURS)],
        "open": {s: open_counts.get(s, 0) for s in OPEN_STATUSES},
        # each with its mode: `livemode` alone does not tell a sandbox event from a test one
        "problems": [{**e, "mode": str(Mode.of_livemode(bool(e["livemode"]), bool(e["sandbox"])))}
                     for e in _page(problems, pages.events)],
    }


def jobs(now: float, pages: Pages) -> dict[str, Any]:
    R = JobRun  # noqa: N806
    since = now - HOURS * 3600
    by_job: dict[str, dict[str, int]] = {}
    for job, outcome, n in (R.select(R.job, R.outcome, pw.fn.COUNT(pw.SQL("*")))
                            # a closed range: SQLite then takes the covering index, not
                            # a walk of the unique index in GROUP BY order
                            .where((R.started_at >= since) & (R.started_at < now + 86400))
                            .group_by(R.job, R.outcome).tuples()):
        by_job.setdefault(job, {})[outcome] = n
    failures = (R.select(R.id, R.job, R.account_id, R.mode, R.fire_time, R.started_at,
                         R.outcome, R.error, R.attempt, R.replica)
                .where(R.outcome.in_(FAILURE_OUTCOMES))
                .order_by(R.started_at.desc()))
    return {"since": since, "by_job": by_job, "failures": _page(failures, pages.failures),
            "failure_counts": failure_counts(since, now)}


def failure_counts(since: float, now: float) -> dict[str, dict[str, Any]]:
    """For each failure outcome of the last `HOURS` (in `FAILURE_OUTCOMES` order, those that
    occurred): its runs, and the accounts it happened to (`account/mode`, the first
    `ACCOUNTS_NAMED`; `more` when there are others). Counted over the (outcome, started_at)
    index; the accounts are a DISTINCT ... LIMIT over the same range."""
    R = JobRun  # noqa: N806
    in_range = (R.started_at >= since) & (R.started_at < now + 86400)
    counts = dict(R.select(R.outcome, pw.fn.COUNT(pw.SQL("*")))
                  .where(R.outcome.in_(FAILURE_OUTCOMES) & in_range)
                  .group_by(R.outcome).tuples())
    found: dict[str, dict[str, Any]] = {}
    for outcome in FAILURE_OUTCOMES:
        if not counts.get(outcome):
            continue
        accounts = [f"{a}/{m}" for a, m in R.select(R.account_id, R.mode).distinct()
                    .where((R.outcome == outcome) & in_range)
                    .limit(ACCOUNTS_NAMED + 1).tuples()]
        found[str(outcome)] = {"runs": counts[outcome], "accounts": sorted(
            accounts[:ACCOUNTS_NAMED]), "more": len(accounts) > ACCOUNTS_NAMED}
    return found


def tasks(now: float, pages: Pages) -> dict[str, Any]:
    """Queued and running tasks now, tasks finished in the last `HOURS` by status, and the
    failed ones, newest first, a page at a time."""
    T = Task  # noqa: N806
    count = pw.fn.COUNT(pw.SQL("*"))
    open_now = dict(T.select(T.status, count)
                    .where(T.status.in_((TaskStatus.QUEUED, TaskStatus.RUNNING)))
                    .group_by(T.status).tuples())
    since = now - HOURS * 3600
    finished = dict(T.select(T.status, count)
                    .where(T.status.in_((TaskStatus.SUCCEEDED, TaskStatus.FAILED,
                                         TaskStatus.CANCELLED))
                           & (T.finished_at >= since) & (T.finished_at < now + 86400))
                    .group_by(T.status).tuples())
    failed = (T.select(T.id, T.name, T.account_id, T.mode, T.finished_at, T.attempts, T.error)
              .where(T.status == TaskStatus.FAILED).order_by(T.finished_at.desc()))
    return {"open": {s: open_now.get(s, 0) for s in (TaskStatus.QUEUED, TaskStatus.RUNNING)},
            "finished": {s: finished.get(s, 0) for s in (TaskStatus.SUCCEEDED,
                                                          TaskStatus.FAILED,
                                                          TaskStatus.CANCELLED)},
            "failed": _page(failed, pages.tasks)}


def snapshot(now: float, pages: Pages) -> dict[str, Any]:
    """Every figure of the page, read in one database thread call."""
    return {"installations": installations(pages), "webhooks": webhooks(now, pages),
            "jobs": jobs(now, pages), "tasks": tasks(now, pages),
            "replicas": seen_since(now - 60),
            "rejected_webhooks": [{**r, "headers": json.loads(r["headers"])}
                                  for r in latest_rejections()]}
