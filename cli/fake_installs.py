"""A small fake of Stripe's Install API (`/v1/apps/installs`), for tests and `run.py dev`.

localstripe has no Install API, so this server answers it and forwards every other request to
an upstream (localstripe) unchanged, or answers 404 without one. It follows the shapes that
stripe-python 16's `stripe.apps.Install` and `client.v1.apps.installs` use:

    GET  /v1/apps/installs                  list: app, account, status, limit (1..100, default
                                            10), starting_after, ending_before; newest first;
                                            {"object": "list", "url", "has_more", "data"}
    POST /v1/apps/installs                  create: `app`, for the `Stripe-Account` account,
                                            with `permissions_granted[]` and
                                            `permissions_pending[]` when given (an install
                                            already there takes the permissions given)
    GET  /v1/apps/installs/{id}             retrieve (404 resource_missing)
    POST /v1/apps/installs/{id}/uninstall   uninstall: the install, `status: "uninstalling"`,
                                            gone from later lists

The mode is the key's: `Authorization: Bearer sk_test_...`/`rk_test_...` sees test installs,
`sk_live_...`/`rk_live_...` live ones; any other key is 401. A key named a sandbox key
(`sandbox_keys`, `--sandbox-key`: the managed sandbox's, a `sk_test_` key like the test one)
sees sandbox installs, which are a list of their own (`livemode: false`, as Stripe's are), as
the managed sandbox's installs are at Stripe. With `Stripe-Account`, a list only shows that
account's installs (as Stripe does for an app developer acting on an account).

Tests drive it in process (`FakeInstalls.add`, `.remove`, `.fail_list_after`); run alone:

    python -m cli.fake_installs --port 0 [--upstream http://127.0.0.1:8420] [--state FILE]
                                [--sandbox-key sk_test_...]

prints the port it bound as its first line. With `--state`, the installs are kept in FILE (JSON,
0600, rewritten on each change, loaded at start), so `run.py dev` restarts with the installs
`run.py simulate` registered. `start(...)` runs it as a child process that exits with its parent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import httpx
import tornado.web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from cli.devtools import PARENT_FLAG, exit_with_parent, start_child
from models.enums import Mode

PATH = "/v1/apps/installs"
INSTALLED_STATUSES = ("installed", "uninstall_failed")


def install_object(account: str, app: str, livemode: bool, *, install_id: str | None = None,
                   status: str = "installed", permissions_granted: list[str] | None = None,
                   permissions_pending: list[str] | None = None,
                   created: int | None = None) -> dict[str, Any]:
    """An `apps.install` object with every field stripe-python 16 declares."""
    pending = list(permissions_pending or [])
    return {
        "id": install_id or "apinst_" + secrets.token_hex(12),
        "object": "apps.install",
        "account": account,
        "app": app,
        "approval_required": bool(pending),
        "auth_code": None,
        "channel": "public",
        "content_security_policy_granted": {"connect_src": [], "image_src": []},
        "content_security_policy_pending": {"connect_src": [], "image_src": []},
        "created": created or int(time.time()),
        "created_by": None,
        "endpoints_granted": [],
        "endpoints_pending": [],
        "livemode": livemode,
        "permissions_granted": list(permissions_granted or []),
        "permissions_pending": pending,
        "status": status,
    }


@dataclass
class FakeState:
    upstream: str | None = None
    installs: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> object
    list_pages: int = 0  # list requests answered
    fail_after: int | None = None  # list pages served before every later one fails
    fail_status: int = 500
    state_file: str | None = None  # where the installs are kept across restarts, if anywhere
    sandbox_keys: set[str] = field(default_factory=set)  # keys that see the sandbox's installs
    sandbox_ids: set[str] = field(default_factory=set)  # installs in the sandbox

    def mode_of(self, obj: dict[str, Any]) -> Mode:
        """The mode of an install object: sandbox, else its `livemode`'s."""
        if obj["id"] in self.sandbox_ids:
            return Mode.SANDBOX
        return Mode.LIVE if obj["livemode"] else Mode.TEST

    def load(self) -> None:
        """The installs saved in `state_file`, when there is one (a missing file: none)."""
        if not self.state_file or not os.path.exists(self.state_file):
            return
        with open(self.state_file, encoding="utf-8") as f:
            saved = json.load(f)
        self.installs = {o["id"]: o for o in saved["installs"]}
        self.sandbox_ids = set(saved.get("sandbox", ())) & set(self.installs)

    def save(self) -> None:
        """Write the installs to `state_file` (0600 from the first byte, replaced atomically)."""
        if not self.state_file:
            return
        tmp = f"{self.state_file}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"installs": list(self.installs.values()),
                       "sandbox": sorted(self.sandbox_ids & set(self.installs))}, f)
        os.replace(tmp, self.state_file)

    def ordered(self, mode: Mode) -> list[dict[str, Any]]:
        """The installs of `mode`, newest first, then by id (Stripe's order for lists)."""
        rows = [o for o in self.installs.values() if self.mode_of(o) == mode]
        return sorted(rows, key=lambda o: (-o["created"], o["id"]))

    def put(self, obj: dict[str, Any], mode: Mode) -> None:
        """Keep `obj` as an install of `mode`."""
        self.installs[obj["id"]] = obj
        if mode == Mode.SANDBOX:
            self.sandbox_ids.add(obj["id"])

    def drop(self, install_id: str) -> None:
        self.installs.pop(install_id, None)
        self.sandbox_ids.discard(install_id)


