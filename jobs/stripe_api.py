"""Stripe API clients for per-account calls: the mode's platform key, `Stripe-Account`, limits.

`StripeClients.for_account(account, mode)` returns a `stripe.StripeClient` bound to the account,
pointed at `STRIPE_API_BASE` when set, with network retries on (connection errors, 409 and 5xx,
with the library's jittered backoff). Every request names the account one way, never both:
`Stripe-Context: <context>` when the installation has a context (an organization's, learnt from
a signed event: `models/context.py`; `contexts` looks it up), else `Stripe-Account: <acct>`.
All clients of one mode share one HTTP client, which

- spaces requests to stay under `STRIPE_RATE_LIMIT_<MODE>` calls per second (Stripe's own
  limits are 100/s live and 25/s test; the library does not enforce them), and
- backs off on 429 with exponential delay and full jitter (or `Retry-After`), which the library
  does not retry at all.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import stripe

from models.backoff import Jitter, backoff_delay

log = logging.getLogger("app.stripe")

STRIPE_API = "https://api.stripe.com"


class MissingKey(RuntimeError):
    """No platform secret key is configured for this mode."""


class RateLimiter:
    """At most `rate` acquisitions in any sliding one-second window, first come first served.

    Counted when a request is actually sent, so a busy event loop that wakes several waiters
    late cannot bunch them into a burst above the limit. `guard` widens the window slightly,
    so that network jitter cannot make the far end count one call too many.
    """

    def __init__(self, rate: float, guard: float = 0.05) -> None:
        window = max(1.0, 1.0 / rate)
        self.capacity = max(1, round(rate * window))
        self.window = window + guard
        self._sent: deque[float] = deque()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        loop = asyncio.get_running_loop()
        async with self._lock:
            while True:
                now = loop.time()
                while self._sent and self._sent[0] <= now - self.window:
                    self._sent.popleft()
                if len(self._sent) < self.capacity:
                    self._sent.append(now)
                    return
                await asyncio.sleep(self._sent[0] + self.window - now)


class LimitedHTTPClient(stripe.HTTPXClient):
    """The library's httpx client, rate limited, and retrying 429 with jittered backoff."""

    def __init__(self, limiter: RateLimiter, *, retries_429: int = 5, base_delay: float = 0.5,
                 max_delay: float = 30.0, on_response: Callable[[int], None] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.limiter = limiter
        self.retries_429 = retries_429
        self.base_delay, self.max_delay = base_delay, max_delay
        self.on_response = on_response

    def backoff(self, attempt: int, headers: Mapping[str, str] | None) -> float:
        """The wait before 429 retry `attempt` (0-based): `Retry-After` (at most `max_delay`)
        plus up to `base_delay`, or else full jitter below min(max_delay, base_delay * 2 ** n)."""
        retry_after = (headers or {}).get("retry-after")
        if retry_after:
            try:
                return min(self.max_delay, float(retry_after)) + random.uniform(0, self.base_delay)
            except ValueError:
                pass
        return backoff_delay(attempt, first=self.base_delay, cap=self.max_delay,
                             jitter=Jitter.FULL)

    async def request_async(self, method: str, url: str, headers: Mapping[str, str],
                            post_data: Any = None) -> tuple[bytes, int, Mapping[str, str]]:
        attempt = 0
        while True:
            await self.limiter.acquire()
            content, status, rheaders = await super().request_async(method, url, headers,
                                                                    post_data)
            if self.on_response:
                self.on_response(status)
            if status != 429 or attempt >= self.retries_429:
                return content, status, rheaders
            delay = self.backoff(attempt, rheaders)
            attempt += 1
            log.info("429 from Stripe for %s %s; retry %d in %.2fs", method, url, attempt, delay)
            await asyncio.sleep(delay)


class StripeClients:
    def __init__(self, secret_keys: Mapping[str, str | None], rate_limits: Mapping[str, float],
                 api_base: str | None = None, max_network_retries: int = 3,
                 on_response: Callable[[str, int], None] | None = None,
                 base_delay: float = 0.5,
                 contexts: Callable[[str, str], str | None] | None = None) -> None:
        """`contexts(account, mode)`: the installation's `Stripe-Context`, None for none (the
        installation index's `context_of`)."""
        self.secret_keys = secret_keys
        self.contexts = contexts
        self.api_base = api_base or STRIPE_API
        self.max_network_retries = max_network_retries
        self._http: dict[str, LimitedHTTPClient] = {}
        for mode, rate in rate_limits.items():
            callback = (lambda status, m=mode: on_response(m, status)) if on_response else None
            self._http[mode] = LimitedHTTPClient(RateLimiter(rate), on_response=callback,
                                                 base_delay=base_delay, timeout=30)

    def for_platform(self, mode: str) -> stripe.StripeClient:
        """A client for the platform's own account (no `Stripe-Account`): the Install API."""
        return self.for_account(None, mode)

    def for_account(self, account_id: str | None, mode: str) -> stripe.StripeClient:
        """A client for `account_id` in `mode` (None: the platform's own account): with
        `Stripe-Context` when the installation has a context, else `Stripe-Account`."""
        key = self.secret_keys.get(mode)
        if not key:
            raise MissingKey(f"STRIPE_SECRET_KEY_{mode.upper()} is not configured")
        context = (self.contexts(account_id, mode)
                   if account_id is not None and self.contexts is not None else None)
        return stripe.StripeClient(
            key, stripe_account=None if context else account_id, stripe_context=context,
            base_addresses={"api": self.api_base},
            max_network_retries=self.max_network_retries, http_client=self._http[mode])

    async def close(self) -> None:
        for client in self._http.values():
            await client.close_async()
