"""The task worker: claims queued tasks while it has free slots, runs them, keeps their leases.

    worker = TaskWorker(tools, slots=10, lease=10)   # tools: jobs.context.Toolbox
    worker.start()          # poll loop; `wake()` makes it look at once (a task was just queued)
    await worker.stop(10)   # stop claiming; running tasks get the grace, then go back queued

One poll loop per worker does all the claiming: each turn records the outcomes of the attempts
that ended since the last turn and claims tasks for the free slots, in one short transaction
(`models.tasks.settle_and_claim`). A run that ends frees its slot at once; it queues its outcome
and wakes the loop, so under load the turns run back to back and each carries many outcomes and
claims. To keep slots busy while a turn is under way, the worker claims a few tasks ahead:
`AHEAD` times as many as ended during the last turn (at most `slots`; none while tasks run
long), held
(leased, counted as running for their account) in a short ready queue that a freed slot starts
from without a database round trip. A ready task that waits longer than `READY_WAIT` is
given back to the queue (its attempt not counted).

Each claimed task runs in its own asyncio task with a `TaskContext`. One `LeaseKeeper` renews the
leases of every task this worker holds in one UPDATE every third of `lease` seconds, with the
progress reported since the last (what to renew and write is taken on the loop, a `Renewal`,
and the database thread is given only that); a task the
renewal no longer finds ours (cancelled by `run.py tasks cancel`, deleted by an uninstall, or
taken over after a stall) is cancelled at its next `await`. An uninstall seen by this process
cancels the account's runs here at once. A process that dies leaves leases that lapse within
`lease` seconds; any worker then claims the task again (it looks for lapsed leases every
`TAKEOVER_EVERY` seconds) and the attempt is counted.

Outcomes: the function's return value (JSON) is the result (`succeeded`); an exception or the
timeout retries with jittered exponential backoff until `attempts` (`failed`); a missing
platform key (`not_configured`) or `BadInput` fails at once, without retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jobs.context import Toolbox
from jobs.credentials import NOT_CONFIGURED
from jobs.errors import error_text
from jobs.installs import missing_permissions
from jobs.tasks import BadInput, TaskContext, TaskSpec
from models.backoff import Jitter, backoff_delay
from models.base import now
from models.installation import InstallationView
from models.leases import LeaseKeeper
from models.tasks import (
    Outcome,
    Progress,
    TaskStatus,
    TaskView,
    count_by_status,
    oldest_due_queued,
    record,
    release_task,
    renew_tasks,
    settle_and_claim,
)

log = logging.getLogger("app.tasks")

#: A due task queued longer than this is reported (log line, metric): no capacity.
WAIT_WARNING = 30.0


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


#: Seconds between looks for running tasks whose lease lapsed (their process died).
TAKEOVER_EVERY = 1.0
#: Seconds a task claimed ahead may wait here for a slot before it is given back.
READY_WAIT = 2.0
#: Claimed ahead per run that ended during the last turn: a turn can take several times as long
#: as the one before (p50 15 ms, p90 50 ms under load), and a slot that frees with nothing ready
#: stays idle until the next turn ends.
AHEAD = 4


@dataclass(frozen=True)
class Renewal:
    """One lease renewal, as the loop saw the runs just before it: the database thread is given
    this, never the worker's runs (which the loop keeps changing)."""

    replica: str
    renew: tuple[str, ...]  # leases to push on
    ending: frozenset[str]  # runs whose work ended: their outcome is on its way; count as renewed
    reports: tuple[Progress, ...]  # progress not written yet

    def run(self, until: float) -> set[str]:
        """In a database thread: the ids still ours (see `models.tasks.renew_tasks`)."""
        return renew_tasks(list(self.renew), until, self.replica, self.reports) | self.ending


@dataclass(eq=False)
class _Run:
    view: TaskView
    ctx: TaskContext
    task: asyncio.Task[None] | None = None
    working: bool = True  # the function has not returned yet: the run holds a slot
    lost: bool = False  # no longer ours: stop quietly, record nothing


