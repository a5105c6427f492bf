"""The process, served: `serve` starts every step of `service.services.Services`, waits for
SIGTERM or SIGINT, and stops it gracefully, the steps in reverse.

    backend = Backend(config)
    await backend.start()        # database, installations, integrations, jobs, scheduler,
                                 # replica, background, app, HTTP: `Services.steps()`
    await backend.stop()         # stop accepting, drain requests, stop jobs, close database

Shutdown (SIGTERM/SIGINT in `serve`): the listening socket closes at once; requests in flight
(counted from their headers, so half-received bodies too) get up to `SHUTDOWN_TIMEOUT` seconds;
then idle connections are closed, the background loops end, the scheduler stops (running jobs
get the same grace), then the task worker and event processing, and the Stripe clients and
the database close. `Backend` is `Services`, the one graph the CLI and tests start too (the
CLI a prefix of its steps); the name is the one launchers and tests use for the whole process.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

from models.db import UNAVAILABLE
from service.config import Config
from service.doctor import log_findings
from service.services import Services, StartupError

__all__ = ["Backend", "StartupError", "serve"]

log = logging.getLogger("app.server")

#: The whole process: every step of `Services`.
Backend = Services


async def serve(config: Config, reuse_port: bool = False, **kwargs: Any) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully (`reuse_port`: listen with
    `SO_REUSEPORT`, as each of `service/workers.py`'s workers does). A step that fails at
    start-up has undone the ones before it; the error is a `StartupError`."""
    backend = Backend(config, reuse_port=reuse_port, **kwargs)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await backend.start()
    except UNAVAILABLE as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise StartupError(f"the database (DATABASE_URL) is not reachable: {first}") from None
    # The configuration doctor, as log lines, after readiness (service/doctor.py).
    doctor = loop.create_task(log_findings(backend.app.settings["doctor"], config,
                                           backend.storage, backend.registry))
    await stop.wait()
    doctor.cancel()
    log.info("shutting down")
    await backend.stop()
