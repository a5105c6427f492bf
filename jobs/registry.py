"""Declaring per-account jobs and webhook event handlers.

    from jobs.registry import job, on_event

    @job(every=3600, spread=600)            # hourly, each account at its own minute
    async def sync_invoices(ctx: JobContext) -> None:
        await ctx.stripe.v1.invoices.list_async(...)

    @on_event("customer.created")
    async def welcome(ctx: EventContext) -> None:
        ...

The decorators only mark the function; `Registry.from_modules()` collects what is marked in the
modules the loader imported (`models/loader.py`: every module of the packages it walks), so
there is no global registry to mutate and a new module in one of those packages is picked up
without touching any other file. `Registry.discover()` is the two together.

Fire times are the same on every replica: interval jobs are anchored to a fixed epoch, and the
spread of an account (its offset within `spread` seconds) is a hash of the job, account and mode,
not a random draw. That is what lets replicas claim a fire by its time (see `models/jobs.py`).
"""

from __future__ import annotations

import inspect
import zlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from jobs.endpoints import EndpointSpec
from jobs.tasks import TaskSpec
from models.enums import MODES
from models.loader import DEFAULT_PACKAGES, load_modules

EPOCH = datetime(2020, 1, 1, tzinfo=UTC)

JobFunc = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class JobSpec:
    name: str
    func: JobFunc
    every: float | None = None  # seconds between runs, or
    cron: str | None = None  # a crontab line, in UTC
    spread: float = 0.0  # each account runs at a stable offset in [0, spread)
    modes: tuple[str, ...] = MODES
    attempts: int = 3  # tries per fire before the run is recorded as failed
    retry_delay: float = 5.0  # base of the exponential backoff between tries
    misfire_grace: float = 3600.0  # a fire missed while down runs late if within this
    run_on_install: bool = False  # also run once as soon as an account installs
    description: str = ""
    permissions: tuple[str, ...] = ()  # Stripe permissions the job needs (jobs/installs.py)

    def offset(self, account_id: str, mode: str) -> float:
        if not self.spread:
            return 0.0
        digest = zlib.crc32(f"{self.name}:{account_id}:{mode}".encode())
        return float(digest % int(self.spread * 1000)) / 1000.0

    def trigger(self, account_id: str, mode: str) -> BaseTrigger:
        offset = self.offset(account_id, mode)
        if self.every:
            return IntervalTrigger(seconds=self.every, start_date=EPOCH + timedelta(seconds=offset),
                                   timezone=UTC)
        base = CronTrigger.from_crontab(self.cron or "0 0 * * *", timezone=UTC)
        return OffsetTrigger(base, offset) if offset else base

    def previous_fire(self, account_id: str, mode: str, now: datetime,
                      window: float) -> datetime | None:
        """The last fire time in (now - window, now], or None."""
        if self.every:  # arithmetic: no trigger to build, cheap for 100,000 accounts
            start = EPOCH.timestamp() + self.offset(account_id, mode)
            k = (now.timestamp() - start) // self.every
            prev = start + k * self.every
            if prev <= now.timestamp() - window or k < 0:
                return None
            return datetime.fromtimestamp(prev, UTC)
        trigger = self.trigger(account_id, mode)
        last, cursor = None, now - timedelta(seconds=window)
        for _ in range(10_000):
            nxt = trigger.get_next_fire_time(last, cursor if last is None else last)
            if nxt is None or nxt > now:
                break
            if last is not None and nxt <= last:
                break
            last = nxt
            cursor = nxt
        return last


class OffsetTrigger(BaseTrigger):
    """A cron trigger shifted later by a fixed number of seconds."""

    def __init__(self, inner: BaseTrigger, seconds: float) -> None:
        self.inner, self.shift = inner, timedelta(seconds=seconds)

    def get_next_fire_time(self, previous_fire_time: datetime | None,
                           now: datetime) -> datetime | None:
        prev = previous_fire_time - self.shift if previous_fire_time else None
        nxt = self.inner.get_next_fire_time(prev, now - self.shift)
        return nxt + self.shift if nxt else None

    def __str__(self) -> str:
        return f"{self.inner} + {self.shift.total_seconds():.0f}s"


