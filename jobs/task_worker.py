"""The task worker: claims queued tasks while it has free slots, runs them, keeps their leases.

    worker = TaskWorker(registry, storage, installations, clients, metrics, slots=10, lease=10)
    worker.start()          # poll loop; `wake()` makes it look at once (a task was just queued)
    await worker.stop(10)   # stop claiming; running tasks get the grace, then go back queued

Each claimed task runs in its own asyncio task with a `TaskContext`. While it runs, its lease is
renewed every third of `lease` seconds; a renewal that finds the task no longer ours (cancelled
by `run.py tasks cancel`, deleted by an uninstall, or taken over after a stall) cancels the run
at its next `await`. An uninstall seen by this process cancels the account's runs here at once.
A process that dies leaves leases that lapse within `lease` seconds; any worker then claims the
task again and the attempt is counted.

Outcomes: the function's return value (JSON) is the result (`succeeded`); an exception or the
timeout retries with jittered exponential backoff until `attempts` (`failed`); a missing
platform key (`not_configured`) or `BadInput` fails at once, without retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
import traceback
from collections.abc import Callable
from typing import Any

import httpx

from jobs.credentials import NOT_CONFIGURED, Vault
from jobs.installs import missing_permissions
from jobs.registry import Registry
from jobs.stripe_api import StripeClients
from jobs.tasks import BadInput, TaskContext, TaskSpec
from models.backoff import Jitter, backoff_delay
from models.base import now
from models.db import Storage
from models.installation import InstallationView
from models.installation_index import InstallationIndex
from models.tasks import (
    TaskStatus,
    TaskView,
    claim_tasks,
    count_by_status,
    finish_task,
    oldest_due_queued,
    release_task,
    renew_lease,
)

log = logging.getLogger("app.tasks")

#: A due task queued longer than this is reported (log line, metric): no capacity.
WAIT_WARNING = 30.0


def _short_error(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()[:2000]


def backoff(spec: TaskSpec, attempt: int, cap: float = 3600.0) -> float:
    """Seconds before the retry that follows failed attempt number `attempt` (1-based)."""
    return backoff_delay(attempt - 1, first=spec.retry_delay, cap=cap, jitter=Jitter.EQUAL)


#: Told of every run that ended: `on_outcome(task, outcome)`. The service counts them.
OutcomeListener = Callable[[str, str], None]
#: Told of the queue now and then: `on_stats(count by status, seconds the oldest due task
#: has waited)`.
StatsListener = Callable[[dict[str, int], float], None]


def _ignore(*_: Any) -> None:
    pass


class _Lost(Exception):
    """The task is no longer this worker's (cancelled, deleted, or taken over)."""


