"""A real backend on a loopback port, driven as Stripe and the UI extension would: the one
implementation behind the project's own tests (tests/conftest.py imports it) and the app
developer's test kit (`stripe_app_backend.testing`, which runs it on a thread of its own).

    async with running(base_env(tmp_path, SCHEDULER="off")) as app:   # a started Backend
        await app.install("acct_1", "test")                           # through the door
        resp = await app.signed("/api/installation", {"user_id": "usr_1",
                                                      "account_id": "acct_1"})
        status, error = await app.send_event("customer.created", "acct_1", "test")  # EventResult
        outcome, error = await app.run_job("nightly", "acct_1", "test")             # JobResult
        task = await app.run_task("export", {"since": 0}, "acct_1", "test")
        await app.install("acct_2", "sandbox")    # a sandbox install: with WH_SANDBOX set

Everything is real: the signatures are the stripe library's (`cli/devtools.py`), the requests
go over HTTP to the Tornado server, the webhook events are stored and processed by the event
processor, the jobs run in the job runner and the tasks in the task worker. The secrets are
fixed test values (`APP_SECRET`, `WH_LIVE`, `WH_TEST`, and `WH_SANDBOX` for the managed
sandbox's endpoints); `base_env` is a configuration using them on a SQLite file in a given
folder. It leaves the sandbox out (as an operator who serves no sandbox installs does): a test
of sandbox events adds `STRIPE_WEBHOOK_SECRETS_SANDBOX=WH_SANDBOX` (`SANDBOX_ENV` adds it and a
sandbox key; the app test kit sets both).

Imports `service/` (the server): the project's code never imports this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, NamedTuple

import httpx

from cli.devtools import compact, make_event, sign
from models.enums import EventStatus, JobOutcome, Mode
from models.events import WebhookEvent
from models.installation import Change, InstallChange, InstallFacts
from models.jobs import JobRun
from models.tasks import FINISHED, TaskView, get_task
from service.config import Config
from service.server import Backend

APP_SECRET = "absec_test" + "a" * 24
APP_SECRET_2 = "absec_test" + "b" * 24
WH_LIVE = "whsec_live" + "c" * 24
WH_LIVE_2 = "whsec_live" + "d" * 24
WH_TEST = "whsec_test" + "e" * 24
WH_SANDBOX = "whsec_sandbox" + "f" * 24
#: The managed sandbox's platform key in tests: a test-mode key other than any test key.
SANDBOX_KEY = "sk_test_sandbox" + "g" * 16
#: What `base_env` takes to serve sandbox installs: the sandbox's webhook secret and key.
SANDBOX_ENV = {"STRIPE_WEBHOOK_SECRETS_SANDBOX": WH_SANDBOX,
               "STRIPE_SECRET_KEY_SANDBOX": SANDBOX_KEY}
#: The webhook secret of each mode's endpoints, as `send_event` signs with it.
WEBHOOK_SECRETS = {Mode.LIVE: WH_LIVE, Mode.TEST: WH_TEST, Mode.SANDBOX: WH_SANDBOX}
#: Where an event stands once processing is over for now (`failed` is retried later).
EVENT_DONE = (EventStatus.PROCESSED, EventStatus.FAILED, EventStatus.DEAD)


class EventResult(NamedTuple):
    """Where a delivered event stands: processed (error None), or failed or dead, and why."""

    status: EventStatus
    error: str | None


class JobResult(NamedTuple):
    """What became of a job run, and its recorded error (None when it succeeded)."""

    outcome: JobOutcome
    error: str | None


def event(type_: str, account: str | None = "acct_1", livemode: bool = True,
          **kwargs: Any) -> dict[str, Any]:
    """`make_event`, for account acct_1 in live mode unless told otherwise."""
    return make_event(type_, account, livemode, **kwargs)


def base_env(tmp_path: Any, **extra: str | None) -> dict[str, str]:
    """A configuration (as environment variables) for a backend on a free loopback port, with
    a SQLite file in `tmp_path` and the test secrets; `extra` adds or replaces variables (a
    None removes one)."""
    env: dict[str, str | None] = {
        "HOST": "127.0.0.1",
        "PORT": "0",
        "DATABASE_URL": f"sqlite:///{tmp_path}/app.db",
        "STRIPE_APP_SECRETS": APP_SECRET,
        "STRIPE_WEBHOOK_SECRETS_LIVE": WH_LIVE,
        "STRIPE_WEBHOOK_SECRETS_TEST": WH_TEST,
        "STRIPE_APP_ID": "com.example.testapp",
        "SHUTDOWN_TIMEOUT": "5",
    }
    env.update(extra)
    return {k: v for k, v in env.items() if v is not None}


async def wait_for(predicate: Callable[[], Awaitable[Any]], timeout: float = 30.0,
                   what: str = "condition") -> Any:
    """Await `predicate()` every 50 ms until it returns something true, and return that; fail
    after `timeout` seconds (a ceiling, measured on the monotonic clock, which injected test
    clocks do not move)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = await predicate()
        if result:
            return result
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what} not met in {timeout}s")


