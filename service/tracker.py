"""Requests in flight, for graceful shutdown.

A request counts from the moment its headers arrive until it is answered or its connection
closes; both ends are in `service/guard.py`. Requests are keyed by their HTTP connection object,
which Tornado makes anew for each request.
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

    def begin(self, request: object) -> None:
        self._active.add(id(request))
        self._idle.clear()

    def end(self, request: object) -> None:
        self._active.discard(id(request))
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