class TaskWorker:
    def __init__(self, registry: Registry, storage: Storage, installations: InstallationIndex,
                 clients: StripeClients, slots: int = 10, lease: float = 10.0,
                 poll_interval: float = 1.0, replica: str | None = None,
                 on_outcome: OutcomeListener = _ignore, on_stats: StatsListener = _ignore,
                 vault: Vault | None = None, http: httpx.AsyncClient | None = None) -> None:
        self.registry = registry
        self.storage = storage
        self.installations = installations
        self.clients = clients
        self.on_outcome, self.on_stats = on_outcome, on_stats
        self.vault, self.http = vault, http
        self.slots = slots
        self.lease = lease
        self.poll_interval = poll_interval
        self.replica = replica or f"{socket.gethostname()}:{id(self):x}"
        self.running: dict[str, tuple[TaskView, asyncio.Task[Any]]] = {}
        self._lost: set[str] = set()
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._last_stats = 0.0
        self._warned_at = 0.0
        installations.subscribe(self._installation_changed)

    # ---- life cycle -----------------------------------------------------------------------
    def start(self) -> None:
        if self.registry.tasks and self.slots > 0:
            self._loop_task = asyncio.get_running_loop().create_task(self._poll_forever())

    def wake(self) -> None:
        """Look for work now (called after a task was queued)."""
        self._wake.set()

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop claiming; running tasks get `timeout` seconds, then go back to the queue."""
        self._stopping = True
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        tasks = [t for _, t in self.running.values()]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        for _, t in list(self.running.values()):
            t.cancel()
        if self.running:
            await asyncio.wait([t for _, t in self.running.values()], timeout=5)

    # ---- claiming -------------------------------------------------------------------------
    async def _poll_forever(self) -> None:
        while not self._stopping:
            try:
                await self.poll()
            except Exception as exc:  # the database may be down: try again later
                log.warning("task poll failed: %s", type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)
            self._wake.clear()

    async def poll(self) -> int:
        """Claim what fits in the free slots and start it; returns how many were started."""
        started = 0
        free = self.slots - len(self.running)
        if free > 0:
            limits = {name: spec.concurrency_per_account
                      for name, spec in self.registry.tasks.items()}
            claimed = await self.storage.run(claim_tasks, limits, free, self.replica,
                                             self.lease)
            for view in claimed:
                self._launch(view)
            started = len(claimed)
        if time.monotonic() - self._last_stats >= 5.0:
            self._last_stats = time.monotonic()
            await self._report_stats()
        return started

    def _launch(self, view: TaskView) -> None:
        runner = asyncio.get_running_loop().create_task(self._run(view))
        self.running[view.id] = (view, runner)

        def done(_: asyncio.Task[Any]) -> None:
            self.running.pop(view.id, None)
            self._lost.discard(view.id)
            self._wake.set()  # a slot is free

        runner.add_done_callback(done)

    async def _report_stats(self) -> None:
        counts = await self.storage.run(count_by_status)
        oldest = await self.storage.run(oldest_due_queued, list(self.registry.tasks))
        waited = max(0.0, now() - oldest) if oldest else 0.0
        self.on_stats(counts, waited)
        if waited > WAIT_WARNING and time.monotonic() - self._warned_at > 60:
            self._warned_at = time.monotonic()
            log.warning("a task has waited %.0fs for a free slot (%d queued); raise "
                        "TASK_CONCURRENCY or add workers", waited,
                        counts.get(TaskStatus.QUEUED, 0))

    # ---- running --------------------------------------------------------------------------
    async def _run(self, view: TaskView) -> None:
        spec = self.registry.tasks[view.name]
        ctx = TaskContext(view.id, view.name, view.account_id, view.mode, view.input,
                          view.attempts, self.storage, self.clients, self.replica, self.lease,
                          progress_value=view.progress, progress_note=view.note,
                          vault=self.vault, http=self.http)
        missing = missing_permissions(spec.permissions,
                                      self.installations.get(view.account_id, view.mode))
        if missing:  # as for a job fire: not sent to Stripe, and not retried
            log.warning("task %s %s for %s/%s not run: the install lacks %s", view.name,
                        view.id, view.account_id, view.mode, ", ".join(missing))
            await self._finish(ctx, TaskStatus.FAILED,
                               error="missing_permission: not granted: " + ", ".join(missing))
            self.on_outcome(view.name, "missing_permission")
            return
        log.info("task %s %s for %s/%s (attempt %d/%d)", view.name, view.id, view.account_id,
                 view.mode, view.attempts, view.max_attempts)
        work = asyncio.get_running_loop().create_task(self._call(spec, ctx))
        keeper = asyncio.get_running_loop().create_task(self._keep_lease(ctx, work))
        outcome = "failed"
        try:
            try:
                result = await work
            finally:
                keeper.cancel()
            outcome = "succeeded"
            await self._finish(ctx, TaskStatus.SUCCEEDED, result=result)
        except asyncio.CancelledError:
            if view.id in self._lost:
                outcome = "cancelled"
                log.info("task %s %s for %s/%s stopped: cancelled or uninstalled", view.name,
                         view.id, view.account_id, view.mode)
                return
            if self._stopping:  # a graceful shutdown: give it back, attempt not counted
                outcome = "released"
                await asyncio.shield(self.storage.run(release_task, view.id, self.replica,
                                                      view.attempts))
                return
            raise
        except NOT_CONFIGURED as exc:
            outcome = "not_configured"
            await self._finish(ctx, TaskStatus.FAILED, error=str(exc))
        except BadInput as exc:
            outcome = "bad_input"
            await self._finish(ctx, TaskStatus.FAILED, error=f"bad input: {exc}")
        except Exception as exc:
            error = _short_error(exc)
            if ctx.attempt < view.max_attempts:
                outcome = "retrying"
                delay = backoff(spec, ctx.attempt)
                log.warning("task %s %s failed (attempt %d/%d), retry in %.0fs: %s", view.name,
                            view.id, ctx.attempt, view.max_attempts, delay, error)
                await self._finish(ctx, TaskStatus.QUEUED, error=error, retry_at=now() + delay)
            else:
                log.warning("task %s %s failed (attempt %d/%d): %s", view.name, view.id,
                            ctx.attempt, view.max_attempts, error)
                await self._finish(ctx, TaskStatus.FAILED, error=error)
        finally:
            self.on_outcome(view.name, outcome)

    async def _call(self, spec: TaskSpec, ctx: TaskContext) -> Any:
        try:
            async with asyncio.timeout(spec.timeout):
                result = await spec.func(ctx)
        except TimeoutError:
            raise TimeoutError(f"the task took longer than {spec.timeout:g}s") from None
        json.dumps(result)  # a result that is not JSON fails here, as the task's error
        return result

    async def _finish(self, ctx: TaskContext, status: TaskStatus, **fields: Any) -> None:
        progress = 1.0 if status == TaskStatus.SUCCEEDED else ctx.progress_value
        await asyncio.shield(self.storage.run(
            finish_task, ctx.task_id, self.replica, ctx.attempt, status, progress=progress,
            note=ctx.progress_note, **fields))

    async def _keep_lease(self, ctx: TaskContext, work: asyncio.Task[Any]) -> None:
        while not work.done():
            await asyncio.sleep(self.lease / 3)
            try:
                held = await self.storage.run(renew_lease, ctx.task_id, self.replica,
                                              ctx.attempt, self.lease, ctx.progress_value,
                                              ctx.progress_note, True)
            except Exception as exc:  # the database is down: try again; the lease may lapse
                log.warning("could not renew the lease of task %s: %s", ctx.task_id,
                            type(exc).__name__)
                continue
            if not held:
                self._cancel(ctx.task_id)
                return

    def _cancel(self, task_id: str) -> None:
        entry = self.running.get(task_id)
        if entry is not None:
            self._lost.add(task_id)
            entry[1].cancel()

    def _installation_changed(self, old: InstallationView | None,
                              new: InstallationView) -> None:
        if new.active:
            return
        for task_id, (view, _) in list(self.running.items()):
            if view.account_id == new.account_id and view.mode == new.mode:
                self._cancel(task_id)
