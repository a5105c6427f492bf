"""The process: start-up as small `init_*` steps, and a graceful shutdown in reverse.

    backend = Backend(config)
    await backend.start()        # database, installations, jobs, app, HTTP, background tasks
    await backend.stop()         # stop accepting, drain requests, stop jobs, close database

Shutdown (SIGTERM/SIGINT in `serve`): the listening socket closes at once; requests in flight
(counted from their headers, so half-received bodies too) get up to `SHUTDOWN_TIMEOUT` seconds;
then idle connections are closed, the scheduler stops (running jobs get the same grace), the
Stripe clients and the database close. The database, installations, jobs and Stripe clients
are `service.services.Services`, the graph the CLI and tests build the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import resource
import signal
import socket
import time
from typing import Any

import httpx
import tornado.web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from jobs.credentials import Vault
from jobs.events import EventProcessor
from jobs.installs import InstallSync
from jobs.oauth import OAuthProviders
from jobs.registry import Registry
from jobs.runner import JobRunner
from jobs.scheduler import JobScheduler
from jobs.stripe_api import StripeClients
from jobs.task_worker import TaskWorker
from models.db import UNAVAILABLE, Storage
from models.installation_index import InstallationIndex
from models.replicas import HEARTBEAT_SECONDS, heartbeat
from models.retention import prune_forever
from service.app import make_app
from service.config import Config
from service.connections import (
    HEADER_TIMEOUT,
    RESERVED_FILES,
    BoundedHTTPServer,
    raise_file_limit,
)
from service.doctor import log_findings
from service.loops import running_loop_name
from service.services import Services
from service.status import version
from service.tracker import RequestTracker

log = logging.getLogger("app.server")


class StartupError(RuntimeError):
    """The service cannot start; the message says why, for a person (no traceback)."""


class Backend:
    def __init__(self, config: Config, registry: Registry | None = None,
                 extra_routes: list[tuple[str, type]] | None = None,
                 oauth: OAuthProviders | None = None,
                 header_timeout: float = HEADER_TIMEOUT) -> None:
        self.config = config
        self.header_timeout = header_timeout
        self.services = Services(config, registry=registry, oauth=oauth)
        self.registry = self.services.registry
        self.metrics = self.services.metrics
        self.extra_routes = extra_routes
        self.tracker = RequestTracker()
        self.server: HTTPServer | None = None
        self.port: int | None = None
        self._background: list[asyncio.Task[Any]] = []

    # The parts of the graph that handlers, tests and shutdown reach through the backend.
    @property
    def storage(self) -> Storage:
        return self.services.storage

    @property
    def installations(self) -> InstallationIndex:
        return self.services.installations

    @property
    def clients(self) -> StripeClients:
        return self.services.clients

    @property
    def runner(self) -> JobRunner:
        return self.services.runner

    @property
    def events(self) -> EventProcessor:
        return self.services.events

    @property
    def scheduler(self) -> JobScheduler | None:
        return self.services.scheduler

    @property
    def install_sync(self) -> InstallSync | None:
        return self.services.install_sync

    @property
    def task_worker(self) -> TaskWorker:
        return self.services.task_worker

    @property
    def vault(self) -> Vault:
        return self.services.vault

    @property
    def http(self) -> httpx.AsyncClient:
        return self.services.http

    # ---- start-up -------------------------------------------------------------------------
    async def start(self, reuse_port: bool = False) -> None:
        for line in self.config.disabled_features():
            log.info("%s", line)
        try:
            await self.init_database()
        except UNAVAILABLE as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise StartupError(f"the database (DATABASE_URL) is not reachable: {first}") from None
        await self.init_installations()
        await self.init_replica()
        self.init_integrations()
        self.init_jobs()
        self.init_app()
        self.init_http(reuse_port)
        self.init_background()
        # Everything built so far (100,000 scheduled jobs and installations, say) lives as long
        # as the process: keep it out of the cyclic collector's full passes, which would
        # otherwise stall the event loop for tens of milliseconds each.
        gc.collect()
        gc.freeze()
        log.info("listening on http://%s:%s (event loop: %s)", self.config.host, self.port,
                 running_loop_name())

    async def init_database(self) -> None:
        applied = await self.services.open_storage()
        if applied:
            log.info("database brought up to date: %s", ", ".join(applied))

    async def init_installations(self) -> None:
        active = await self.services.load_installations()
        log.info("%d accounts have the app installed", active)

    async def init_replica(self) -> None:
        """Write this process's first heartbeat before it listens, so a replica is in the
        table for as long as it serves (the later beats come from `_heartbeat_forever`)."""
        host, pid = socket.gethostname(), os.getpid()
        self._replica = (self.services.replica or f"{host}:{pid}", host, pid, time.time())
        await self._heartbeat()

    async def _heartbeat(self) -> None:
        name, host, pid, started = self._replica
        try:
            await self.storage.run(heartbeat, name, host, pid, version(), started)
        except Exception as exc:  # the database may be down; say so next time
            log.debug("heartbeat failed: %s", type(exc).__name__)

    def init_integrations(self) -> None:
        """The credentials vault and `ctx.http`, the shared client for third-party calls."""
        for line in self.services.oauth.disabled():
            log.info("%s", line)
        self.services.open_integrations()

    def init_jobs(self) -> None:
        self.services.start_jobs(scheduler=self.config.scheduler)

    def init_app(self) -> None:
        self.app: tornado.web.Application = make_app(
            self.config, self.storage, self.scheduler, installations=self.installations,
            events=self.events, registry=self.registry, metrics=self.metrics,
            tracker=self.tracker, extra_routes=self.extra_routes, task_worker=self.task_worker,
            vault=self.vault, header_timeout=self.header_timeout,
            install_sync=self.install_sync)

    def init_http(self, reuse_port: bool = False) -> None:
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
        self.server = BoundedHTTPServer(
            self.app, max_body_size=1 << 40,
            max_connections=self.config.max_connections, metrics=self.metrics)
        try:
            sockets = bind_sockets(self.config.port, self.config.host, backlog=1024,
                                   reuse_port=reuse_port)
        except OSError as exc:
            raise StartupError(f"cannot listen on {self.config.host}:{self.config.port}: "
                               f"{exc.strerror}") from None
        self.server.add_sockets(sockets)
        self.port = sockets[0].getsockname()[1]

    def init_background(self) -> None:
        loop = asyncio.get_running_loop()
        self._background.append(loop.create_task(self.metrics.measure_loop_lag()))
        self._background.append(loop.create_task(self._follow_replicas()))
        self._background.append(loop.create_task(
            prune_forever(self.storage, self.config.retention_days)))
        self.events.start()
        self.task_worker.start()
        if self.scheduler:
            self._background.append(loop.create_task(self.scheduler.catch_up()))
        if self.scheduler and self.install_sync and self.config.install_sync:
            self._background.append(loop.create_task(self.install_sync.run_forever()))
        self._background.append(loop.create_task(self._heartbeat_forever()))

    async def _heartbeat_forever(self) -> None:
        """Say in the database that this process is alive (the status page's replicas)."""
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            await self._heartbeat()

    async def _follow_replicas(self) -> None:
        while True:
            await asyncio.sleep(self.config.replica_poll_seconds)
            try:
                await self.installations.refresh()
            except Exception as exc:
                log.warning("could not re-read installations: %s", type(exc).__name__)

    # ---- shutdown -------------------------------------------------------------------------
    async def stop(self) -> None:
        timeout = self.config.shutdown_timeout
        if self.server is not None:
            self.server.stop()
            if not await self.tracker.wait_idle(timeout):
                log.warning("%d requests still in flight after %.0fs; closing them",
                            self.tracker.in_flight, timeout)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.close_all_connections(), 5)
        for task in self._background:
            task.cancel()
        await self.services.close(timeout)
        log.info("stopped")


async def serve(config: Config, reuse_port: bool = False, **kwargs: Any) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully (`reuse_port`: listen with
    `SO_REUSEPORT`, as each of `service/workers.py`'s workers does)."""
    backend = Backend(config, **kwargs)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await backend.start(reuse_port)
    except StartupError:
        await backend.stop()
        raise
    # The configuration doctor, as log lines, after readiness (service/doctor.py).
    doctor = loop.create_task(log_findings(backend.app.settings["doctor"], config,
                                           backend.storage, backend.registry))
    await stop.wait()
    doctor.cancel()
    log.info("shutting down")
    await backend.stop()
