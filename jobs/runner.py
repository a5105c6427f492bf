"""Running one fire of a job for one account: claim, limits, retries, record.

`JobRunner.fire(job, account, mode, fire_time)`:

1. skips at once if the account is not (or no longer) active in that mode, or is paused;
2. waits for one of `JOB_CONCURRENCY` slots;
3. claims the fire in the database (unique job/account/mode/fire time: one replica wins; the
   claim also re-checks the installation, so a run whose account uninstalled meanwhile does not
   start);
4. calls the job with a `JobContext`, up to `spec.attempts` times with exponential backoff
   between tries (equal jitter: after try n, half to all of `spec.retry_delay * 2 ** (n - 1)`);
   the slot is let go while it waits, so a job failing against an unreachable API does not
   starve the others; while the run is under way its lease (`models/leases.py`) is renewed, so
   a run whose process died is found (`interrupted`) within `LEASE_SECONDS`;
5. records the outcome: succeeded, failed, revoked (Stripe said the key may no longer act for
   the account: the installation's jobs are paused and reported, not retried), or
   not_configured (no platform key for the mode, or a credential the job reads with
   `ctx.credentials.get(name)` is not set: not retried); or, instead of 4., missing_permission: the
   install has not granted a permission the job declares, and Stripe is not called.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import stripe

from jobs.context import AccountTools, Toolbox, idempotency_key
from jobs.credentials import NOT_CONFIGURED
from jobs.errors import error_text
from jobs.installs import missing_permissions
from jobs.registry import JobSpec
from models.backoff import Jitter, backoff_delay
from models.base import now
from models.enums import JobOutcome, RunKind
from models.jobs import (
    JobRun,
    claim_manual_run,
    claim_run,
    record_skip,
    renew_runs,
    update_run,
)
from models.leases import LEASE_SECONDS, LeaseKeeper

log = logging.getLogger("app.jobs")

REVOKED = (stripe.AuthenticationError, stripe.PermissionError)
#: Told of every fire that ran (was claimed): `on_outcome(job, outcome)`. The service counts them.
OutcomeListener = Callable[[str, JobOutcome], None]


def _ignore_outcome(job: str, outcome: JobOutcome) -> None:
    pass


@dataclass
class JobContext(AccountTools):
    """What a job receives: who it runs for, and the tools to do it (`AccountTools`)."""

    job: str
    account_id: str
    mode: str
    fire_time: datetime
    attempt: int
    kind: RunKind = RunKind.FIRE
    seq: int = 0  # a manual run's number within its second

    def idempotency_key(self, label: str) -> str:
        """A key for Stripe's `Idempotency-Key`, the same on every attempt and every retry of
        this fire (job, account, mode, fire time, `label`), different for another fire or label.
        A manual run is its own fire. Pass it as `{"idempotency_key": ctx.idempotency_key(...)}`
        in a request's options, so a retried run never repeats a Stripe side effect."""
        return idempotency_key("job", self.job, self.account_id, str(self.mode),
                               int(self.fire_time.timestamp()),
                               f"manual:{self.seq}" if self.kind == RunKind.MANUAL else "",
                               label)


class Slot:
    """One of the runner's concurrency slots, held for a run and let go while it sleeps.

    `async with Slot(semaphore) as slot:` holds it; `async with slot.released():` lets another
    run have it for a while (a retry's backoff) and takes it back before going on."""

    def __init__(self, semaphore: asyncio.Semaphore) -> None:
        self.semaphore = semaphore
        self.held = False

    async def __aenter__(self) -> Slot:
        await self.semaphore.acquire()
        self.held = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.held:
            self.held = False
            self.semaphore.release()

    @contextlib.asynccontextmanager
    async def released(self) -> AsyncIterator[None]:
        self.held = False
        self.semaphore.release()
        try:
            yield
        finally:
            await self.semaphore.acquire()
            self.held = True


