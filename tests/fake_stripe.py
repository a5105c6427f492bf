"""A small Stripe stand-in on loopback, for what localstripe lacks (the doctor's checks).

It answers `GET /v1/balance` (the key's `livemode`, or 401 for an unknown key) and
`GET /v1/webhook_endpoints` (the endpoints registered for the key's mode), stamps every answer
with a `Request-Id` as Stripe does, and sends a `Date` header `clock_offset` seconds off.
"""

from __future__ import annotations

import email.utils
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import tornado.web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets


@dataclass
class FakeStripe:
    keys: dict[str, bool] = field(default_factory=dict)  # key -> livemode
    endpoints: dict[bool, list[dict[str, Any]]] = field(
        default_factory=lambda: {True: [], False: []})
    clock_offset: float = 0.0
    url: str = ""
    server: HTTPServer | None = None

    def endpoint(self, url: str, livemode: bool = False, connect: bool = True,
                 events: list[str] | None = None, status: str = "enabled") -> dict[str, Any]:
        e = {"id": "we_" + uuid.uuid4().hex[:16], "object": "webhook_endpoint", "url": url,
             "connect": connect, "livemode": livemode, "status": status,
             "enabled_events": events if events is not None else ["*"]}
        self.endpoints[livemode].append(e)
        return e

    def start(self) -> str:
        app = tornado.web.Application([
            (r"/v1/balance", _Balance, {"fake": self}),
            (r"/v1/webhook_endpoints", _Endpoints, {"fake": self}),
        ])
        sockets = bind_sockets(0, "127.0.0.1")
        self.server = HTTPServer(app)
        self.server.add_sockets(sockets)
        self.url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
        return self.url

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


class _Base(tornado.web.RequestHandler):
    def initialize(self, fake: FakeStripe) -> None:
        self.fake = fake

    def prepare(self) -> None:
        self.set_header("Request-Id", "req_" + uuid.uuid4().hex[:14])
        self.set_header("Date", email.utils.formatdate(time.time() + self.fake.clock_offset,
                                                       usegmt=True))
        key = self.request.headers.get("Authorization", "").removeprefix("Bearer ")
        if key not in self.fake.keys:
            self.set_status(401)
            self.answer({"error": {"type": "invalid_request_error",
                                   "message": "Invalid API Key provided"}})
            return
        self.livemode = self.fake.keys[key]

    def answer(self, body: dict[str, Any]) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))


class _Balance(_Base):
    def get(self) -> None:
        self.answer({"object": "balance", "livemode": self.livemode, "available": [],
                     "pending": []})


class _Endpoints(_Base):
    def get(self) -> None:
        data = self.fake.endpoints[self.livemode]
        self.answer({"object": "list", "url": "/v1/webhook_endpoints", "has_more": False,
                     "data": data})
