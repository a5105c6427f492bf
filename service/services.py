"""The process as one ordered list of start-up steps, and its shutdown, the reverse.

    services = Services(config)
    await services.start()           # every step, in order: the server (`service/server.py`)
    ...                              # .storage .installations .runner .app .port ...
    await services.stop()            # each step that ran is undone, in reverse

    async with Services.opened(config, until=OFFLINE, replica="cli") as services:
        ...                          # a command: the steps up to `jobs`, then undone

The steps (`steps()`), each an `init_<step>` method and, where something must be undone, a
`close_<step>` one (like JupyterHub's `init_*` and `cleanup`); what each builds, and its undoing:

1. database: `storage`, the database (`open_configured_database`), migrated (the project's
   migrations, then the app's); closed.
2. installations: `installations`, the in-memory index (and the door, holding the loaded
   models whose rows an uninstall deletes), loaded.
3. integrations: `vault` (credentials) and `http` (`ctx.http`); the HTTP client closed.
4. jobs: `clients` (Stripe), `tools` (the workers' `jobs.context.Toolbox`), `runner`,
   `events`, `task_worker`, `install_sync`, built, not started; stopped (work under way gets
   the shutdown grace), the Stripe clients closed.
5. scheduler: `scheduler`, started, when `SCHEDULER` is on; stopped (running jobs get the
   grace).
6. replica: this process's first heartbeat (`models/replicas.py`).
7. background: event and task polling, heartbeats, following other processes' installation
   changes (at once: `models/change_watch.py`), retention, the scheduler's catch-up, the
   Install API sync; cancelled.
8. app: `app`, the Tornado application.
9. http: `server`, listening on `port`, last; stops accepting, lets the requests in flight
   finish, closes the connections.

A command that needs only part of the process runs a prefix: `start(until=step)` (`OFFLINE`,
the steps up to `jobs`, is what `cli/offline.py` gives the operator commands). A step that
fails undoes its own partial work and raises; `start` then undoes the steps that ran before
it, in reverse, and raises the error. `stop(timeout)` (`SHUTDOWN_TIMEOUT` by default) undoes
whatever ran, and may be called again.

`open_configured_database(config)` is the one way anything opens the database: `DATABASE_URL`
with `SQLITE_SYNCHRONOUS` (the database step, `service/workers.py`'s parent, and the commands
that work on the database without the graph: `migrate`, `tasks`, `credentials`, `doctor`).
This module lives in `service/` because it wires `jobs/` to the service's `Metrics` (through
callbacks) and to the HTTP app; `jobs/` never imports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import resource
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import httpx
import peewee as pw
import tornado.web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

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
from models.base import models_of
from models.change_watch import ChangeWatch
from models.db import Storage, open_database
from models.installation_index import InstallationIndex
from models.loader import load_modules, with_apps
from models.migrate import migrate
from models.replicas import HEARTBEAT_SECONDS, heartbeat
from models.retention import prune_forever
from service.app import make_app
from service.config import Config, app_packages
from service.connections import (
    HEADER_TIMEOUT,
    RESERVED_FILES,
    BoundedHTTPServer,
    raise_file_limit,
)
from service.loops import running_loop_name
from service.metrics import Metrics
from service.status import version
from service.tracker import RequestTracker

log = logging.getLogger("app.server")

#: The last step of the operator commands (`cli/offline.py`): no scheduler, nothing served.
OFFLINE = "jobs"


class StartupError(RuntimeError):
    """The service cannot start; the message says why, for a person (no traceback)."""


def open_configured_database(config: Config) -> pw.Database:
    """The database of `config` (`DATABASE_URL`, with `SQLITE_SYNCHRONOUS`), connected to the
    models: the one way the server, the workers' parent and every command open it."""
    return open_database(config.database_url, config.sqlite_synchronous)


@dataclass(frozen=True)
class Step:
    """One start-up step: `start()`, and `close(timeout)` to undo it (None: nothing to undo)."""

    name: str
    start: Callable[[], Awaitable[None]]
    close: Callable[[float], Awaitable[None]] | None = None



