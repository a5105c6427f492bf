"""A small Stripe stand-in on loopback, for what localstripe lacks (the doctor's checks).

It answers `GET /v1/balance` (the key's `livemode`, or 401 for an unknown key),
`GET /v1/account` (the key owner's account: `accounts[key]`, so that a sandbox's key shows an
account of its own) and `GET /v1/webhook_endpoints` (the endpoints registered for the key, else
for the key's mode), stamps every answer with a `Request-Id` as Stripe does, and sends a `Date`
header `clock_offset` seconds off. Every request is recorded in `requests` (method, path and
headers as they arrived on the wire), so a test can read `Stripe-Account` and `Stripe-Context`.
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


@dataclass(frozen=True)
class Recorded:
    """One request as the fake received it."""

    method: str
    path: str
    headers: dict[str, str]  # names as sent, values as sent


@dataclass
class FakeStripe:
    keys: dict[str, bool] = field(default_factory=dict)  # key -> livemode
    endpoints: dict[bool, list[dict[str, Any]]] = field(
        default_factory=lambda: {True: [], False: []})
    #: Endpoints of one key (a sandbox's: its own endpoints, not test mode's).
    key_endpoints: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    accounts: dict[str, str] = field(default_factory=dict)  # key -> its owner's account id
    clock_offset: float = 0.0
    url: str = ""
    server: HTTPServer | None = None
    requests: list[Recorded] = field(default_factory=list)

    def endpoint(self, url: str, livemode: bool = False, connect: bool = True,
                 events: list[str] | None = None, status: str = "enabled",
                 key: str | None = None) -> dict[str, Any]:
        e = {"id": "we_" + uuid.uuid4().hex[:16], "object": "webhook_endpoint", "url": url,
             "connect": connect, "livemode": livemode, "status": status,
             "enabled_events": events if events is not None else ["*"]}
        if key is not None:
            self.key_endpoints.setdefault(key, []).append(e)
        else:
            self.endpoints[livemode].append(e)
        return e

    def start(self) -> str:
        app = tornado.web.Application([
            (r"/v1/balance", _Balance, {"fake": self}),
            (r"/v1/account", _Account, {"fake": self}),
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
        self.fake.requests.append(Recorded(self.request.method or "", self.request.path,
                                           dict(self.request.headers.get_all())))
        self.set_header("Request-Id", "req_" + uuid.uuid4().hex[:14])
        self.set_header("Date", email.utils.formatdate(time.time() + self.fake.clock_offset,
                                                       usegmt=True))
        key = self.request.headers.get("Authorization", "").removeprefix("Bearer ")
        if key not in self.fake.keys:
            self.set_status(401)
            self.answer({"error": {"type": "invalid_request_error",
                                   "message": "Invalid API Key provided"}})
            return
        self.key = key
        self.livemode = self.fake.keys[key]

    def answer(self, body: dict[str, Any]) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))


class _Balance(_Base):
    def get(self) -> None:
        self.answer({"object": "balance", "livemode": self.livemode, "available": [],
                     "pending": []})


class _Account(_Base):
    def get(self) -> None:
        self.answer({"object": "account", "id": self.fake.accounts.get(self.key, "acct_platform")})


class _Endpoints(_Base):
    def get(self) -> None:
        data = self.fake.key_endpoints.get(self.key, self.fake.endpoints[self.livemode])
        self.answer({"object": "list", "url": "/v1/webhook_endpoints", "has_more": False,
                     "data": data})
