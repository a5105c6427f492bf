"""Requests in flight, for graceful shutdown.

A request counts from the moment its headers arrive (handlers stream their bodies, so
`prepare` runs then) until its answer is finished or its connection closes.
"""

from __future__ import annotations

import asyncio
import time


class RequestTracker:
    def __init__(self) -> None:
        self._active: set[int] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def in_flight(self) -> int:
        return len(self._active)

    def begin(self, handler: object) -> None:
        self._active.add(id(handler))
        self._idle.clear()

    def end(self, handler: object) -> None:
        self._active.discard(id(handler))
        if not self._active:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is in flight; False if `timeout` ran out first."""
        deadline = time.monotonic() + timeout
        while self._active:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self._idle.wait(), remaining)
            except TimeoutError:
                return False
        return True
