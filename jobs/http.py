"""`ctx.http`: one `httpx.AsyncClient` per process for calls to third-party systems.

    client = make_http_client()       # the Backend does this once, and closes it on shutdown
    resp = await ctx.http.get("https://api.example.com/v1/things", headers={...})

What it adds to a bare client, so that a job or handler needs no hand-written one:
- timeouts: 10 s to connect, 30 s to read, write or wait for a pooled connection;
- retries (the `httpx-retries` transport): a connection that could not be made is retried for
  every method (nothing was sent); a timeout, a dropped connection, a 429 or a 5xx is retried for
  idempotent methods only (GET, HEAD, PUT, DELETE, OPTIONS, TRACE: a POST may already have had
  its effect), up to `RETRIES` times with exponential backoff and full jitter, honouring
  `Retry-After`; after the last try the caller gets the last answer (check its status);
- a `User-Agent` naming this backend, and a bounded connection pool.
"""

from __future__ import annotations

import httpx
from httpx_retries import Retry, RetryTransport

USER_AGENT = "stripe-app-backend/0.1 (self-hosted Stripe App backend)"
RETRIES = 3
RETRY_STATUSES = (429, 500, 502, 503, 504)
TIMEOUT = httpx.Timeout(30.0, connect=10.0)
LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)


def retry_policy(retries: int = RETRIES, backoff: float = 0.5) -> Retry:
    """Idempotent methods, on 429/5xx, timeouts and dropped connections, with jittered backoff."""
    return Retry(total=retries, backoff_factor=backoff, status_forcelist=RETRY_STATUSES,
                 max_backoff_wait=30.0)


def make_http_client(*, retries: int = RETRIES, backoff: float = 0.5,
                     user_agent: str = USER_AGENT,
                     timeout: httpx.Timeout = TIMEOUT) -> httpx.AsyncClient:
    """The process's client for third-party calls (close it with `await client.aclose()`)."""
    # `retries=` of httpx's own transport covers connection errors only (for every method);
    # the wrapper adds status codes and the other transient errors for idempotent methods.
    inner = httpx.AsyncHTTPTransport(retries=retries, limits=LIMITS)
    transport = RetryTransport(transport=inner, retry=retry_policy(retries, backoff))
    return httpx.AsyncClient(transport=transport, timeout=timeout,
                             headers={"User-Agent": user_agent}, follow_redirects=False)
