"""Job runs: one row per (job, account, mode, fire time, kind, seq), claimed before the run starts.

The unique key is what makes a fire run exactly once across replicas sharing one database:
the replica whose INSERT succeeds runs it; the others see the conflict and skip. `kind` (a
`RunKind`) keeps apart the claims that are not the fire itself: the one retry of an interrupted
fire, manual runs (numbered by `seq`), and skip records.

A running run holds a lease (`lease_until`, `models/leases.py`) that its process renews; a run
whose lease ran out was left by a dead process: `interrupt_expired_runs` marks it `interrupted`
(the scheduler then retries it once, within the job's grace). Finished runs carry no lease.
"""

from __future__ import annotations

from typing import Any

import peewee as pw

from models.base import BaseModel, now
from models.db import write_transaction
from models.enums import MODE_LENGTH, JobOutcome, RunKind
from models.installation import Installation
from models.leases import expired, held, renew_rows

#: The outcomes of a run that is under way (its lease is renewed while it is).
ACTIVE = (JobOutcome.CLAIMED, JobOutcome.RUNNING, JobOutcome.RETRYING)


class JobRun(BaseModel):
    job = pw.CharField(max_length=128)
    account_id = pw.CharField(max_length=255)
    mode = pw.CharField(max_length=MODE_LENGTH)  # a Mode
    fire_time = pw.BigIntegerField()
    started_at = pw.DoubleField(null=True)
    finished_at = pw.DoubleField(null=True, index=True)
    outcome = pw.CharField(max_length=32, default=JobOutcome.CLAIMED.value)  # a JobOutcome
    error = pw.TextField(null=True)  # the last error, or why the run was skipped/interrupted
    attempt = pw.IntegerField(default=0)
    replica = pw.CharField(max_length=128, null=True)
    kind = pw.CharField(max_length=8, default=RunKind.FIRE.value)  # a RunKind
    seq = pw.IntegerField(default=0)  # numbers manual runs within one second
    lease_until = pw.DoubleField(null=True, index=True)  # NULL once finished

    class Meta:
        indexes = (
            (("job", "account_id", "mode", "fire_time", "kind", "seq"), True),
            (("account_id", "mode", "started_at"), False),
            (("outcome", "started_at"), False),  # the status page (003)
            (("started_at", "job", "outcome"), False),
        )


def _active_installation(account_id: str, mode: str) -> bool:
    return Installation.select(Installation.id).where(
        (Installation.account_id == account_id) & (Installation.mode == mode)
        & Installation.active & ~Installation.jobs_paused).exists()


def claim_run(job: str, account_id: str, mode: str, fire_time: int, replica: str,
              kind: RunKind = RunKind.FIRE, lease_until: float | None = None) -> int | None:
    """Insert the run's row if the installation is active and not paused.

    Returns the row id, or None when another replica already claimed this fire (in this
    `kind`) or the account uninstalled (or was paused) since the fire was scheduled.
    """
    try:
        with write_transaction():
            if not _active_installation(account_id, mode):
                return None
            return JobRun.insert(job=job, account_id=account_id, mode=mode,
                                 fire_time=fire_time, replica=replica, started_at=now(),
                                 outcome=JobOutcome.RUNNING, kind=kind,
                                 lease_until=lease_until).execute()
    except pw.IntegrityError:
        return None


def running_run(job: str, account_id: str, mode: str) -> JobRun | None:
    """A run of this job for this account and mode that is under way right now (its holder's
    lease is live), or None."""
    return (JobRun.select().where(
        (JobRun.job == job) & (JobRun.account_id == account_id) & (JobRun.mode == mode)
        & JobRun.outcome.in_(ACTIVE) & held(JobRun.lease_until, now()))
        .order_by(JobRun.id.desc()).first())


