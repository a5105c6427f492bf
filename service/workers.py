"""`WORKERS=N`: N server processes accepting on one port, so that every core serves requests.

    code = run_workers(config, serve_one)   # in the parent; returns the exit code

The parent brings the schema up to date (once, before any worker opens the database), binds
the listening socket, and forks N workers that share it (the kernel hands each new connection
to one of them). Each worker is a whole server (`serve_one(worker_config(config, i), sockets)`):
signed requests, webhooks, tasks and its own installation index, which follows the other
workers' writes as it follows other replicas' (`REPLICA_POLL_SECONDS`). Only worker 0 runs the
scheduler (and with it the Install API reconciliation), so the schedule is not multiplied.

SIGTERM or SIGINT to the parent is passed to every worker, each drains as a single process does
(`service/server.py`), and the parent exits 0 once all have exited 0. A worker that exits on its
own (a crash, a failed start) stops the others too, and the parent exits 1, for the supervisor
(systemd, Docker) to restart the whole.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
from collections.abc import Callable

from tornado.netutil import bind_sockets

from models.db import open_database
from models.migrate import migrate
from service.config import Config

log = logging.getLogger("app.workers")

_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def worker_config(config: Config, index: int) -> Config:
    """The configuration of worker `index`: the scheduler only in worker 0."""
    return dataclasses.replace(config, workers=1, scheduler=config.scheduler and index == 0)


def run_workers(config: Config, serve_one: Callable[[Config, list[socket.socket]], int]) -> int:
    db = open_database(config.database_url)
    try:
        applied = migrate(db)
    finally:
        db.close()
    if applied:
        log.info("database brought up to date: %s", ", ".join(applied))
    sockets = bind_sockets(config.port, config.host, backlog=1024)
    # No signal may arrive between two forks with nobody to pass it on: block them until the
    # parent's handlers are in place (each worker unblocks them at once).
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    workers: dict[int, int] = {}
    for index in range(config.workers):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
                code = serve_one(worker_config(config, index), sockets)
            finally:
                os._exit(code)
        workers[pid] = index
    port = sockets[0].getsockname()[1]
    for sock in sockets:
        sock.close()  # the workers hold it; the parent accepts nothing
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in workers:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    for sig in _SIGNALS:
        signal.signal(sig, stop)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
    log.info("%d workers started on %s:%s", len(workers), config.host, port)
    failed = False
    while workers:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        index = workers.pop(pid, -1)
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            failed = True
            if not stopping:
                log.error("worker %s exited with %d; stopping the others", index, code)
                stop(signal.SIGTERM, None)
    return 1 if failed else 0
