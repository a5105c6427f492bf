"""APScheduler 3 inside the service's event loop, one scheduled job per (job, account, mode).

- `start()` must run inside the running loop (an AsyncIOScheduler built before the loop starts
  silently runs nothing). It schedules every active installation, then follows the installation
  index: an account that becomes active (install callback, `authorized` webhook, or a row another
  replica wrote) gets its jobs; one that becomes inactive or paused loses them.
- Fires reach `JobRunner.fire` through `RunnerExecutor`, which passes the scheduled fire time
  (the claim key). Missed fires are coalesced (`coalesce=True`) and dropped past the job's
  `misfire_grace`; `max_instances=1` per (job, account, mode).
- Missed while the process was down: `catch_up()` runs, once per (job, account, mode), the most
  recent fire within `misfire_grace` that no replica recorded (coalesced into one run).
- Skipped: a fire APScheduler does not run because the previous one is still running
  (`EVENT_JOB_MAX_INSTANCES`) or that came later than its grace (`EVENT_JOB_MISSED`) is
  recorded as a run with outcome `skipped` and the reason (`JobRunner.record_skip`).
- Left behind by a dead process: `sweep_forever()` marks every run whose lease ran out
  `interrupted` (`models.jobs.interrupt_expired_runs`, one replica wins each) and retries it
  once (a `retry` claim: one per fire across replicas) if its fire is still within the job's
  `misfire_grace`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.events import (
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    JobEvent,
    JobExecutionEvent,
    JobSubmissionEvent,
)
from apscheduler.executors.base import BaseExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from jobs.registry import Registry
from jobs.runner import JobRunner
from models.enums import MODES, JobOutcome, RunKind
from models.installation import InstallationView
from models.installation_index import InstallationIndex
from models.jobs import JobRun, interrupt_expired_runs, runs_since
from models.leases import LEASE_SECONDS

log = logging.getLogger("app.scheduler")

#: Sorts after every fire time: a trigger that will not fire again.
_NEVER = datetime.max.replace(tzinfo=UTC)


def job_id(name: str, account_id: str, mode: str) -> str:
    return f"{name}:{mode}:{account_id}"


def scheduled_fire(job: str, account_id: str, mode: str) -> None:
    """What APScheduler holds for each job; `RunnerExecutor` calls `JobRunner.fire` instead,
    adding the scheduled fire time, which APScheduler does not pass to the function."""


# APScheduler checks every added job's arguments against its function's signature, which
# `inspect.signature` would build anew each time (a third of adding 100,000 jobs at start-up);
# it takes a function's `__signature__` as it is.
setattr(scheduled_fire, "__signature__", inspect.signature(scheduled_fire))  # noqa: B010


class RunnerExecutor(BaseExecutor):
    """Hands each fire to `JobRunner.fire` with its scheduled time (the last, if coalesced)."""

    def __init__(self, runner: JobRunner) -> None:
        super().__init__()
        self.runner = runner
        self.tasks: set[asyncio.Task[JobOutcome]] = set()

    def _do_submit_job(self, job: Any, run_times: list[datetime]) -> None:
        fire_time = run_times[-1]
        late = (datetime.now(UTC) - fire_time).total_seconds()
        if job.misfire_grace_time is not None and late > job.misfire_grace_time:
            self._run_job_success(job.id, [JobExecutionEvent(
                EVENT_JOB_MISSED, job.id, job._jobstore_alias, fire_time)])
            return
        name, account_id, mode = job.args
        task = asyncio.get_running_loop().create_task(
            self.runner.fire(name, account_id, mode, fire_time))
        self.tasks.add(task)

        def done(t: asyncio.Task[JobOutcome]) -> None:
            self.tasks.discard(t)
            if t.cancelled():
                self._run_job_success(job.id, [])
            elif t.exception() is not None:
                self._run_job_error(job.id, t.exception(), None)
            else:
                self._run_job_success(job.id, [])

        task.add_done_callback(done)

    def shutdown(self, wait: bool = True) -> None:
        for task in list(self.tasks):
            task.cancel()


class JobScheduler:
    def __init__(self, registry: Registry, runner: JobRunner,
                 installations: InstallationIndex) -> None:
        self.registry = registry
        self.runner = runner
        self.installations = installations
        self._aps: AsyncIOScheduler | None = None
        self._executor: RunnerExecutor | None = None
        self._extra: set[asyncio.Task[Any]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self.sweep_interval = LEASE_SECONDS

    # ---- lifecycle ------------------------------------------------------------------------
    def start(self) -> int:
        """Schedule every active installation's jobs; returns how many were scheduled."""
        self._executor = RunnerExecutor(self.runner)
        self._aps = AsyncIOScheduler(
            timezone=UTC, executors={"default": self._executor},
            job_defaults={"coalesce": True, "max_instances": 1})
        self._aps.start(paused=True)  # adding while paused does not wake the loop per job
        count = self._add_all(self.installations.active())
        self._aps.add_listener(self._on_skipped, EVENT_JOB_MAX_INSTANCES | EVENT_JOB_MISSED)
        self._aps.resume()
        self._sweeper = asyncio.get_running_loop().create_task(self.sweep_forever())
        self.installations.subscribe(self._on_change)
        log.info("scheduler started: %d jobs for %d job types", count, len(self.registry.jobs))
        return count

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop firing, let running jobs finish for up to `timeout` seconds, then cancel them."""
        if self._aps is None:
            return
        self._aps.pause()
        if self._sweeper is not None:
            self._sweeper.cancel()
        pending = [*self._executor.tasks, *self._extra] if self._executor else list(self._extra)
        if pending:
            log.info("waiting up to %.0fs for %d running jobs", timeout, len(pending))
            _, still = await asyncio.wait(pending, timeout=timeout)
            for task in still:
                task.cancel()
            if still:
                await asyncio.wait(still, timeout=5)
        self._aps.shutdown(wait=False)
        self._aps = None
        await self.runner.stop()

    def state(self) -> dict[str, Any]:
        return {"enabled": True, "running": bool(self._aps and self._aps.running),
                "jobs": self.job_count(), "runs_in_progress": self.runner.running}

    def job_count(self) -> int:
        return len(self._aps.get_jobs()) if self._aps else 0

    # ---- following installations ----------------------------------------------------------
    def _on_change(self, old: InstallationView | None, new: InstallationView) -> None:
        if new.active and not new.jobs_paused:
            self._add(new)
            if old is None or not old.active:
                self._run_on_install(new)
        else:
            self._remove(new.account_id, new.mode)

    def _add(self, view: InstallationView) -> int:
        return self._add_all([view])

    def _add_all(self, views: Iterable[InstallationView]) -> int:
        """Schedule the jobs of `views`, soonest first: APScheduler keeps its jobs in a list
        sorted by (next run time, id), and an add in that order appends to it, where a random
        order makes each add an insertion in the middle (quadratic for a whole start-up)."""
        assert self._aps is not None
        now = datetime.now(UTC)
        planned = []
        for view in views:
            if view.jobs_paused:
                continue
            for spec in self.registry.jobs.values():
                if view.mode in spec.modes:
                    trigger = spec.trigger(view.account_id, view.mode)
                    planned.append((trigger.get_next_fire_time(None, now) or _NEVER,
                                    job_id(spec.name, view.account_id, view.mode), spec, view,
                                    trigger))
        planned.sort(key=lambda item: item[:2])
        for next_run, id_, spec, view, trigger in planned:
            self._aps.add_job(
                scheduled_fire, trigger=trigger, id=id_,
                args=(spec.name, view.account_id, view.mode), replace_existing=True,
                misfire_grace_time=int(spec.misfire_grace), name=spec.name,
                next_run_time=None if next_run is _NEVER else next_run)
        return len(planned)

    def _remove(self, account_id: str, mode: str) -> None:
        if self._aps is None:
            return
        for spec in self.registry.jobs.values():
            try:
                self._aps.remove_job(job_id(spec.name, account_id, mode))
            except JobLookupError:
                pass

    def _run_on_install(self, view: InstallationView) -> None:
        for spec in self.registry.jobs.values():
            if spec.run_on_install and view.mode in spec.modes and view.since:
                fire = datetime.fromtimestamp(view.since, UTC)
                self._spawn(self.runner.fire(spec.name, view.account_id, view.mode, fire,
                                             reason="install"))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._extra.add(task)
        task.add_done_callback(self._extra.discard)

    # ---- skipped fires and runs left behind -----------------------------------------------
    def _on_skipped(self, event: JobEvent) -> None:
        """APScheduler's listener (called in the loop): record the fire it did not run."""
        aps_job = self._aps.get_job(event.job_id) if self._aps else None
        if aps_job is None:
            return
        name, account_id, mode = aps_job.args
        if isinstance(event, JobSubmissionEvent):
            fire = event.scheduled_run_times[-1]
            reason = "the previous fire was still running"
        elif isinstance(event, JobExecutionEvent):
            fire = event.scheduled_run_time
            reason = "missed by more than the job's misfire grace"
        else:
            return
        self._spawn(self.runner.record_skip(name, account_id, mode, fire, reason))

    async def sweep(self) -> int:
        """Mark runs whose lease ran out `interrupted`, retry each once within its grace;
        returns how many were marked."""
        found: list[JobRun] = await self.runner.storage.run(interrupt_expired_runs)
        now = datetime.now(UTC)
        for run in found:
            self.runner.on_outcome(run.job, JobOutcome.INTERRUPTED)
            spec = self.registry.jobs.get(run.job)
            fire = datetime.fromtimestamp(run.fire_time, UTC)
            retry = (spec is not None and run.kind == RunKind.FIRE
                     and (now - fire).total_seconds() <= spec.misfire_grace)
            log.warning("job %s for %s/%s (fire %s) was left running by %s; marked interrupted"
                        "%s", run.job, run.account_id, run.mode, fire.isoformat(), run.replica,
                        ", retrying it once" if retry else "")
            if retry:
                self._spawn(self.runner.fire(run.job, run.account_id, run.mode, fire,
                                             reason="retry after interruption",
                                             kind=RunKind.RETRY))
        return len(found)

    async def sweep_forever(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception as exc:  # the database may be down; try again later
                log.warning("job run sweep failed: %s", type(exc).__name__)
            await asyncio.sleep(self.sweep_interval)

    # ---- missed fires ---------------------------------------------------------------------
    async def catch_up(self) -> int:
        """Run the most recent fire missed within each job's grace; returns how many started."""
        started = 0
        now = datetime.now(UTC)
        for spec in self.registry.jobs.values():
            floor = int((now - timedelta(seconds=spec.misfire_grace)).timestamp())
            done = await self.runner.storage.run(runs_since, spec.name, floor)
            for i, view in enumerate(list(self.installations.active())):
                if i % 200 == 199:  # let requests in between
                    await asyncio.sleep(0)
                if view.mode not in spec.modes or view.jobs_paused:
                    continue
                prev = spec.previous_fire(view.account_id, view.mode, now, spec.misfire_grace)
                if prev is None or (view.since and prev.timestamp() < view.since):
                    continue
                if (view.account_id, view.mode, int(prev.timestamp())) in done:
                    continue
                self._spawn(self.runner.fire(spec.name, view.account_id, view.mode, prev,
                                             reason="missed while down"))
                started += 1
        if started:
            log.info("catching up %d fires missed while no scheduler was running", started)
        return started

    # ---- what the API and CLI show --------------------------------------------------------
    def next_run(self, name: str, account_id: str, mode: str) -> datetime | None:
        if self._aps is not None:
            aps_job = self._aps.get_job(job_id(name, account_id, mode))
            return aps_job.next_run_time if aps_job else None
        return None

    def upcoming(self, per_job: int = 3) -> dict[str, list[tuple[str, str, datetime]]]:
        """The next fires of each job, soonest first: `{job: [(account, mode, when)]}`.

        APScheduler keeps its jobs sorted by next fire, so this stops as soon as every job
        has `per_job` entries (the status page)."""
        found: dict[str, list[tuple[str, str, datetime]]] = {n: [] for n in self.registry.jobs}
        if self._aps is None:
            return found
        wanted = len(found) * per_job
        for aps_job in self._aps.get_jobs():
            name, account_id, mode = aps_job.args
            rows = found.setdefault(name, [])
            if len(rows) < per_job and aps_job.next_run_time is not None:
                rows.append((account_id, mode, aps_job.next_run_time))
                wanted -= 1
                if wanted <= 0:
                    break
        return found


def describe_jobs(registry: Registry, installations: InstallationIndex,
                  scheduler: JobScheduler | None, account_id: str) -> list[dict[str, Any]]:
    """The account's jobs in each mode it is installed in, without their last runs (add them
    with `models.jobs.attach_last_runs`, in a database thread)."""
    now = datetime.now(UTC)
    rows = []
    for mode in MODES:
        view = installations.get(account_id, mode)
        if view is None or not view.active:
            continue
        for spec in registry.jobs.values():
            if mode not in spec.modes:
                continue
            nxt = scheduler.next_run(spec.name, account_id, mode) if scheduler else None
            if nxt is None and not view.jobs_paused:
                nxt = spec.trigger(account_id, mode).get_next_fire_time(None, now)
            rows.append({"job": spec.name, "mode": mode, "paused": view.jobs_paused,
                         "pause_reason": view.pause_reason, "description": spec.description,
                         "next_run": None if view.jobs_paused or nxt is None
                         else int(nxt.timestamp())})
    return rows

