"""Operations endpoints: `GET /healthz` and `GET /metrics`. No CORS, no signature.

`/healthz` (GET or HEAD) answers 200 when the database answers and 503 when it does not, with the
state of each part: `{"status": "ok"|"unavailable", "database": {...}, "scheduler": {...}, ...}`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from models.db import UNAVAILABLE
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
        scheduler = self.scheduler.state() if self.scheduler else {"running": False,
                                                                  "enabled": False}
        ok = database["ok"]
        self.write_json({
            "status": "ok" if ok else "unavailable",
            "database": database,
            "scheduler": scheduler,
            "installations": {m: self.installations.count_active(m) for m in ("live", "test")},
            "in_flight": self.tracker.in_flight,
        }, status=200 if ok else 503)

    async def head(self) -> None:  # the same status, without the body (Tornado drops it)
        await self.get()


class MetricsHandler(BaseHandler):
    SUPPORTED_METHODS = ("GET",)

    def get(self) -> None:
        metrics = self.metrics
        metrics.in_flight.set(self.tracker.in_flight)
        metrics.db_pending.set(self.storage.pending)
        for mode in ("live", "test"):
            metrics.installations.labels(mode).set(self.installations.count_active(mode))
        if self.scheduler:
            metrics.scheduled_jobs.set(self.scheduler.job_count())
        self.set_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.finish(metrics.exposition())