def _error(handler: tornado.web.RequestHandler, status: int, type_: str, message: str,
           code: str | None = None, param: str | None = None) -> None:
    handler.set_status(status)
    error: dict[str, Any] = {"type": type_, "message": message}
    if code:
        error["code"] = code
    if param:
        error["param"] = param
    handler.set_header("Content-Type", "application/json")
    handler.finish(json.dumps({"error": error}))


class _Base(tornado.web.RequestHandler):
    def initialize(self, state: FakeState, client: httpx.AsyncClient) -> None:
        self.state, self.client = state, client

    def check_xsrf_cookie(self) -> None:
        pass

    def mode(self) -> Mode | None:
        """The key's mode (sandbox for a sandbox key); None (401 sent) for a missing or
        unknown key."""
        auth = self.request.headers.get("Authorization", "")
        key = auth[7:] if auth.startswith("Bearer ") else ""
        if key in self.state.sandbox_keys:
            return Mode.SANDBOX
        if key.startswith(("sk_test_", "rk_test_")):
            return Mode.TEST
        if key.startswith(("sk_live_", "rk_live_")):
            return Mode.LIVE
        _error(self, 401, "invalid_request_error", "Invalid API Key provided.")
        return None

    def params(self) -> dict[str, str]:
        """Query and form parameters (the library sends GET params in the query, POST in the
        body), last value wins."""
        found = {k: v[-1].decode() for k, v in self.request.query_arguments.items()}
        if self.request.body:
            found.update({k: v[-1] for k, v in parse_qs(self.request.body.decode()).items()})
        return found

    def lists(self, name: str) -> list[str] | None:
        """The form array `name` (`name[]=a&name[]=b`, `name[0]=a`; `name=` for an empty one),
        None when the request does not give it."""
        given = False
        values: list[str] = []
        form = parse_qs(self.request.body.decode(), keep_blank_values=True)
        for key, found in form.items():
            if key == name or key == f"{name}[]" or (
                    key.startswith(f"{name}[") and key[len(name) + 1:-1].isdigit()):
                given = True
                values.extend(v for v in found if v)
        return values if given else None

    def send(self, obj: dict[str, Any]) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(obj))


