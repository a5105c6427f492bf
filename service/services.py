"""The object graph of one process, wired in one place: the server, the CLI and tests use it.

    services = await Services.open(config, scheduler=True)   # all of it, in order
    ...                                                      # .storage .installations .runner ...
    await services.close(timeout)                            # undone in reverse

    async with Services.opened(config, replica="cli") as services:   # the same, for a command
        ...

What it holds: `registry` (the jobs and event handlers), `metrics`, `storage` (the database,
migrated), `installations` (the in-memory index, loaded), `clients` (Stripe, per mode),
`runner` (job runs), `events` (webhook processing, not started: the server starts it) and
`scheduler` (only when asked for, started). The server opens it step by step
(`open_storage`, `load_installations`, `start_jobs`) so that each step logs and fails on its
own; `close()` undoes whichever steps were done. It lives in `service/` because it wires
`jobs/` to the service's `Metrics` (through callbacks); `jobs/` never imports it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import peewee as pw

from jobs.events import EventProcessor
from jobs.registry import Registry
from jobs.runner import JobRunner
from jobs.scheduler import JobScheduler
from jobs.stripe_api import StripeClients
from models.db import Storage, open_database
from models.installation_index import InstallationIndex
from models.migrate import migrate
from service.config import Config
from service.metrics import Metrics


class Services:
    storage: Storage
    installations: InstallationIndex
    clients: StripeClients
    runner: JobRunner
    events: EventProcessor

    def __init__(self, config: Config, *, registry: Registry | None = None,
                 replica: str | None = None) -> None:
        self.config = config
        self.registry = registry or Registry.discover()
        self.metrics = Metrics()
        self.replica = replica
        self.scheduler: JobScheduler | None = None

    @classmethod
    async def open(cls, config: Config, *, registry: Registry | None = None,
                   replica: str | None = None, scheduler: bool = False,
                   database: pw.Database | None = None) -> Services:
        """Every step in order; on a failure, what was opened is closed and the error raised.

        `database` shares an open database (replicas in one process); by default
        `config.database_url` is opened. `replica` names this process in job run records.
        """
        services = cls(config, registry=registry, replica=replica)
        try:
            await services.open_storage(database)
            await services.load_installations()
            services.start_jobs(scheduler=scheduler)
        except BaseException:
            await services.close()
            raise
        return services

    @classmethod
    @contextlib.asynccontextmanager
    async def opened(cls, config: Config, **kwargs: Any) -> AsyncIterator[Services]:
        """`open(config, **kwargs)` for the length of an `async with` block."""
        services = await cls.open(config, **kwargs)
        try:
            yield services
        finally:
            await services.close()

    # ---- the steps, in order ---------------------------------------------------------------
    async def open_storage(self, database: pw.Database | None = None) -> list[str]:
        """Open the database and bring its schema up to date; returns the migrations applied.

        Raises `models.db.UNAVAILABLE` when the database cannot be reached."""
        db = database or open_database(self.config.database_url)
        self.storage = Storage(db, workers=self.config.db_workers)
        return await self.storage.run(migrate, db)

    async def load_installations(self) -> int:
        """Load the installation index; returns how many accounts have the app installed."""
        self.installations = InstallationIndex(self.storage)
        return await self.installations.load()

    def start_jobs(self, scheduler: bool = False) -> None:
        """The Stripe clients, the job runner and event processing; and, when `scheduler`,
        the job scheduler, started."""
        cfg, metrics = self.config, self.metrics
        self.clients = StripeClients(
            cfg.secret_keys, cfg.rate_limits, cfg.api_base,
            on_response=lambda mode, status: metrics.stripe_calls.labels(
                mode, str(status)).inc())
        self.events = EventProcessor(
            self.registry, self.storage, self.installations, self.clients,
            on_processed=lambda type_, status: metrics.event_processing.labels(
                type_, status).inc())
        self.runner = JobRunner(
            self.registry, self.storage, self.installations, self.clients,
            concurrency=cfg.job_concurrency, replica=self.replica,
            on_outcome=lambda job, outcome: metrics.job_runs.labels(job, outcome).inc())
        if scheduler:
            self.scheduler = JobScheduler(self.registry, self.runner, self.installations)
            self.scheduler.start()

    # ---- the reverse -----------------------------------------------------------------------
    async def close(self, timeout: float | None = None) -> None:
        """Stop the scheduler and event processing (work under way gets `timeout` seconds,
        `SHUTDOWN_TIMEOUT` by default), then close the Stripe clients and the database."""
        if timeout is None:
            timeout = self.config.shutdown_timeout
        if self.scheduler is not None:
            await self.scheduler.stop(timeout)
        elif hasattr(self, "runner"):
            await self.runner.stop()
        if hasattr(self, "events"):
            await self.events.stop(timeout)
        if hasattr(self, "clients"):
            await self.clients.close()
        if hasattr(self, "storage"):
            self.storage.close()
