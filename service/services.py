"""The object graph of one process, wired in one place: the server, the CLI and tests use it.

    services = await Services.open(config, scheduler=True)   # all of it, in order
    ...                                                      # .storage .installations .runner ...
    await services.close(timeout)                            # undone in reverse

    async with Services.opened(config, replica="cli") as services:   # the same, for a command
        ...

What it holds: `registry` (the jobs and event handlers), `metrics`, `storage` (the database,
migrated), `installations` (the in-memory index, loaded), `clients` (Stripe, per mode),
`runner` (job runs), `events` (webhook processing, not started: the server starts it),
`task_worker` (long-running tasks, likewise not started), `install_sync` (when
`STRIPE_APP_ID` is set) and
`scheduler` (only when asked for, started). The server opens it step by step
(`open_storage`, `load_installations`, `start_jobs`) so that each step logs and fails on its
own; `close()` undoes whichever steps were done. It lives in `service/` because it wires
`jobs/` to the service's `Metrics` (through callbacks); `jobs/` never imports it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import peewee as pw

from jobs.context import Toolbox
from jobs.credentials import Vault
from jobs.events import EventProcessor
from jobs.http import make_http_client
from jobs.installs import InstallSync
from jobs.oauth import OAuthProviders
from jobs.registry import Registry
from jobs.runner import JobRunner
from jobs.scheduler import JobScheduler
from jobs.stripe_api import StripeClients
from jobs.task_worker import TaskWorker
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
    vault: Vault
    http: httpx.AsyncClient
    task_worker: TaskWorker
    tools: Toolbox

    def __init__(self, config: Config, *, registry: Registry | None = None,
                 replica: str | None = None, oauth: OAuthProviders | None = None) -> None:
        self.config = config
        self.registry = registry or Registry.discover()
        self.oauth = oauth or OAuthProviders.discover()
        self.metrics = Metrics()
        self.replica = replica
        self.scheduler: JobScheduler | None = None
        self.install_sync: InstallSync | None = None

    @classmethod
    async def open(cls, config: Config, *, registry: Registry | None = None,
                   replica: str | None = None, scheduler: bool = False,
                   database: pw.Database | None = None,
                   oauth: OAuthProviders | None = None) -> Services:
        """Every step in order; on a failure, what was opened is closed and the error raised.

        `database` shares an open database (replicas in one process); by default
        `config.database_url` is opened. `replica` names this process in job run records.
        """
        services = cls(config, registry=registry, replica=replica, oauth=oauth)
        try:
            await services.open_storage(database)
            await services.load_installations()
            services.open_integrations()
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
        db = database or open_database(self.config.database_url,
                                       self.config.sqlite_synchronous)
        self.storage = Storage(db, workers=self.config.db_workers)
        return await self.storage.run(migrate, db)

    async def load_installations(self) -> int:
        """Load the installation index; returns how many accounts have the app installed."""
        self.installations = InstallationIndex(self.storage)
        return await self.installations.load()

    def open_integrations(self) -> None:
        """The credentials vault and `ctx.http`, the shared client for third-party calls."""
        self.vault = Vault(self.storage, self.config.credentials_keys, self.oauth)
        self.http = make_http_client()

    def start_jobs(self, scheduler: bool = False) -> None:
        """The Stripe clients, the job runner and event processing; and, when `scheduler`,
        the job scheduler, started."""
        cfg, metrics = self.config, self.metrics
        self.clients = StripeClients(
            cfg.secret_keys, cfg.rate_limits, cfg.api_base,
            on_response=lambda mode, status: metrics.stripe_calls.labels(
                mode, str(status)).inc())
        self.tools = tools = Toolbox(self.registry, self.storage, self.installations,
                                     self.clients, self.vault, self.http, self.replica)
        self.events = EventProcessor(
            tools, on_processed=lambda type_, status: metrics.event_processing.labels(
                type_, status).inc())
        self.runner = JobRunner(
            tools, concurrency=cfg.job_concurrency,
            on_outcome=lambda job, outcome: metrics.job_runs.labels(job, outcome).inc())
        self.task_worker = TaskWorker(
            tools, slots=cfg.task_concurrency, lease=cfg.task_lease_seconds,
            on_outcome=lambda task, outcome: metrics.task_runs.labels(task, outcome).inc(),
            on_stats=metrics.observe_task_queue)
        self.install_sync = None if not cfg.app_id else InstallSync(
            cfg.app_id, self.clients, self.storage, self.installations, replica=self.replica,
            on_change=lambda mode, kind: metrics.install_sync.labels(mode, kind).inc())
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
            await self.runner.stop()  # the scheduler stops it; without one, its lease renewal
        if hasattr(self, "task_worker"):
            await self.task_worker.stop(timeout)
        if hasattr(self, "events"):
            await self.events.stop(timeout)
        if hasattr(self, "clients"):
            await self.clients.close()
        if hasattr(self, "http"):
            await self.http.aclose()
        if hasattr(self, "storage"):
            self.storage.close()
