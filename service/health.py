"""Operations endpoints: `GET /healthz` and `GET /metrics`. No CORS, no signature.

`/healthz` (GET or HEAD) answers 200 when the database answers and takes writes, with the state
of each part: `{"status": "ok"|"degraded"|"unavailable", "database": {...}, ...}`.
503 and `unavailable` when the database does not answer; 503 and `degraded` when it answers
but refuses writes (`"database": {"ok": true, "writable": false, "write_error": ...,
"refusing_writes_since": ...}`: read-only file, full disk), as webhooks then answer 503 too.
Writability is learned from real writes (models/writability.py): a health check writes
nothing, except one cheap probe per 30 s while writes are known to fail, to see a recovery.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import peewee as pw

from models.db import UNAVAILABLE
from models.enums import MODES
from service.base import BaseHandler

PING_TIMEOUT = 2.0


class HealthHandler(BaseHandler):
    SUPPORTED_METHODS = ("GET", "HEAD")

    async def get(self) -> None:
        started = time.perf_counter()
        try:
            await asyncio.wait_for(self.storage.ping(), PING_TIMEOUT)
            latency = round((time.perf_counter() - started) * 1e3, 2)
            database: dict[str, Any] = {"ok": True, "latency_ms": latency}
        except (TimeoutError, *UNAVAILABLE) as exc:
            database = {"ok": False, "error": type(exc).__name__}
        writes = self.storage.writes
        if database["ok"] and writes.probe_due():
            with contextlib.suppress(TimeoutError, pw.PeeweeException):
                await asyncio.wait_for(self.storage.probe_write(), PING_TIMEOUT)
        if database["ok"]:
            database.update(writes.state())
        scheduler = self.scheduler.state() if self.scheduler else {"running": False,
                                                                  "enabled": False}
        ok = database["ok"] and database["writable"]
        self.write_json({
            "status": "ok" if ok else "degraded" if database["ok"] else "unavailable",
            "database": database,
            "scheduler": scheduler,
            "installations": {m: self.installations.count_active(m) for m in MODES},
            "in_flight": self.tracker.in_flight,
        }, status=200 if ok else 503)

    async def head(self) -> None:  # the same status, without the body (Tornado drops it)
        await self.get()


class MetricsHandler(BaseHandler):
    SUPPORTED_METHODS = ("GET",)

    def get(self) -> None:
        metrics = self.metrics
        metrics.in_flight.set(self.tracker.in_flight)
        metrics.db_pending.set(self.storage.backlog)
        for mode in MODES:
            metrics.installations.labels(mode).set(self.installations.count_active(mode))
        if self.scheduler:
            metrics.scheduled_jobs.set(self.scheduler.job_count())
        self.set_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.finish(metrics.exposition())
