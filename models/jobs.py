"""Job runs: one row per (job, account, mode, fire time), claimed before the run starts.

The unique key is what makes a fire run exactly once across replicas sharing one database:
the replica whose INSERT succeeds runs it; the others see the conflict and skip.
"""

from __future__ import annotations

from typing import Any

import peewee as pw

from models.base import BaseModel, now
from models.db import write_transaction
from models.enums import JobOutcome
from models.installation import Installation


class JobRun(BaseModel):
    job = pw.CharField(max_length=128)
    account_id = pw.CharField(max_length=255)
    mode = pw.CharField(max_length=4)  # a Mode
    fire_time = pw.BigIntegerField()
    started_at = pw.DoubleField(null=True)
    finished_at = pw.DoubleField(null=True)
    outcome = pw.CharField(max_length=32, default=JobOutcome.CLAIMED.value)  # a JobOutcome
    error = pw.TextField(null=True)
    attempt = pw.IntegerField(default=0)
    replica = pw.CharField(max_length=128, null=True)

    class Meta:
        indexes = (
            (("job", "account_id", "mode", "fire_time"), True),
            (("account_id", "mode", "started_at"), False),
            (("outcome", "started_at"), False),  # the status page (003)
            (("started_at", "job", "outcome"), False),
        )


def claim_run(job: str, account_id: str, mode: str, fire_time: int,
              replica: str) -> int | None:
    """Insert the run's row if the installation is active and not paused.

    Returns the row id, or None when another replica already claimed this fire or the account
    uninstalled (or was paused) since the fire was scheduled.
    """
    try:
        with write_transaction():
            active = Installation.select(Installation.id).where(
                (Installation.account_id == account_id) & (Installation.mode == mode)
                & Installation.active & ~Installation.jobs_paused).exists()
            if not active:
                return None
            return JobRun.insert(job=job, account_id=account_id, mode=mode,
                                 fire_time=fire_time, replica=replica, started_at=now(),
                                 outcome=JobOutcome.RUNNING).execute()
    except pw.IntegrityError:
        return None


def last_runs(account_id: str, limit: int = 500) -> dict[tuple[str, str], JobRun]:
    """The latest run of each (job, mode) of an account."""
    latest: dict[tuple[str, str], JobRun] = {}
    query = (JobRun.select().where(JobRun.account_id == account_id)
             .order_by(JobRun.fire_time.desc(), JobRun.id.desc()).limit(limit))
    for run in query:
        latest.setdefault((run.job, run.mode), run)
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
            "outcome": run.outcome, "attempt": run.attempt, "error": run.error}
    return rows


def runs_since(job: str, fire_time: int) -> set[tuple[str, str, int]]:
    query = JobRun.select(JobRun.account_id, JobRun.mode, JobRun.fire_time).where(
        (JobRun.job == job) & (JobRun.fire_time >= fire_time))
    return {(r.account_id, r.mode, r.fire_time) for r in query.iterator()}


def update_run(run_id: int, **fields: object) -> None:
    JobRun.update(**fields).where(JobRun.id == run_id).execute()
