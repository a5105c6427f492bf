"""Declaring long-running tasks, started by the extension and run by `jobs/task_worker.py`.

    from jobs.tasks import TaskContext, task

    @task(attempts=3, timeout=3600, concurrency_per_account=1)
    async def export_invoices(ctx: TaskContext) -> dict:
        since = ctx.input.get("since")                    # a field the extension signed
        async for invoice in (await ctx.stripe.v1.invoices.list_async()).auto_paging_iter():
            ...
            await ctx.progress(0.5, note="halfway")
        return {"exported": 42}                           # the task's result (JSON)

Like `@job`, the decorator only marks the function; the registry collects it from any module
the loader walks (`models/loader.py`: `jobs/`, then the app's packages). The name `status` is
reserved (`POST /api/tasks/status`).
"""

from __future__ import annotations

import inspect
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from jobs.context import AccountTools, idempotency_key
from models.tasks import DEFAULT_BOUNDS, Progress, report_progress

TaskFunc = Callable[..., Awaitable[Any]]

NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
RESERVED = frozenset({"status"})
#: The longest input a task takes unless it says otherwise, as stored: the compact JSON of the
#: signed fields. A larger start answers 413 and stores nothing.
DEFAULT_MAX_INPUT_BYTES = DEFAULT_BOUNDS.input_bytes


class BadInput(ValueError):
    """Raise it when the task's input cannot work: the task fails at once, without retries."""


@dataclass(frozen=True)
class TaskSpec:
    name: str
    func: TaskFunc
    attempts: int = 3  # runs before the task is failed (a crash counts as one)
    timeout: float = 3600.0  # seconds an attempt may take
    concurrency_per_account: int = 1  # runs of this task at once for one account
    retry_delay: float = 5.0  # base of the exponential backoff between attempts
    permissions: tuple[str, ...] = ()  # Stripe permissions it needs: `manifest` lists them;
    # a run whose install has not granted one fails as `missing_permission`, Stripe uncalled
    description: str = ""
    max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES  # the input's compact JSON, at most


def task(name: str | None = None, *, attempts: int = 3, timeout: float = 3600.0,
         concurrency_per_account: int = 1, retry_delay: float = 5.0,
         permissions: list[str] | tuple[str, ...] = (),
         max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES) -> Callable[[TaskFunc], TaskFunc]:
    """Mark `async def f(ctx: TaskContext)` as a task the extension can start.

    `max_input_bytes` bounds its input (the compact JSON of the signed fields; default 16 KiB):
    a larger start answers 413 and stores nothing."""
    if attempts < 1 or concurrency_per_account < 1 or timeout <= 0 or max_input_bytes < 2:
        raise ValueError("attempts and concurrency_per_account must be >= 1, timeout > 0, "
                         "max_input_bytes >= 2 (the empty input is {})")

    def mark(func: TaskFunc) -> TaskFunc:
        if not inspect.iscoroutinefunction(func):
            raise TypeError(f"task {func.__name__} must be an async function")
        task_name = name or func.__name__
        if not NAME.fullmatch(task_name) or task_name in RESERVED:
            raise ValueError(f"task name {task_name!r} must match {NAME.pattern} and not be "
                             f"one of {sorted(RESERVED)}")
        func.__task_spec__ = TaskSpec(  # type: ignore[attr-defined]
            name=task_name, func=func, attempts=attempts, timeout=timeout,
            concurrency_per_account=concurrency_per_account, retry_delay=retry_delay,
            permissions=tuple(permissions), max_input_bytes=max_input_bytes,
            description=(inspect.getdoc(func) or "").split("\n")[0])
        return func

    return mark


@dataclass
class TaskContext(AccountTools):
    """What a task receives: whose it is, its input, and the tools to do it (`AccountTools`)."""

    task_id: str
    name: str
    account_id: str
    mode: str
    input: dict[str, Any]
    attempt: int
    holder: str = field(repr=False, default="")
    progress_value: float | None = None
    progress_note: str | None = None
    unreported: bool = field(repr=False, default=False)  # progress not written to the row yet
    _reported_at: float = field(repr=False, default=0.0)

    def idempotency_key(self, label: str) -> str:
        """The same key for this task and label on every attempt: pass it as Stripe's
        `idempotency_key` so that a retried attempt does not repeat a write."""
        return idempotency_key("task", self.task_id, label)

    async def progress(self, fraction: float | None, note: str | None = None) -> None:
        """Report progress (0..1) and a short note; the extension sees it in the task's status.
        Written at most every quarter second (the last value is kept and written with the
        worker's next lease renewal, or with the outcome)."""
        if fraction is not None:
            fraction = min(1.0, max(0.0, float(fraction)))
        self.progress_value = fraction
        self.progress_note = None if note is None else str(note)[:500]
        self.unreported = True
        t = time.monotonic()
        if t - self._reported_at >= 0.25 and self.holder:
            self._reported_at = t
            report = self.take_report()
            if report is not None:
                await self.storage.run(report_progress, [report], self.holder)

    def take_report(self) -> Progress | None:
        """The progress not written yet (then counted as written), or None."""
        if not self.unreported:
            return None
        self.unreported = False
        return Progress(self.task_id, self.attempt, self.progress_value, self.progress_note)
