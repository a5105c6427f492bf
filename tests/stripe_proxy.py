"""A small recording proxy in front of the localstripe emulator, for tests.

It records every request's method, path and headers (so a test can see the `Stripe-Account`
header and the API key that reached "Stripe"), and can be told to answer the next requests
with an error status (429, 500, 401, ...) before forwarding again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import httpx
import tornado.web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    at: float
    status: int = 0


@dataclass
class ProxyState:
    upstream: str
    seen: list[Seen] = field(default_factory=list)
    failures: list[tuple[int, dict]] = field(default_factory=list)  # (status, error body)
    delay: float = 0.0


class ProxyHandler(tornado.web.RequestHandler):
    SUPPORTED_METHODS = ("GET", "POST", "DELETE")

    def initialize(self, state: ProxyState, client: httpx.AsyncClient) -> None:
        self.state, self.client = state, client

    async def _any(self) -> None:
        seen = Seen(self.request.method, self.request.path,
                    {k.lower(): v for k, v in self.request.headers.items()}, time.time())
        self.state.seen.append(seen)
        if self.state.failures:
            status, error = self.state.failures.pop(0)
            seen.status = status
            self.set_status(status)
            if status == 429:
                self.set_header("Retry-After", "0")
            self.finish({"error": error})
            return
        resp = await self.client.request(
            self.request.method, self.state.upstream + self.request.uri,
            content=self.request.body or None,
            headers={k: v for k, v in self.request.headers.items()
                     if k.lower() in ("authorization", "content-type", "stripe-account")})
        seen.status = resp.status_code
        self.set_status(resp.status_code)
        self.set_header("Content-Type", resp.headers.get("content-type", "application/json"))
        self.finish(resp.content)

    get = post = delete = _any


class StripeProxy:
    def __init__(self, upstream: str) -> None:
        self.state = ProxyState(upstream)
        self.client = httpx.AsyncClient(timeout=10)
        app = tornado.web.Application([(r"/.*", ProxyHandler,
                                        {"state": self.state, "client": self.client})])
        sockets = bind_sockets(0, "127.0.0.1")
        self.port = sockets[0].getsockname()[1]
        self.server = HTTPServer(app)
        self.server.add_sockets(sockets)
        self.url = f"http://127.0.0.1:{self.port}"

    @property
    def seen(self) -> list[Seen]:
        return self.state.seen

    def fail_next(self, status: int, times: int = 1, type_: str = "api_error") -> None:
        for _ in range(times):
            self.state.failures.append((status, {"type": type_, "message": f"forced {status}"}))

    async def close(self) -> None:
        self.server.stop()
        await self.client.aclose()