class InstallsHandler(_Base):
    def get(self) -> None:
        mode = self.mode()
        if mode is None:
            return
        state, p = self.state, self.params()
        if state.fail_after is not None and state.list_pages >= state.fail_after:
            _error(self, state.fail_status, "api_error", "forced failure of the fake")
            return
        try:
            limit = int(p.get("limit", "10"))
        except ValueError:
            limit = 0
        if not 1 <= limit <= 100:
            _error(self, 400, "invalid_request_error", "limit must be between 1 and 100",
                   code="parameter_invalid_integer", param="limit")
            return
        rows = state.ordered(mode)
        account = self.request.headers.get("Stripe-Account") or p.get("account")
        for name, value in (("app", p.get("app")), ("account", account),
                            ("status", p.get("status"))):
            if value:
                rows = [o for o in rows if o[name] == value]
        after, before = p.get("starting_after"), p.get("ending_before")
        for cursor, name in ((after, "starting_after"), (before, "ending_before")):
            if cursor and cursor not in state.installs:
                _error(self, 400, "invalid_request_error", f"No such apps.install: '{cursor}'",
                       code="resource_missing", param=name)
                return
        ids = [o["id"] for o in rows]
        if after:
            rows = rows[ids.index(after) + 1:] if after in ids else []
            page, has_more = rows[:limit], len(rows) > limit
        elif before:
            rows = rows[:ids.index(before)] if before in ids else []
            page, has_more = rows[-limit:], len(rows) > limit
        else:
            page, has_more = rows[:limit], len(rows) > limit
        state.list_pages += 1
        self.send({"object": "list", "url": PATH, "has_more": has_more, "data": page})

    def post(self) -> None:
        mode = self.mode()
        if mode is None:
            return
        p = self.params()
        account = self.request.headers.get("Stripe-Account")
        if not account:
            _error(self, 400, "invalid_request_error", "creating an install for an account "
                   "needs the Stripe-Account header")
            return
        app = p.get("app", "")
        permissions = {name: found for name in ("permissions_granted", "permissions_pending")
                       if (found := self.lists(name)) is not None}
        for obj in self.state.ordered(mode):
            if obj["account"] == account and obj["app"] == app:
                if permissions:
                    obj.update(permissions, approval_required=bool(
                        permissions.get("permissions_pending", obj["permissions_pending"])))
                    self.state.save()
                self.send(obj)
                return
        obj = install_object(account, app, mode == Mode.LIVE,
                             permissions_granted=permissions.get("permissions_granted"),
                             permissions_pending=permissions.get("permissions_pending"))
        self.state.put(obj, mode)
        self.state.save()
        self.send(obj)


class InstallHandler(_Base):
    def _find(self, install_id: str) -> dict[str, Any] | None:
        mode = self.mode()
        if mode is None:
            return None
        obj = self.state.installs.get(install_id)
        if obj is None or self.state.mode_of(obj) != mode:
            _error(self, 404, "invalid_request_error", f"No such apps.install: '{install_id}'",
                   code="resource_missing", param="id")
            return None
        return obj

    def get(self, install_id: str) -> None:
        obj = self._find(install_id)
        if obj is not None:
            self.send(obj)


class UninstallHandler(InstallHandler):
    def post(self, install_id: str) -> None:
        obj = self._find(install_id)
        if obj is None:
            return
        self.state.drop(install_id)
        self.state.save()
        self.send({**obj, "status": "uninstalling"})


class ForwardHandler(_Base):
    SUPPORTED_METHODS = ("GET", "POST", "DELETE")

    async def _any(self) -> None:
        if not self.state.upstream:
            _error(self, 404, "invalid_request_error",
                   f"Unrecognized request URL ({self.request.method}: {self.request.path}).")
            return
        resp = await self.client.request(
            self.request.method, self.state.upstream + self.request.uri,
            content=self.request.body or None,
            headers={k: v for k, v in self.request.headers.items()
                     if k.lower() in ("authorization", "content-type", "stripe-account",
                                      "idempotency-key", "stripe-version")})
        self.set_status(resp.status_code)
        self.set_header("Content-Type", resp.headers.get("content-type", "application/json"))
        self.finish(resp.content)

    get = post = delete = _any