def app_registry(config: Config) -> Registry:
    """What the project and the configured app declare (`app_packages(config)`), as `Services`
    sees it: for the commands that need the declarations without the services (`manifest`,
    `doctor`). Raises `LoadError` naming a module of the app that cannot be imported."""
    return Registry.from_modules(load_modules(with_apps(app_packages(config))))

class Services:
    """One process's objects and their start-up (`steps()`), for the server, a command or a
    test alike; see the module docstring."""

    storage: Storage
    installations: InstallationIndex
    vault: Vault
    http: httpx.AsyncClient
    clients: StripeClients
    tools: Toolbox
    runner: JobRunner
    events: EventProcessor
    task_worker: TaskWorker
    app: tornado.web.Application

    def __init__(self, config: Config, *, registry: Registry | None = None,
                 replica: str | None = None, oauth: OAuthProviders | None = None,
                 extra_routes: list[tuple[str, type]] | None = None,
                 header_timeout: float = HEADER_TIMEOUT, reuse_port: bool = False,
                 database: pw.Database | None = None) -> None:
        """`replica` names this process in the rows it claims (default: host and pid);
        `database` shares an open database (replicas in one process); `reuse_port` listens
        with `SO_REUSEPORT`, as each of `service/workers.py`'s workers does."""
        self.config = config
        #: The app's packages (`APP_PACKAGES`, `--app`, else the example app), and every module
        #: of the project's and the app's packages: one walk, which the registry, the OAuth
        #: providers and the tables all come from (a module that fails: `LoadError`).
        self.apps = app_packages(config)
        self.modules = modules = load_modules(with_apps(self.apps))
        self.registry = registry or Registry.from_modules(modules)
        self.oauth = oauth or OAuthProviders.from_modules(modules)
        self.metrics = Metrics()
        self.replica = replica
        self.extra_routes = extra_routes
        self.header_timeout = header_timeout
        self.reuse_port = reuse_port
        self.database = database
        self.tracker = RequestTracker()
        self.scheduler: JobScheduler | None = None
        self.install_sync: InstallSync | None = None
        self.server: HTTPServer | None = None
        self.port: int | None = None
        self.migrations_applied: list[str] = []
        self._background: list[asyncio.Task[Any]] = []
        self._started: list[Step] = []
        self._serving = False  # all the steps run (a server): its start-up is told at INFO

    # ---- the one list, and how it is run ----------------------------------------------------
    def steps(self) -> tuple[Step, ...]:
        """Start-up, in order; shutdown undoes the steps that ran, in reverse."""
        return (
            Step("database", self.init_database, self.close_database),
            Step("installations", self.init_installations),
            Step("integrations", self.init_integrations, self.close_integrations),
            Step("jobs", self.init_jobs, self.close_jobs),
            Step("scheduler", self.init_scheduler, self.close_scheduler),
            Step("replica", self.init_replica),
            Step("background", self.init_background, self.close_background),
            Step("app", self.init_app),
            Step("http", self.init_http, self.close_http),
        )

    async def start(self, until: str | None = None) -> None:
        """Run the steps in order, through `until` (default: all of them). On a failure, the
        steps that ran are undone in reverse and the error is raised."""
        steps = self.steps()
        names = [s.name for s in steps]
        if until is not None and until not in names:
            raise ValueError(f"no start-up step {until!r}; the steps are {names}")
        self._serving = until in (None, names[-1])
        for step in steps[:names.index(until) + 1 if until else len(steps)]:
            try:
                await step.start()
            except BaseException:
                await self.stop()
                raise
            self._started.append(step)

    async def stop(self, timeout: float | None = None) -> None:
        """Undo the steps that ran, last first (work under way gets `timeout` seconds,
        `SHUTDOWN_TIMEOUT` by default); a step whose undoing fails is logged, and the rest are
        undone all the same."""
        if timeout is None:
            timeout = self.config.shutdown_timeout
        served = any(step.name == "http" for step in self._started)
        while self._started:
            step = self._started.pop()
            if step.close is None:
                continue
            try:
                await step.close(timeout)
            except Exception as exc:
                log.warning("shutdown: undoing %s failed: %s", step.name, type(exc).__name__)
        if served:
            log.info("stopped")

    def _tell(self, message: str, *args: object) -> None:
        """A line of the start-up's story: INFO for the server, DEBUG for a command's prefix
        (whose output is the command's own)."""
        log.log(logging.INFO if self._serving else logging.DEBUG, message, *args)

    @classmethod
    async def open(cls, config: Config, *, until: str, **kwargs: Any) -> Services:
        """`Services(config, **kwargs)`, started through the step `until`."""
        services = cls(config, **kwargs)
        await services.start(until)
        return services

    @classmethod
    @contextlib.asynccontextmanager
    async def opened(cls, config: Config, *, until: str,
                     **kwargs: Any) -> AsyncIterator[Services]:
        """`open(config, until=..., **kwargs)` for the length of an `async with` block."""
        services = await cls.open(config, until=until, **kwargs)
        try:
            yield services
        finally:
            await services.stop()

    # ---- the steps --------------------------------------------------------------------------
    async def init_database(self) -> None:
        """Open the database and bring its schema up to date (`migrations_applied`).

        Raises `models.db.UNAVAILABLE` when the database cannot be reached."""
        db = self.database or open_configured_database(self.config)
        storage = Storage(db, workers=self.config.db_workers)
        try:
            self.migrations_applied = await storage.run(migrate, db, apps=self.apps)
        except BaseException:
            storage.close()
            raise
        self.storage = storage
        if self.migrations_applied:
            self._tell("database brought up to date: %s", ", ".join(self.migrations_applied))

    async def close_database(self, timeout: float) -> None:
        self.storage.close()

    async def init_installations(self) -> None:
        self.installations = InstallationIndex(self.storage, models_of(self.modules))
        active = await self.installations.load()
        self._tell("%d accounts have the app installed", active)

    async def init_integrations(self) -> None:
        """The credentials vault and `ctx.http`, the shared client for third-party calls."""
        self.vault = Vault(self.storage, self.config.credentials_keys, self.oauth)
        self.http = make_http_client()

    async def close_integrations(self, timeout: float) -> None:
        await self.http.aclose()

    async def init_jobs(self) -> None:
        """The Stripe clients, the workers' toolbox, the job runner, event processing, the task
        worker and the Install API sync, built (not started: see `background`)."""
        cfg, metrics = self.config, self.metrics
        self.clients = StripeClients(
            cfg.secret_keys, cfg.rate_limits, cfg.api_base,
            on_response=lambda mode, status: metrics.stripe_calls.labels(
                mode, str(status)).inc(),
            contexts=self.installations.context_of)
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

    async def close_jobs(self, timeout: float) -> None:
        """Stop the task worker and event processing (running work gets `timeout` seconds),
        the runner's lease renewal, and close the Stripe clients."""
        await self.task_worker.stop(timeout)
        await self.events.stop(timeout)
        await self.runner.stop()
        await self.clients.close()

    async def init_scheduler(self) -> None:
        """The job scheduler, started, when this process runs one (`SCHEDULER`)."""
        if self.config.scheduler:
            self.scheduler = JobScheduler(self.registry, self.runner, self.installations)
            self.scheduler.start()

    async def close_scheduler(self, timeout: float) -> None:
        if self.scheduler is not None:
            await self.scheduler.stop(timeout)

    async def init_replica(self) -> None:
        """Write this process's first heartbeat before it listens, so a replica is in the
        table for as long as it serves (the later beats come from `_heartbeat_forever`)."""
        host, pid = socket.gethostname(), os.getpid()
        self._replica = (self.replica or f"{host}:{pid}", host, pid, time.time())
        await self._heartbeat()

    async def _heartbeat(self) -> None:
        name, host, pid, started = self._replica
        try:
            await self.storage.run(heartbeat, name, host, pid, version(), started)
        except Exception as exc:  # the database may be down; say so next time
            log.debug("heartbeat failed: %s", type(exc).__name__)

    async def init_background(self) -> None:
        """Event and task polling and the process's loops, as tasks of the event loop."""
        loop = asyncio.get_running_loop()
        self.events.start()
        self.task_worker.start()
        loops: list[Coroutine[Any, Any, Any]] = [
            self.metrics.measure_loop_lag(), self._follow_replicas(),
            prune_forever(self.storage, self.config.retention_days), self._heartbeat_forever()]
        if self.scheduler:
            loops.append(self.scheduler.catch_up())
        if self.scheduler and self.install_sync and self.config.install_sync:
            loops.append(self.install_sync.run_forever())
        self._background = [loop.create_task(c) for c in loops]

    async def close_background(self, timeout: float) -> None:
        for task in self._background:
            task.cancel()
        if self._background:
            await asyncio.wait(self._background, timeout=5)

    async def _heartbeat_forever(self) -> None:
        """Say in the database that this process is alive (the status page's replicas)."""
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            await self._heartbeat()

    async def _follow_replicas(self) -> None:
        """Re-read the installations other processes changed: as soon as the database says
        another commit happened (`models/change_watch.py`: SQLite's `data_version`, checked
        twice a second; PostgreSQL's `LISTEN`), and every `REPLICA_POLL_SECONDS` at the
        latest. Nothing of it runs per request."""
        watch = ChangeWatch.of(self.storage)
        try:
            while True:
                await watch.wait(self.config.replica_poll_seconds)
                try:
                    await self.installations.refresh()
                except Exception as exc:
                    log.warning("could not re-read installations: %s", type(exc).__name__)
        finally:
            watch.close()

    async def init_app(self) -> None:
        for line in [*self.config.disabled_features(), *self.oauth.disabled()]:
            log.info("%s", line)
        for line in self.config.ignored_variables():  # a misspelt setting, read by nothing
            log.warning("%s", line)
        self.app = make_app(
            self.config, self.storage, self.scheduler, installations=self.installations,
            events=self.events, registry=self.registry, metrics=self.metrics,
            tracker=self.tracker, extra_routes=self.extra_routes, task_worker=self.task_worker,
            vault=self.vault, header_timeout=self.header_timeout,
            install_sync=self.install_sync)

    async def init_http(self) -> None:
        """Listen, last: until now connections wait in no queue of ours (with `reuse_port`, a
        worker's own `SO_REUSEPORT` socket, `service/workers.py`: the kernel gives new
        connections to the workers already listening, not to one still building its
        schedule)."""
        # Bodies are limited per request by service/guard.py (413 before reading);
        # Tornado's own limit would answer 400 and drop the connection, so it is set out of
        # the way. The header timeout is the guard's too (connections.py).
        files = raise_file_limit()
        if files != resource.RLIM_INFINITY and self.config.max_connections > files - RESERVED_FILES:
            log.warning("MAX_CONNECTIONS=%d is more than the open-file limit (%d) allows; past "
                        "about %d connections, new ones wait", self.config.max_connections,
                        files, files - RESERVED_FILES)
        try:
            sockets = bind_sockets(self.config.port, self.config.host, backlog=1024,
                                   reuse_port=self.reuse_port)
        except OSError as exc:
            raise StartupError(f"cannot listen on {self.config.host}:{self.config.port}: "
                               f"{exc.strerror}") from None
        self.server = BoundedHTTPServer(
            self.app, max_body_size=1 << 40,
            max_connections=self.config.max_connections, metrics=self.metrics)
        self.server.add_sockets(sockets)
        self.port = sockets[0].getsockname()[1]
        # Everything built so far (100,000 scheduled jobs and installations, say) lives as long
        # as the process: keep it out of the cyclic collector's full passes, which would
        # otherwise stall the event loop for tens of milliseconds each.
        gc.collect()
        gc.freeze()
        log.info("listening on http://%s:%s (event loop: %s)", self.config.host, self.port,
                 running_loop_name())

    async def close_http(self, timeout: float) -> None:
        """Stop accepting at once; requests in flight (counted from their headers, so
        half-received bodies too) get `timeout` seconds; then idle connections are closed."""
        assert self.server is not None
        self.server.stop()
        if not await self.tracker.wait_idle(timeout):
            log.warning("%d requests still in flight after %.0fs; closing them",
                        self.tracker.in_flight, timeout)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.server.close_all_connections(), 5)
