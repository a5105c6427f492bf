"""`WORKERS=N`: N server processes accepting on one port, so that every core serves requests.

    code = run_workers(config, serve_one)   # in the parent; returns the exit code

The parent brings the schema up to date (once, before any worker opens the database), reserves
the port (a socket bound with `SO_REUSEPORT` but not listening: it holds the port, picks one
for `PORT=0`, and receives no connections), and forks N workers. Each worker binds its own
listening socket on that port with `SO_REUSEPORT` once it is ready to serve (worker 0 after
building its schedule: meanwhile the kernel gives new connections to the others), and the
kernel spreads new connections over the listening sockets by a hash of their addresses.
(With one listening socket shared by all, whichever worker woke first took the connection,
and 32 keep-alive connections could land mostly on one worker: with `bench/processes.py`'s
load, two workers gave 0.99 to 1.50 times one process that way, against 1.22 to 1.66 with a
socket each, in the same runs.)
Each worker is a whole server (`serve_one(worker_config(config, i, port), True)`, listening
with `SO_REUSEPORT`):
signed requests, webhooks, tasks and its own installation index, which follows the other
workers' writes as it follows other replicas' (`REPLICA_POLL_SECONDS`). Only worker 0 runs the
scheduler (and with it the Install API reconciliation), so the schedule is not multiplied.

SIGTERM or SIGINT to the parent is passed to every worker, each drains as a single process does
(`service/server.py`), and the parent exits 0 once all have exited 0. A worker that exits on its
own (a crash, a failed start) stops the others too, and the parent exits 1, for the supervisor
(systemd, Docker) to restart the whole. A parent killed outright (SIGKILL) takes its workers
with it: each gets SIGTERM from the kernel and drains, so none is left holding the port.
Before it reserves the port, the parent checks that nobody listens on it, so a second instance
cannot join the first one's `SO_REUSEPORT` group and share its connections.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import gc
import logging
import os
import signal
import socket
from collections.abc import Callable

from models.migrate import migrate
from service.config import Config, app_packages
from service.services import open_configured_database

log = logging.getLogger("app.workers")

_SIGNALS = {signal.SIGTERM, signal.SIGINT}
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def worker_config(config: Config, index: int, port: int | None = None) -> Config:
    """The configuration of worker `index`: the scheduler only in worker 0; `port`, the one the
    parent reserved (the kernel's pick for `PORT=0`)."""
    return dataclasses.replace(config, workers=1, scheduler=config.scheduler and index == 0,
                               port=config.port if port is None else port)


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to (`host`, `port`) with `SO_REUSEPORT`, not listening: the port stays
    this process's group's (port 0: one the kernel picks) while the workers bind theirs."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)[0]
    # First a bind without SO_REUSEPORT: it fails while anyone listens on the port, including
    # another instance's SO_REUSEPORT group, which a SO_REUSEPORT bind would silently join
    # (the kernel would then split connections between two servers).
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no owner
        probe.bind(address)
        address = (address[0], probe.getsockname()[1], *address[2:])  # port 0: the one we got
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def _die_with_parent(parent: int) -> None:
    """In a worker: get SIGTERM (a graceful drain) when the parent dies, even by SIGKILL, so no
    worker is left serving the port on its own (Linux's PR_SET_PDEATHSIG; elsewhere nothing)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the call above
        os.kill(os.getpid(), signal.SIGTERM)


def run_workers(config: Config, serve_one: Callable[[Config, bool], int]) -> int:
    db = open_configured_database(config)
    try:
        applied = migrate(db, apps=app_packages(config))
    finally:
        db.close()
    if applied:
        log.info("database brought up to date: %s", ", ".join(applied))
    try:
        reserved = reserve_port(config.host, config.port)
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", config.host, config.port, exc.strerror)
        return 1
    port = reserved.getsockname()[1]
    # No signal may arrive between two forks with nobody to pass it on: block them until the
    # parent's handlers are in place (each worker unblocks them at once).
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    workers: dict[int, int] = {}
    parent = os.getpid()
    # Every object the parent holds now (the imported modules, mostly) goes to the collector's
    # permanent generation, which the workers inherit: their collections then never write to
    # those objects' headers, so the pages holding them stay shared instead of being copied
    # into each worker (the gc module's advice for fork without exec).
    gc.collect()
    gc.freeze()
    for index in range(config.workers):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                _die_with_parent(parent)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
                reserved.close()
                code = serve_one(worker_config(config, index, port), True)
            finally:
                os._exit(code)
        workers[pid] = index
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
    # `reserved` stays open until the workers have exited: it keeps the port in this group
    # (and accepts nothing: it never listens).
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
    reserved.close()
    return 1 if failed else 0