class TaskWorker:
    def __init__(self, tools: Toolbox, slots: int = 10, lease: float = 10.0,
                 poll_interval: float = 1.0, on_outcome: OutcomeListener = _ignore,
                 on_stats: StatsListener = _ignore, claim_ahead: bool = True) -> None:
        self.tools = tools
        self.registry, self.storage = tools.registry, tools.storage
        self.installations = installations = tools.installations
        self.on_outcome, self.on_stats = on_outcome, on_stats
        self.slots = slots
        self.lease = lease
        self.poll_interval = poll_interval
        self.claim_ahead = claim_ahead
        self.replica = tools.replica_name(self)
        #: Every run not over yet, by task id (working, or waiting for its outcome's record).
        self.running: dict[str, _Run] = {}
        self.leases: LeaseKeeper[str] = LeaseKeeper(
            self.storage, renewal=lambda ids: self._snapshot(ids).run, clock=now, lease=lease,
            name="task lease", on_lost=self._lost_ids)
        self._held: dict[str, int] = {}  # task id -> the attempt whose lease the keeper renews
        self._ready: deque[tuple[TaskView, float]] = deque()  # claimed ahead, since (monotonic)
        self._busy = 0  # slots in use
        self._ended = 0  # runs whose work ended since the last turn
        self._outcomes: list[tuple[Outcome, asyncio.Future[bool]]] = []
        self._direct = False  # the loop has stopped: outcomes are recorded one by one
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._last_takeover = -TAKEOVER_EVERY
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
        self._wake.set()
        if self._loop_task is not None:  # it ends after its turn (the outcomes it carries)
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._loop_task
        self._direct = True
        await self._flush()
        while self._ready:
            view, _ = self._ready.popleft()
            with contextlib.suppress(Exception):
                await self.storage.run(release_task, view.id, self.replica, view.attempts)
            self._release(view.id, view.attempts)
        tasks = [run.task for run in self.running.values() if run.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        for run in list(self.running.values()):
            if run.task is not None:
                run.task.cancel()
        tasks = [run.task for run in self.running.values() if run.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        await self.leases.stop()

    # ---- claiming -------------------------------------------------------------------------
    async def _poll_forever(self) -> None:
        while not self._stopping:
            try:
                await self.poll()
            except Exception as exc:  # the database may be down: try again later
                log.warning("task poll failed: %s", type(exc).__name__)
                await asyncio.sleep(self.poll_interval)
            if self._stopping:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)
            self._wake.clear()
        await self._flush()

    async def poll(self) -> int:
        """One turn: record the outcomes waiting, give back ready tasks that waited too long,
        claim what fits in the free slots (plus the claim-ahead), and start what fits now.
        Returns how many tasks were claimed."""
        batch, self._outcomes = self._outcomes, []
        ended, self._ended = self._ended, 0
        want = 0
        limits = {name: spec.concurrency_per_account
                  for name, spec in self.registry.tasks.items()}
        if not self._stopping:
            await self._give_back_stale()
            ahead = min(AHEAD * ended, self.slots) if self.claim_ahead else 0
            want = self.slots + ahead - self._busy - len(self._ready)
        takeover = time.monotonic() - self._last_takeover >= TAKEOVER_EVERY
        claimed: list[TaskView] = []
        if batch or want > 0:
            try:
                recorded, claimed = await self.storage.run(
                    settle_and_claim, [o for o, _ in batch], limits, want, self.replica,
                    self.lease, takeover)
            except BaseException:
                self._outcomes[:0] = batch  # recorded with the next turn
                raise
            if takeover and want > 0:
                self._last_takeover = time.monotonic()
            self._settled(batch, recorded)
            t = time.monotonic()
            for view in claimed:
                self._superseded(view.id)
                self._hold(view)
                self._ready.append((view, t))
            self._start_ready()
        if time.monotonic() - self._last_stats >= 5.0:
            self._last_stats = time.monotonic()
            await self._report_stats()
        return len(claimed)

    async def _flush(self) -> None:
        """Record the outcomes waiting, without claiming (the loop has stopped)."""
        batch, self._outcomes = self._outcomes, []
        if batch:
            try:
                recorded, _ = await self.storage.run(settle_and_claim, [o for o, _ in batch],
                                                     {}, 0, self.replica, self.lease)
            except Exception as exc:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                return
            self._settled(batch, recorded)

    def _settled(self, batch: list[tuple[Outcome, asyncio.Future[bool]]],
                 recorded: list[bool]) -> None:
        for (outcome, fut), ok in zip(batch, recorded, strict=True):
            self._release(outcome.task_id, outcome.attempt)
            if not fut.done():
                fut.set_result(ok)

    async def _give_back_stale(self) -> None:
        limit = time.monotonic() - READY_WAIT
        while self._ready and self._ready[0][1] < limit:
            view, _ = self._ready.popleft()
            self._release(view.id, view.attempts)
            await self.storage.run(release_task, view.id, self.replica, view.attempts)

    def _start_ready(self) -> None:
        while self._ready and self._busy < self.slots and not self._stopping:
            view, _ = self._ready.popleft()
            self._launch(view)

    def _superseded(self, task_id: str) -> None:
        """We claimed again a task an old run of ours still runs (its lease lapsed meanwhile,
        or it was cancelled and retried): the old run stops quietly."""
        old = self.running.get(task_id)
        if old is not None:
            self._cancel(old)

    def _launch(self, view: TaskView) -> None:
        tools = self.tools
        ctx = TaskContext(view.id, view.name, view.account_id, view.mode, view.input,
                          view.attempts, self.replica, progress_value=view.progress,
                          progress_note=view.note, storage=self.storage, clients=tools.clients,
                          vault=tools.vault, http=tools.http)
        run = _Run(view, ctx)
        self._busy += 1
        run.task = asyncio.get_running_loop().create_task(self._run(run))
        self.running[view.id] = run

        def done(_: asyncio.Task[Any]) -> None:
            self._work_done(run)
            if self.running.get(view.id) is run:
                del self.running[view.id]

        run.task.add_done_callback(done)

    def _work_done(self, run: _Run) -> None:
        """The run's function returned (or it stopped): its slot is free for a ready task."""
        if run.working:
            run.working = False
            self._busy -= 1
            self._ended += 1
            self._start_ready()
            self._wake.set()

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
    async def _run(self, run: _Run) -> None:
        view, ctx = run.view, run.ctx
        spec = self.registry.tasks[view.name]
        missing = missing_permissions(spec.permissions,
                                      self.installations.get(view.account_id, view.mode))
        if missing:  # as for a job fire: not sent to Stripe, and not retried
            log.warning("task %s %s for %s/%s not run: the install lacks %s", view.name,
                        view.id, view.account_id, view.mode, ", ".join(missing))
            self._work_done(run)
            await self._record(Outcome(
                view.id, ctx.attempt, TaskStatus.FAILED, progress=ctx.progress_value,
                note=ctx.progress_note,
                error="missing_permission: not granted: " + ", ".join(missing)))
            self.on_outcome(view.name, "missing_permission")
            return
        log.info("task %s %s for %s/%s (attempt %d/%d)", view.name, view.id, view.account_id,
                  view.mode, view.attempts, view.max_attempts)
        outcome = "failed"
        try:
            try:
                result = await self._call(spec, ctx)
            finally:
                self._work_done(run)
            outcome = "succeeded"
            await self._record(self._outcome(ctx, TaskStatus.SUCCEEDED, result=result))
        except asyncio.CancelledError:
            if run.lost:
                outcome = "cancelled"
                log.info("task %s %s for %s/%s stopped: cancelled or uninstalled", view.name,
                         view.id, view.account_id, view.mode)
                return
            if self._stopping:  # a graceful shutdown: give it back, attempt not counted
                outcome = "released"
                await asyncio.shield(self.storage.run(release_task, view.id, self.replica,
                                                      view.attempts))
                self._release(view.id, view.attempts)
                return
            raise
        except NOT_CONFIGURED as exc:
            outcome = "not_configured"
            error = error_text(exc, ctx.revealed, message_only=True)
            self._log_failure(run, outcome, error)
            await self._record(self._outcome(ctx, TaskStatus.FAILED, error=error))
        except BadInput as exc:
            outcome = "bad_input"
            error = error_text(exc, ctx.revealed, prefix="bad input: ", message_only=True)
            self._log_failure(run, outcome, error)
            await self._record(self._outcome(ctx, TaskStatus.FAILED, error=error))
        except Exception as exc:
            error = error_text(exc, ctx.revealed)
            if ctx.attempt < view.max_attempts:
                outcome = "retrying"
                delay = backoff(spec, ctx.attempt)
                log.warning("task %s %s for %s/%s failed (attempt %d/%d), retry in %.0fs: %s",
                            view.name, view.id, view.account_id, view.mode, ctx.attempt,
                            view.max_attempts, delay, error)
                await self._record(self._outcome(ctx, TaskStatus.QUEUED, error=error,
                                                      retry_at=now() + delay))
            else:
                self._log_failure(run, outcome, error)
                await self._record(self._outcome(ctx, TaskStatus.FAILED, error=error))
        finally:
            self.on_outcome(view.name, outcome)

    @staticmethod
    def _log_failure(run: _Run, outcome: str, error: str) -> None:
        """The one log line of a task that failed for good: its id, name, account and mode,
        the attempt, and the error as stored (`error_text`: bounded, secrets redacted)."""
        view = run.view
        log.warning("task %s %s for %s/%s failed (%s, attempt %d/%d): %s", view.name, view.id,
                    view.account_id, view.mode, outcome, run.ctx.attempt, view.max_attempts,
                    error)

    async def _call(self, spec: TaskSpec, ctx: TaskContext) -> Any:
        try:
            async with asyncio.timeout(spec.timeout):
                result = await spec.func(ctx)
        except TimeoutError:
            raise TimeoutError(f"the task took longer than {spec.timeout:g}s") from None
        json.dumps(result)  # a result that is not JSON fails here, as the task's error
        return result

    @staticmethod
    def _outcome(ctx: TaskContext, status: TaskStatus, **fields: Any) -> Outcome:
        progress = 1.0 if status == TaskStatus.SUCCEEDED else ctx.progress_value
        return Outcome(ctx.task_id, ctx.attempt, status, progress=progress,
                       note=ctx.progress_note, **fields)

    async def _record(self, outcome: Outcome) -> bool:
        """Record the attempt's outcome: with the loop's next turn (one transaction for many),
        or on its own once the loop has stopped. The lease is released once it is recorded."""
        if self._direct or self._loop_task is None:  # no loop turns to carry it
            ok = await asyncio.shield(self.storage.run(record, outcome, self.replica))
            self._release(outcome.task_id, outcome.attempt)
            return ok
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._outcomes.append((outcome, fut))
        self._wake.set()
        return await asyncio.shield(fut)

    # ---- leases and cancellation ----------------------------------------------------------
    def _hold(self, view: TaskView) -> None:
        self._held[view.id] = view.attempts
        self.leases.hold(view.id)

    def _release(self, task_id: str, attempt: int) -> None:
        """Stop renewing the lease of this attempt (not of a newer claim of the same task)."""
        if self._held.get(task_id) == attempt:
            del self._held[task_id]
            self.leases.release(task_id)

    def _snapshot(self, task_ids: list[str]) -> Renewal:
        """On the loop, right before a renewal: which leases to renew, and the progress the runs
        reported since their last write (taken now: counted as written).

        A run whose work ended is left out: its outcome is on its way (the loop's turn writes
        it, and renewing its row at the same time could deadlock with that write); it counts
        as renewed."""
        reports: list[Progress] = []
        renew: list[str] = []
        ending: set[str] = set()
        for task_id in task_ids:
            run = self.running.get(task_id)
            if run is not None and not run.working:
                ending.add(task_id)
                continue
            renew.append(task_id)
            report = run.ctx.take_report() if run is not None else None
            if report is not None:
                reports.append(report)
        return Renewal(self.replica, tuple(renew), frozenset(ending), tuple(reports))

    def _lost_ids(self, task_ids: set[str]) -> None:
        """The renewal did not find these tasks ours any more."""
        for task_id in task_ids:
            attempt = self._held.get(task_id)
            if attempt is not None:
                self._release(task_id, attempt)
            before = len(self._ready)
            self._ready = deque(entry for entry in self._ready if entry[0].id != task_id)
            if len(self._ready) != before:
                continue
            run = self.running.get(task_id)
            if run is not None and run.working:  # a run whose work ended records its outcome
                self._cancel(run)

    def _cancel(self, run: _Run) -> None:
        run.lost = True
        if run.task is not None:
            run.task.cancel()

    def _installation_changed(self, old: InstallationView | None,
                              new: InstallationView) -> None:
        if new.active:
            return
        gone = [view.id for view, _ in self._ready
                if view.account_id == new.account_id and view.mode == new.mode]
        for view, _ in self._ready:
            if view.id in gone:
                self._release(view.id, view.attempts)
        self._ready = deque(entry for entry in self._ready if entry[0].id not in gone)
        for run in list(self.running.values()):
            view = run.view
            if view.account_id == new.account_id and view.mode == new.mode and run.working:
                self._release(view.id, view.attempts)  # its row is deleted with the account's
                self._cancel(run)