class FakeInstalls:
    """The fake as a real HTTP server in this process's event loop."""

    def __init__(self, upstream: str | None = None, port: int = 0,
                 state_file: str | None = None, sandbox_keys: tuple[str, ...] = ()) -> None:
        self.state = FakeState(upstream=upstream, state_file=state_file,
                               sandbox_keys=set(sandbox_keys))
        self.state.load()
        self.client = httpx.AsyncClient(timeout=30)
        args = {"state": self.state, "client": self.client}
        app = tornado.web.Application([
            (PATH, InstallsHandler, args),
            (PATH + r"/([A-Za-z0-9_]+)", InstallHandler, args),
            (PATH + r"/([A-Za-z0-9_]+)/uninstall", UninstallHandler, args),
            (r"/.*", ForwardHandler, args),
        ])
        sockets = bind_sockets(port, "127.0.0.1")
        self.port = sockets[0].getsockname()[1]
        self.server = HTTPServer(app)
        self.server.add_sockets(sockets)
        self.url = f"http://127.0.0.1:{self.port}"

    def add(self, account: str, app: str, livemode: bool = False, *, sandbox: bool = False,
            **fields: Any) -> dict[str, Any]:
        """Install `app` on `account` (no webhook is sent: that is the caller's business), in
        the sandbox when `sandbox` (seen with a sandbox key only; `livemode` false)."""
        obj = install_object(account, app, livemode and not sandbox, **fields)
        self.state.put(obj, Mode.SANDBOX if sandbox else Mode.LIVE if livemode else Mode.TEST)
        self.state.save()
        return obj

    def remove(self, account: str, livemode: bool = False, *, sandbox: bool = False) -> None:
        mode = Mode.SANDBOX if sandbox else Mode.LIVE if livemode else Mode.TEST
        for key, obj in list(self.state.installs.items()):
            if obj["account"] == account and self.state.mode_of(obj) == mode:
                self.state.drop(key)
        self.state.save()

    def fail_list_after(self, pages: int | None, status: int = 500) -> None:
        """Serve `pages` more list pages, then fail every later one with `status`."""
        self.state.fail_after = None if pages is None else self.state.list_pages + pages
        self.state.fail_status = status

    async def close(self) -> None:
        self.server.stop()
        await self.client.aclose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cli.fake_installs")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--upstream", default=None, help="forward other requests here")
    parser.add_argument("--seed", type=int, default=0, help="start with this many installs")
    parser.add_argument("--seed-app", default="com.example.app")
    parser.add_argument("--seed-live", action="store_true", help="seed live installs")
    parser.add_argument("--state", default=None,
                        help="keep the installs in this file across restarts (default: memory)")
    parser.add_argument("--sandbox-key", action="append", default=[], metavar="KEY",
                        help="a key that sees the sandbox's installs (repeatable)")
    parser.add_argument(PARENT_FLAG, action="store_true",
                        help="exit when stdin closes (set by start(): die with the parent)")
    args = parser.parse_args(argv)
    if args.exit_with_parent:
        exit_with_parent()

    async def serve() -> None:
        fake = FakeInstalls(args.upstream, args.port, args.state, tuple(args.sandbox_key))
        for i in range(args.seed):
            fake.add(f"acct_seed{i:07d}", args.seed_app, args.seed_live, created=1_700_000_000,
                     install_id=f"apinst_seed{i:07d}")
        print(fake.port, flush=True)
        await asyncio.Event().wait()

    asyncio.run(serve())


def start(port: int = 0, upstream: str | None = None, timeout: float = 20.0,
          extra: list[str] | None = None, state: str | None = None,
          sandbox_keys: tuple[str, ...] = ()) -> tuple[subprocess.Popen[str], str]:
    """Start the fake as a child process; returns it and its base URL once it answers."""
    args = ["--port", str(port), *(extra or []), *(["--upstream", upstream] if upstream else []),
            *(["--state", state] if state else []),
            *(a for key in sandbox_keys for a in ("--sandbox-key", key))]
    return start_child("cli.fake_installs", args, "the Install API fake", timeout)


if __name__ == "__main__":
    main()