#: (timestamp, body) of every signature `Running.signed` made in this process: a backend
#: started again on the same database (or a second replica) remembers them too.
_SIGNED: set[tuple[int, bytes]] = set()


class Running:
    """A started Backend and an HTTP client pointed at it."""

    def __init__(self, backend: Backend, client: httpx.AsyncClient) -> None:
        self.backend = backend
        self.client = client
        self.url = f"http://127.0.0.1:{backend.port}"

    # ---- as the extension: signed requests -------------------------------------------------
    def fresh_signature(self, raw: bytes, secret: str = APP_SECRET) -> str:
        """A signature of `raw` no earlier call made, as the extension gets a new one per call:
        Stripe signs the timestamp, in seconds, and the body, so a body signed twice in one
        second would carry the same signature, which single-use endpoints refuse as a replay
        (service/signed.py). A repeat is signed a second (or more) earlier, well within the
        tolerance."""
        t = int(time.time())
        while (t, raw) in _SIGNED:
            t -= 1
        _SIGNED.add((t, raw))
        return sign(raw, secret, t)

    async def signed(self, path: str, body: Mapping[str, Any] | str | bytes,
                     secret: str = APP_SECRET, header: str | None = None,
                     **kw: str) -> httpx.Response:
        """POST `body` signed as the extension would (a new signature per call), or with
        `header` as given."""
        raw = body if isinstance(body, str | bytes) else compact(dict(body))
        raw_b = raw.encode() if isinstance(raw, str) else raw
        sig = header if header is not None else self.fresh_signature(raw_b, secret)
        return await self.client.post(path, content=raw_b, headers={
            "Stripe-Signature": sig, "Content-Type": "application/json", **kw})

    # ---- as Stripe: webhooks ---------------------------------------------------------------
    async def webhook(self, ev: Mapping[str, Any] | str, secret: str = WH_LIVE,
                      header: str | None = None) -> httpx.Response:
        raw = ev if isinstance(ev, str) else json.dumps(ev, indent=2)
        sig = header if header is not None else sign(raw, secret)
        return await self.client.post("/webhooks", content=raw.encode(),
                                      headers={"Stripe-Signature": sig})

    async def settle(self, timeout: float = 30.0) -> None:
        """Wait until webhook processing started by this backend is done; fail after `timeout`
        seconds (a ceiling for a loaded machine: returning quietly instead would let the next
        assertion fail for a reason that is not the code's)."""
        deadline = time.monotonic() + timeout
        while self.backend.events._tasks:
            assert time.monotonic() < deadline, f"webhook processing not done in {timeout}s"
            await asyncio.sleep(0.01)

    async def send_event(self, type_: str, account: str | None, mode: str = Mode.TEST, *,
                         obj: dict[str, Any] | None = None, timeout: float = 30.0,
                         context: str | None = None) -> EventResult:
        """Deliver an event of `type_` about `obj` for `account` in `mode` (signed with that
        mode's webhook secret, `WEBHOOK_SECRETS`: a sandbox event with `WH_SANDBOX` and
        `livemode: false`, so it is stored as the sandbox's) and wait until it is processed or
        has failed; returns its status and its error (None when it was processed). `context`:
        the event's `context` (an organization's: the account's calls then use
        `Stripe-Context`, docs/deploy.md "Organizations")."""
        mode = Mode(mode)
        if mode == Mode.SANDBOX:
            assert WH_SANDBOX in self.backend.config.webhook_secrets[Mode.SANDBOX], (
                "a sandbox event needs STRIPE_WEBHOOK_SECRETS_SANDBOX=WH_SANDBOX (SANDBOX_ENV)")
        ev = make_event(type_, account, mode.livemode, obj=obj)
        if context is not None:
            ev["context"] = context
        resp = await self.webhook(ev, WEBHOOK_SECRETS[mode])
        assert resp.status_code == 200, resp.text

        async def done() -> WebhookEvent | None:
            row = await self.backend.storage.run(WebhookEvent.get_or_none,
                                                 WebhookEvent.id == ev["id"])
            return row if row is not None and row.status in EVENT_DONE else None

        row = await wait_for(done, timeout, f"event {ev['id']} ({type_}) processed")
        return EventResult(EventStatus(row.status), row.last_error)

    # ---- installations, jobs and tasks -----------------------------------------------------
    async def install(self, account: str, mode: str = Mode.TEST,
                      granted: tuple[str, ...] | list[str] | None = None) -> None:
        """Install the app on `account` in `mode`, through the door every installation change
        takes (`InstallationIndex.apply`); `granted`: the permissions the install granted
        (None: not known, which lets every job and task run)."""
        facts = None if granted is None else InstallFacts(
            account, str(mode), None, "active", tuple(granted), (), False)
        await self.backend.installations.apply(InstallChange(
            account, str(mode), Change.INSTALLED, int(time.time()) - 1, "test", facts=facts))

    async def uninstall(self, account: str, mode: str = Mode.TEST) -> int:
        """Uninstall the app from `account` in `mode`; returns how many app rows went."""
        out = await self.backend.installations.apply(InstallChange(
            account, str(mode), Change.UNINSTALLED, int(time.time()), "test"))
        return int(out.deleted or 0)

    async def run_job(self, name: str, account: str, mode: str = Mode.TEST
                      ) -> JobResult:
        """Run job `name` for `account` in `mode` now, to its end (all its attempts); returns
        its outcome and the recorded error. Raises LookupError for a job the app lacks."""
        outcome, _ = await self.backend.runner.run_now(name, account, str(mode), "test")
        if outcome == JobOutcome.UNKNOWN_JOB:
            raise LookupError(f"no job {name!r}; the jobs are {sorted(self.backend.registry.jobs)}")
        if outcome == JobOutcome.NOT_ACTIVE:
            return JobResult(outcome, f"{account} has not installed the app in {mode} mode")

        def last_error() -> str | None:
            row = (JobRun.select().where((JobRun.job == name) & (JobRun.account_id == account)
                                         & (JobRun.mode == str(mode)))
                   .order_by(JobRun.id.desc()).first())
            return None if row is None else row.error

        return JobResult(outcome, await self.backend.storage.run(last_error))

    async def start_task(self, name: str, input: Mapping[str, Any] | None, account: str,
                         mode: str = Mode.TEST, user: str = "usr_test") -> str:
        """Start task `name` as the extension does (`POST /api/tasks/<name>`, signed, with
        `input` as its fields); returns its id. Fails on any answer but 202."""
        body = {**dict(input or {}), "mode": str(mode), "user_id": user, "account_id": account}
        resp = await self.signed(f"/api/tasks/{name}", body)
        assert resp.status_code == 202, f"starting task {name}: {resp.status_code} {resp.text}"
        return str(resp.json()["task_id"])

    async def wait_task(self, task_id: str, timeout: float = 30.0) -> TaskView:
        """The task once it has succeeded, failed or been cancelled (all its attempts)."""
        async def finished() -> TaskView | None:
            self.backend.task_worker.wake()
            view = await self.backend.storage.run(get_task, task_id)
            return view if view is not None and view.status in FINISHED else None

        view: TaskView = await wait_for(finished, timeout, f"task {task_id} finished")
        return view

    async def run_task(self, name: str, input: Mapping[str, Any] | None, account: str,
                       mode: str = Mode.TEST, timeout: float = 30.0) -> TaskView:
        """Start task `name` and wait for its end (`start_task`, then `wait_task`)."""
        return await self.wait_task(await self.start_task(name, input, account, mode), timeout)


@contextlib.asynccontextmanager
async def running(env: Mapping[str, str], **kwargs: Any) -> AsyncIterator[Running]:
    """A Backend of the configuration `env` (variables, as `Config.from_env` reads them),
    started (every step, listening on loopback), with a client; stopped at the end. `kwargs`
    go to `Backend`."""
    config = Config.from_env(dict(env))
    backend = Backend(config, **kwargs)
    await backend.start()
    client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{backend.port}", timeout=20)
    try:
        yield Running(backend, client)
    finally:
        await client.aclose()
        await backend.stop()