def claim_manual_run(job: str, account_id: str, mode: str, fire_time: int, replica: str,
                     lease_until: float) -> tuple[int | None, JobRun | None]:
    """Claim a manual run: its own row (kind `manual`, the next `seq` of its second), so it
    never collides with a fire or another manual run.

    Returns (run id, None); or (None, the run) when one of the same job, account and mode is
    running right now; or (None, None) when the installation is not active.
    """
    for _ in range(5):  # two manual runs in one second on PostgreSQL: the loser takes the next
        try:
            with write_transaction():
                if not _active_installation(account_id, mode):
                    return None, None
                busy = running_run(job, account_id, mode)
                if busy is not None:
                    return None, busy
                last = (JobRun.select(pw.fn.MAX(JobRun.seq)).where(
                    (JobRun.job == job) & (JobRun.account_id == account_id)
                    & (JobRun.mode == mode) & (JobRun.fire_time == fire_time)
                    & (JobRun.kind == RunKind.MANUAL)).scalar())
                run_id = JobRun.insert(
                    job=job, account_id=account_id, mode=mode, fire_time=fire_time,
                    replica=replica, started_at=now(), outcome=JobOutcome.RUNNING,
                    kind=RunKind.MANUAL, seq=(last or 0) + 1,
                    lease_until=lease_until).execute()
                return run_id, None
        except pw.IntegrityError:
            continue
    raise RuntimeError("could not number a manual run after 5 tries")


def record_skip(job: str, account_id: str, mode: str, fire_time: int, replica: str,
                reason: str) -> bool:
    """Record a fire this replica skipped (outcome `skipped`, the reason in `error`); False
    when that fire's skip is already recorded. It does not stop another replica's claim."""
    t = now()
    try:
        JobRun.insert(job=job, account_id=account_id, mode=mode, fire_time=fire_time,
                      replica=replica, started_at=t, finished_at=t, kind=RunKind.SKIP,
                      outcome=JobOutcome.SKIPPED, error=reason).execute()
        return True
    except pw.IntegrityError:
        return False


def renew_runs(run_ids: list[int], until: float, replica: str) -> int:
    """Push the lease of the runs `replica` holds and that are under way to `until`."""
    return renew_rows(JobRun, JobRun.lease_until, run_ids, until, JobRun.replica, replica,
                      still=JobRun.outcome.in_(ACTIVE))


def interrupt_expired_runs(limit: int = 100) -> list[JobRun]:
    """Mark `interrupted` the runs whose lease ran out (their process died); returns those this
    call marked (one UPDATE per run, so that of several sweeping replicas exactly one wins)."""
    t = now()
    stale = JobRun.outcome.in_(ACTIVE) & expired(JobRun.lease_until, t)
    won = []
    for run in JobRun.select().where(stale).order_by(JobRun.lease_until).limit(limit):
        updated = JobRun.update(
            outcome=JobOutcome.INTERRUPTED, finished_at=t, lease_until=None,
            error="the process running it stopped (its lease ran out)",
        ).where((JobRun.id == run.id) & stale).execute()
        if updated:
            run.outcome = JobOutcome.INTERRUPTED
            won.append(run)
    return won


def last_runs(account_id: str, limit: int = 500) -> dict[tuple[str, str], JobRun]:
    """The latest run of each (job, mode) of an account (of one fire, a run this replica or
    another made wins over a skip record)."""
    latest: dict[tuple[str, str], JobRun] = {}
    query = (JobRun.select().where(JobRun.account_id == account_id)
             .order_by(JobRun.fire_time.desc(), JobRun.id.desc()).limit(limit))
    for run in query:
        seen = latest.get((run.job, run.mode))
        if seen is None or (seen.kind == RunKind.SKIP and run.kind != RunKind.SKIP
                            and run.fire_time == seen.fire_time):
            latest[(run.job, run.mode)] = run
    return latest


def attach_last_runs(rows: list[dict[str, Any]], account_id: str) -> list[dict[str, Any]]:
    """Runs in a database thread: add each job's last run to the rows of
    `jobs.scheduler.describe_jobs` (the job status `POST /api/jobs` and `run.py jobs list` show).
    """
    latest = last_runs(account_id)
    for row in rows:
        run = latest.get((row["job"], row["mode"]))
        row["last_run"] = None if run is None else {
            "fire_time": run.fire_time, "started": int(run.started_at or 0),
            "finished": int(run.finished_at) if run.finished_at else None,
            "outcome": run.outcome, "attempt": run.attempt, "error": run.error,
            "kind": run.kind}
    return rows


def runs_since(job: str, fire_time: int) -> set[tuple[str, str, int]]:
    query = JobRun.select(JobRun.account_id, JobRun.mode, JobRun.fire_time).where(
        (JobRun.job == job) & (JobRun.fire_time >= fire_time))
    return {(r.account_id, r.mode, r.fire_time) for r in query.iterator()}


def update_run(run_id: int, **fields: object) -> None:
    JobRun.update(**fields).where(JobRun.id == run_id).execute()
