"""Throttling of wrong operator tokens (the status page's log-in form and bearer requests).

    throttle = LoginThrottle()               # one per process (make_app's `login_throttle`)
    wait = throttle.wait(client)             # seconds before `client` may try a token; 0: now
    throttle.failed(client)                  # a wrong token from `client`

Two token buckets (`Bucket`): one per client address and one for the whole process. Every wrong
token takes one token from both; a token may be tried only while both hold one. So a client
gets `PER_CLIENT` tries at once and then one every `PER_CLIENT_EVERY` seconds, and all clients
together `OVERALL` tries at once and then one every `OVERALL_EVERY` seconds. While throttled,
no token is checked at all, the right one included (the answer is 429 with `Retry-After`), so
a guesser learns nothing. With `WORKERS=N` each process has its own buckets (N times the
rate); behind a proxy every client has the proxy's address, so the per-client bucket is shared.

Only clients with spent tokens are remembered: a bucket that has filled up again is forgotten,
so the table holds at most the clients of the last few minutes' failures, which the overall
bucket bounds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

#: Wrong tokens a client may send at once, then one every this many seconds.
PER_CLIENT, PER_CLIENT_EVERY = 5, 12.0
#: Wrong tokens all clients of this process may send at once, then one every this many seconds.
OVERALL, OVERALL_EVERY = 30, 2.0


@dataclass
class Bucket:
    """`capacity` tokens, refilled at one per `every` seconds, as of `at`."""

    capacity: int
    every: float
    tokens: float
    at: float

    def level(self, now: float) -> float:
        return min(self.capacity, self.tokens + (now - self.at) / self.every)

    def wait(self, now: float) -> float:
        """Seconds until the bucket holds one token (0 when it does now)."""
        return max(0.0, (1 - self.level(now)) * self.every)

    def take(self, now: float) -> None:
        self.tokens, self.at = max(0.0, self.level(now) - 1), now


class LoginThrottle:
    """Token buckets of wrong operator tokens, per client and overall, on `clock` (seconds,
    monotonic; a test sets its own)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, *,
                 per_client: tuple[int, float] = (PER_CLIENT, PER_CLIENT_EVERY),
                 overall: tuple[int, float] = (OVERALL, OVERALL_EVERY)) -> None:
        self.clock = clock
        self.per_client = per_client
        self.overall = Bucket(overall[0], overall[1], overall[0], clock())
        self._clients: dict[str, Bucket] = {}

    def wait(self, client: str) -> int:
        """Whole seconds before `client` may try a token (0: now)."""
        now = self.clock()
        bucket = self._clients.get(client)
        seconds = max(self.overall.wait(now), bucket.wait(now) if bucket else 0.0)
        return math.ceil(round(seconds, 6))  # 1.0000000000000009 is 1

    def failed(self, client: str) -> None:
        """`client` sent a wrong token."""
        now = self.clock()
        self._forget_full(now)
        bucket = self._clients.get(client)
        if bucket is None:
            capacity, every = self.per_client
            bucket = self._clients[client] = Bucket(capacity, every, capacity, now)
        bucket.take(now)
        self.overall.take(now)

    @property
    def clients(self) -> int:
        """Clients remembered (whose bucket is not full)."""
        return len(self._clients)

    def _forget_full(self, now: float) -> None:
        if len(self._clients) >= 64:
            self._clients = {c: b for c, b in self._clients.items()
                             if b.level(now) < b.capacity}
