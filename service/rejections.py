"""The log of rejected webhook deliveries: what `POST /webhooks` refused (400), kept for the
status page in `models/rejected_webhooks.py`'s bounded table.

    rejections = RejectionLog(storage)          # one per application (service/app.py)
    rejections.record(request, "bad_signature: no signature matched")   # on the loop

A sender can make rejections as fast as it can send, so recording one must cost little and
never make the database the bottleneck:

- on the loop, `record` copies a bounded part of the request (at most `MAX_HEADERS` headers,
  each name and value cut at `MAX_HEADER_CHARS`; the first `BODY_BYTES` of the body) into a
  buffer that holds at most `KEEP` rows (the oldest is dropped first: the table keeps only the
  newest `KEEP` anyway, so nothing it would show is lost);
- the buffer is written in one transaction (insert, then prune the table to `KEEP`), at most
  once every `WRITE_SECONDS`, by one write at a time: under a flood of bad deliveries the
  database sees one small transaction a second. The first rejection after a quiet second is
  written at once.
Rows still buffered when the process stops are not written (they are diagnostics).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from tornado import httputil

from models.db import Storage
from models.rejected_webhooks import BODY_BYTES, KEEP, record_rejections

log = logging.getLogger("app.webhooks")

MAX_HEADERS = 64
MAX_HEADER_CHARS = 1024
WRITE_SECONDS = 1.0


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


class RejectionLog:
    def __init__(self, storage: Storage, keep: int = KEEP, write_seconds: float = WRITE_SECONDS,
                 clock: Callable[[], float] = time.time) -> None:
        self.storage = storage
        self.keep = keep
        self.write_seconds = write_seconds
        self.clock = clock
        self.pending: deque[dict[str, Any]] = deque(maxlen=keep)
        #: rows dropped from the buffer before they were written (a flood)
        self.dropped = 0
        self._timer: asyncio.TimerHandle | None = None
        self._writing: asyncio.Task[None] | None = None
        self._next_write = 0.0

    def record(self, request: httputil.HTTPServerRequest, reason: str) -> None:
        """Keep this rejected request (bounded), to be written soon."""
        headers = [[_cut(name, MAX_HEADER_CHARS), _cut(value, MAX_HEADER_CHARS)]
                   for name, value in list(request.headers.get_all())[:MAX_HEADERS]]
        body = request.body or b""
        if len(self.pending) == self.keep:
            self.dropped += 1
        self.pending.append({
            "received_at": self.clock(), "reason": _cut(reason, 500),
            "remote": (request.remote_ip or "")[:64] or None,
            "headers": json.dumps(headers, ensure_ascii=False),
            "body": body[:BODY_BYTES].decode("utf-8", "backslashreplace"),
            "body_size": len(body)})
        self._schedule()

    def _schedule(self) -> None:
        if self._timer is not None or self._writing is not None or not self.pending:
            return
        loop = asyncio.get_running_loop()
        delay = max(0.0, self._next_write - loop.time())
        self._timer = loop.call_later(delay, self._start_write)

    def _start_write(self) -> None:
        self._timer = None
        rows = list(self.pending)
        self.pending.clear()
        loop = asyncio.get_running_loop()
        self._next_write = loop.time() + self.write_seconds
        self._writing = loop.create_task(self._write(rows))

    async def _write(self, rows: list[dict[str, Any]]) -> None:
        try:
            await self.storage.run(record_rejections, rows, self.keep)
        except Exception as exc:  # the database may be down: these are diagnostics
            log.warning("could not store %d rejected webhook deliveries: %s", len(rows),
                        type(exc).__name__)
        finally:
            self._writing = None
            self._schedule()

    async def idle(self) -> None:
        """Wait until nothing is buffered or being written (tests)."""
        while self._timer is not None or self._writing is not None or self.pending:
            if self._writing is not None:
                await asyncio.shield(self._writing)
            else:
                await asyncio.sleep(0.01)