def job(name: str | None = None, *, every: float | timedelta | None = None,
        cron: str | None = None, spread: float = 0.0, modes: tuple[str, ...] = MODES,
        attempts: int = 3, retry_delay: float = 5.0, misfire_grace: float = 3600.0,
        run_on_install: bool = False,
        permissions: tuple[str, ...] | list[str] = ()) -> Callable[[JobFunc], JobFunc]:
    """Mark `async def f(ctx: JobContext)` as a per-account job (give `every` or `cron`)."""
    if (every is None) == (cron is None):
        raise ValueError("give exactly one of every= or cron=")
    if isinstance(every, timedelta):
        every = every.total_seconds()
    if cron is not None:
        CronTrigger.from_crontab(cron)  # fail at import time, not at the first fire

    def mark(func: JobFunc) -> JobFunc:
        if not inspect.iscoroutinefunction(func):
            raise TypeError(f"job {func.__name__} must be an async function")
        func.__job_spec__ = JobSpec(  # type: ignore[attr-defined]
            name=name or func.__name__, func=func, every=every, cron=cron, spread=spread,
            modes=tuple(modes), attempts=attempts, retry_delay=retry_delay,
            misfire_grace=misfire_grace, run_on_install=run_on_install,
            description=(inspect.getdoc(func) or "").split("\n")[0],
            permissions=tuple(permissions))
        return func

    return mark


def on_event(*types: str) -> Callable[[JobFunc], JobFunc]:
    """Mark `async def f(ctx: EventContext)` as a handler of these webhook event types."""

    def mark(func: JobFunc) -> JobFunc:
        if not inspect.iscoroutinefunction(func):
            raise TypeError(f"event handler {func.__name__} must be an async function")
        func.__event_types__ = tuple(types)  # type: ignore[attr-defined]
        return func

    return mark


@dataclass
class Registry:
    """What the app declares: jobs and tasks by name, event handlers by type, endpoints by
    path. Two declarations under one name (or path) are refused."""

    jobs: dict[str, JobSpec] = field(default_factory=dict)
    handlers: dict[str, list[JobFunc]] = field(default_factory=dict)
    tasks: dict[str, TaskSpec] = field(default_factory=dict)
    endpoints: dict[str, EndpointSpec] = field(default_factory=dict)

    def add_module(self, module: Any) -> None:
        for _, value in inspect.getmembers(module):
            _add(self.jobs, "jobs", getattr(value, "__job_spec__", None), JobSpec, module)
            _add(self.tasks, "tasks", getattr(value, "__task_spec__", None), TaskSpec, module)
            spec = getattr(value, "__endpoint_spec__", None)
            if isinstance(spec, EndpointSpec):
                known = self.endpoints.get(spec.path)
                if known is not None and known.read is not spec.read:
                    raise ValueError(f"two endpoints answer {spec.path!r} (one in "
                                     f"{module.__name__})")
                self.endpoints[spec.path] = spec
            for type_ in getattr(value, "__event_types__", ()):
                funcs = self.handlers.setdefault(type_, [])
                if value not in funcs:
                    funcs.append(value)

    @classmethod
    def from_modules(cls, modules: Iterable[Any]) -> Registry:
        """What `modules` declare (those `models.loader.load_modules` imported)."""
        registry = cls()
        for module in modules:
            registry.add_module(module)
        return registry

    @classmethod
    def discover(cls, packages: Iterable[str] = DEFAULT_PACKAGES) -> Registry:
        """What the modules of `packages` declare (the default: what the backend walks)."""
        return cls.from_modules(load_modules(packages))


def _add(known: dict[str, Any], kind: str, spec: JobSpec | TaskSpec | None,
         spec_type: type[JobSpec] | type[TaskSpec], module: Any) -> None:
    """Record a job's or a task's spec under its name, refusing another function of that name."""
    if not isinstance(spec, spec_type):
        return
    existing = known.get(spec.name)
    if existing is not None and existing.func is not spec.func:
        raise ValueError(f"two {kind} are named {spec.name!r} (one in {module.__name__})")
    known[spec.name] = spec