class JobRunner:
    """Runs fires; `on_outcome(job, outcome)` hears each that ran (a no-op when not given)."""

    def __init__(self, tools: Toolbox, concurrency: int = 10,
                 on_outcome: OutcomeListener | None = None, lease: float = LEASE_SECONDS) -> None:
        self.tools = tools
        self.registry, self.storage = tools.registry, tools.storage
        self.installations = tools.installations
        self.on_outcome: OutcomeListener = on_outcome or _ignore_outcome
        self.replica = tools.replica_name(self)
        self._slots = asyncio.Semaphore(concurrency)
        self.running = 0
        self.leases: LeaseKeeper[int] = LeaseKeeper(
            self.storage, lambda ids, until: renew_runs(ids, until, self.replica), clock=now,
            lease=lease, name="job run lease")

    async def stop(self) -> None:
        """Stop renewing leases (call after the runs have ended)."""
        await self.leases.stop()

    async def fire(self, job: str, account_id: str, mode: str, fire_time: datetime,
                   reason: str = "schedule", force: bool = False,
                   kind: RunKind = RunKind.FIRE) -> JobOutcome:
        """Run one fire; returns the outcome (see the module docstring) or why it did not run.

        `kind` `retry` is the one retry of a fire whose run was interrupted (its own claim)."""
        spec = self.registry.jobs.get(job)
        if spec is None:
            return JobOutcome.UNKNOWN_JOB
        view = self.installations.get(account_id, mode)
        if not force and (view is None or not view.active or view.jobs_paused):
            return JobOutcome.NOT_ACTIVE
        async with Slot(self._slots) as slot:
            stamp = int(fire_time.timestamp())
            run_id = await self.storage.run(claim_run, spec.name, account_id, mode, stamp,
                                            self.replica, kind, self.leases.until())
            if run_id is None:
                return JobOutcome.NOT_CLAIMED
            outcome = await self._run(spec, run_id, account_id, mode, fire_time, reason, slot,
                                      kind)
        self.on_outcome(spec.name, outcome)
        return outcome

    async def run_now(self, job: str, account_id: str, mode: str,
                      reason: str = "run.py jobs run") -> tuple[JobOutcome, JobRun | None]:
        """A manual run: its own run, whatever fires or other manual runs happen in the same
        second. Returns (outcome, None); or (`already_running`, that run) when one of the same
        job, account and mode is running right now (nothing is started); or (`not_active`,
        None)."""
        spec = self.registry.jobs.get(job)
        if spec is None:
            return JobOutcome.UNKNOWN_JOB, None
        now_ = datetime.fromtimestamp(now(), UTC)
        stamp = int(now_.timestamp())
        async with Slot(self._slots) as slot:
            run_id, busy = await self.storage.run(claim_manual_run, spec.name, account_id, mode,
                                                  stamp, self.replica, self.leases.until())
            if busy is not None:
                return JobOutcome.ALREADY_RUNNING, busy
            if run_id is None:
                return JobOutcome.NOT_ACTIVE, None
            seq = await self.storage.run(lambda: JobRun.get_by_id(run_id).seq)
            outcome = await self._run(spec, run_id, account_id, mode,
                                      datetime.fromtimestamp(stamp, UTC), reason, slot,
                                      RunKind.MANUAL, seq)
        self.on_outcome(spec.name, outcome)
        return outcome, None

    async def record_skip(self, job: str, account_id: str, mode: str, fire_time: datetime,
                          reason: str) -> bool:
        """Record a fire the scheduler skipped, as a run with outcome `skipped` and `reason`."""
        recorded = await self.storage.run(record_skip, job, account_id, mode,
                                          int(fire_time.timestamp()), self.replica, reason)
        if recorded:
            log.warning("job %s for %s/%s: fire at %s skipped: %s", job, account_id, mode,
                        fire_time.isoformat(), reason)
            self.on_outcome(job, JobOutcome.SKIPPED)
        return recorded

    async def _run(self, spec: JobSpec, run_id: int, account_id: str, mode: str,
                   fire_time: datetime, reason: str, slot: Slot, kind: RunKind,
                   seq: int = 0) -> JobOutcome:
        missing = missing_permissions(spec.permissions, self.installations.get(account_id, mode))
        if missing:
            log.warning("job %s for %s/%s not run: the install lacks %s", spec.name, account_id,
                        mode, ", ".join(missing))
            await self.storage.run(update_run, run_id, outcome=JobOutcome.MISSING_PERMISSION,
                                   error="not granted: " + ", ".join(missing), finished_at=now())
            return JobOutcome.MISSING_PERMISSION
        self.leases.hold(run_id)
        self.running += 1
        try:
            return await self._attempts(spec, run_id, account_id, mode, fire_time, reason, slot,
                                        kind, seq)
        finally:
            self.running -= 1
            self.leases.release(run_id)

    async def _attempts(self, spec: JobSpec, run_id: int, account_id: str, mode: str,
                        fire_time: datetime, reason: str, slot: Slot, kind: RunKind,
                        seq: int) -> JobOutcome:
        outcome, error, attempt = JobOutcome.FAILED, None, 0
        try:
            for attempt in range(1, spec.attempts + 1):
                ctx = JobContext(spec.name, account_id, mode, fire_time, attempt, kind=kind,
                                 seq=seq, storage=self.storage, clients=self.tools.clients,
                                 vault=self.tools.vault, http=self.tools.http)
                try:
                    log.info("job %s for %s/%s (%s, attempt %d)", spec.name, account_id, mode,
                             reason, attempt)
                    await spec.func(ctx)
                    outcome, error = JobOutcome.SUCCEEDED, None
                    break
                except NOT_CONFIGURED as exc:
                    error = error_text(exc, ctx.revealed, message_only=True)
                    outcome = JobOutcome.NOT_CONFIGURED
                    log.warning("job %s for %s/%s: %s", spec.name, account_id, mode, error)
                    break
                except REVOKED as exc:
                    outcome, error = JobOutcome.REVOKED, error_text(exc, ctx.revealed)
                    await self._pause(account_id, mode, f"{spec.name}: {type(exc).__name__}")
                    break
                except Exception as exc:
                    error = error_text(exc, ctx.revealed)
                    log.warning("job %s for %s/%s failed (attempt %d/%d): %s", spec.name,
                                account_id, mode, attempt, spec.attempts, error)
                    if attempt < spec.attempts:
                        await self.storage.run(update_run, run_id, attempt=attempt, error=error,
                                               outcome=JobOutcome.RETRYING)
                        delay = backoff_delay(attempt - 1, first=spec.retry_delay,
                                              jitter=Jitter.EQUAL)
                        async with slot.released():  # another run may use it meanwhile
                            await asyncio.sleep(delay)
        except asyncio.CancelledError:
            outcome, error = JobOutcome.INTERRUPTED, "the process shut down during the run"
            raise
        finally:
            await asyncio.shield(self.storage.run(
                update_run, run_id, attempt=attempt, error=error, outcome=outcome,
                finished_at=now(), lease_until=None))
        return outcome

    async def _pause(self, account_id: str, mode: str, reason: str) -> None:
        log.error("Stripe refused the platform key for %s/%s (%s): pausing its jobs until the "
                  "app is reinstalled or `run.py jobs resume` is run", account_id, mode, reason)
        await self.installations.pause(account_id, mode, True, reason)
