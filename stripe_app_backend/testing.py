"""The test kit for an app: a pytest plugin (the `pytest11` entry point, so installing the
project installs it) whose fixtures run the app under test in a real backend, against the
Stripe emulator (localstripe), in about half a second per test.

    from stripe_app_backend.testing import StripeApp

    def test_notes(stripe_app: StripeApp) -> None:
        stripe_app.install("acct_1", "test")                      # install an account
        resp = stripe_app.request("/api/notes", {"note": "hi"},   # a signed request,
                                  account="acct_1", roles=["admin"])  # as a user with roles
        assert resp.status_code == 200
        assert stripe_app.send_event("customer.created", {"id": "cus_1", "object": "customer"},
                                     account="acct_1").status == "processed"
        assert stripe_app.run_job("nightly", account="acct_1").outcome == "succeeded"
        task = stripe_app.run_task("export", {"since": 0}, account="acct_1")  # to its end
        assert task.status == "succeeded", task.error
        stripe_app.move_clock(86400)                             # a day later, server too

Fixtures (each does nothing until a test asks for it, so the plugin changes no other test
suite that runs in the same environment):

- `stripe_app`: a `StripeApp`, a started backend (every start-up step, on a free loopback
  port, on a fresh SQLite file, the app's migrations applied) running the app under test on a
  thread of its own, with the Stripe API at the emulator. The scheduler is off: jobs run when
  the test says (`run_job`), so nothing runs by the time of day.
- `stripe_emulator`: the emulator's URL: one localstripe per test session, started on a free
  port, its data in memory only.
- `stripe_clock`: the test's clock (a `time_machine` traveller, ticking), started before the
  backend: the server runs in this process, so moving it moves the server's clock too.
  It starts at `stripe_clock_start`: now, unless a test (or a conftest) overrides that fixture
  to return a `datetime`, which pins the moment the test runs at.
- `stripe_app_env`: extra configuration variables for the backend (override it to set, e.g.,
  `CREDENTIALS_KEYS`); none by default.
- `stripe_app_packages`: the app under test, as `APP_PACKAGES` entries: the `--stripe-app
  PKG_OR_PATH` option (comma-separated, may be given more than once), else the `APP_PACKAGES`
  variable, else the package that holds the test file (the outermost folder with an
  `__init__.py` above it: `acme_app` for `acme_app/tests/test_acme.py`).

The backend's secrets are the fixed test values of `stripe_app_backend.harness`; the platform
keys are `sk_test_app`/`sk_live_app`, and `sk_test_appsandbox` for the managed sandbox (with its
webhook secret `WH_SANDBOX`), which the emulator accepts; `stripe_app.stripe()` is a client of
the emulator, to create the objects a job or task will read. Every mode argument may be
"live", "test" or "sandbox": `install(account, "sandbox")`, `send_event(..., mode="sandbox")`
(signed with the sandbox's secret, stored as a sandbox event) and `run_job(..., mode="sandbox")`
(its calls with the sandbox's key) serve a sandbox install as the server does.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Coroutine, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

if TYPE_CHECKING:
    import httpx
    import stripe
    import time_machine

    from models.tasks import TaskView
    from service.server import Backend
    from stripe_app_backend.harness import EventResult, JobResult, Running

T = TypeVar("T")

#: The account and user a `StripeApp` call is about unless it says otherwise.
ACCOUNT = "acct_test"
USER = "usr_test"
#: The platform's secret keys the backend is given (the emulator takes any): the managed
#: sandbox's is a test-mode key of its own.
KEYS = {"test": "sk_test_app", "live": "sk_live_app", "sandbox": "sk_test_appsandbox"}
#: The longest a single call into the backend may take before the test fails.
CALL_TIMEOUT = 120.0


# ---- the options ---------------------------------------------------------------------------

def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("stripe-app-backend", "testing an app of stripe-app-backend")
    group.addoption(
        "--stripe-app", action="append", default=[], metavar="PKG_OR_PATH",
        help="the app under test for the stripe_app fixture: an importable package or a "
             "package directory (default: APP_PACKAGES, else the package holding the test)")


# ---- the backend's event loop, on a thread of its own ---------------------------------------

class _LoopThread:
    """An event loop running on a daemon thread; `call` runs a coroutine there and waits."""

    def __init__(self, factory: Callable[[], asyncio.AbstractEventLoop]) -> None:
        self.loop = factory()
        self._thread = threading.Thread(target=self._run, name="stripe-app-backend",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = CALL_TIMEOUT) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)
        self.loop.close()


class StripeApp:
    """The app under test, served by a real backend: what a test does to it, as the
    extension, Stripe or the operator would. Every call waits for its effect; every account
    argument defaults to `ACCOUNT` and every mode to test."""

    def __init__(self, running: Running, loop: _LoopThread, clock: time_machine.Coordinates,
                 emulator_url: str) -> None:
        self._running = running
        self._loop = loop
        #: The test's clock (`time_machine`): `clock.shift(seconds)`, `clock.move_to(when)`.
        self.clock = clock
        #: The emulator's base URL.
        self.emulator_url = emulator_url

    @property
    def url(self) -> str:
        """The backend's base URL (`http://127.0.0.1:<port>`)."""
        return self._running.url

    @property
    def backend(self) -> Backend:
        """The running backend itself (its registry, storage, runner, ...), to look into."""
        return self._running.backend

    # ---- installations --------------------------------------------------------------------
    def install(self, account: str = ACCOUNT, mode: str = "test",
                granted: list[str] | tuple[str, ...] | None = None) -> None:
        """Install the app on `account` in `mode`; `granted`: the permissions granted (None:
        not known, which lets every job run)."""
        self._loop.call(self._running.install(account, mode, granted))

    def uninstall(self, account: str = ACCOUNT, mode: str = "test") -> int:
        """Uninstall it (the app's rows of that account and mode go); how many rows went."""
        return self._loop.call(self._running.uninstall(account, mode))

    # ---- as the extension ------------------------------------------------------------------
    def request(self, path: str, fields: Mapping[str, Any] | None = None, *,
                account: str = ACCOUNT, user: str = USER,
                roles: list[str] | tuple[str, ...] | None = None) -> httpx.Response:
        """`POST path` signed as the extension sends it: `fields`, the user and account ids,
        and `stripe_roles` when `roles` is given (the role ids the user holds)."""
        body: dict[str, Any] = {**dict(fields or {}), "user_id": user, "account_id": account}
        if roles is not None:
            body["stripe_roles"] = list(roles)
        return self._loop.call(self._running.signed(path, body))

    # ---- as Stripe -------------------------------------------------------------------------
    def send_event(self, type_: str, obj: dict[str, Any] | None = None, *,
                   account: str | None = ACCOUNT, mode: str = "test",
                   context: str | None = None) -> EventResult:
        """Deliver a webhook event of `type_` about `obj` (its `data.object`) for `account`
        (None: the platform's own) and wait until it is processed or has failed: its
        `.status` and `.error`. The app's handlers run only for an installed account.
        `context`: the event's (an organization's `org_...`: the account's calls from then on
        send `Stripe-Context`)."""
        return self._loop.call(self._running.send_event(type_, account, mode, obj=obj,
                                                        context=context))

    def stripe(self, mode: str = "test") -> stripe.StripeClient:
        """A Stripe client of the emulator, with the platform's key for `mode`."""
        import stripe

        return stripe.StripeClient(KEYS[mode], base_addresses={"api": self.emulator_url})

    # ---- jobs, tasks, the database and the clock -------------------------------------------
    def run_job(self, name: str, *, account: str = ACCOUNT, mode: str = "test") -> JobResult:
        """Run job `name` for `account` now, to its end: its `.outcome` and `.error`."""
        return self._loop.call(self._running.run_job(name, account, mode))

    def run_task(self, name: str, input: Mapping[str, Any] | None = None, *,
                 account: str = ACCOUNT, mode: str = "test",
                 timeout: float = 30.0) -> TaskView:
        """Start task `name` as the extension does, with `input` as its signed fields, and
        wait until it has succeeded, failed or been cancelled (`.status`, `.result`,
        `.error`). A retry waits its backoff: `move_clock` past it to hurry it."""
        return self._loop.call(self._running.run_task(name, input, account, mode, timeout),
                               timeout + 10)

    def start_task(self, name: str, input: Mapping[str, Any] | None = None, *,
                   account: str = ACCOUNT, mode: str = "test") -> str:
        """Start task `name` and return its id at once (`wait_task` waits for its end)."""
        return self._loop.call(self._running.start_task(name, input, account, mode))

    def wait_task(self, task_id: str, timeout: float = 30.0) -> TaskView:
        return self._loop.call(self._running.wait_task(task_id, timeout), timeout + 10)

    def db(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` in a database thread of the backend (as `ctx.db` does); its value."""
        async def run() -> T:
            result: T = await self._running.backend.storage.run(fn, *args)
            return result

        return self._loop.call(run())

    def move_clock(self, seconds: float) -> None:
        """Move the clock (the test's and the server's) `seconds` forward (or back)."""
        self.clock.shift(seconds)


# ---- finding the app -----------------------------------------------------------------------

def package_of(path: Path) -> Path | None:
    """The outermost package directory holding `path` (a test file or folder), or None."""
    folder = path if path.is_dir() else path.parent
    while not (folder / "__init__.py").is_file():
        if folder.parent == folder:
            return None
        folder = folder.parent
    while (folder.parent / "__init__.py").is_file():
        folder = folder.parent
    return folder


def app_entries(option: list[str], environ: Mapping[str, str], test_path: Path
                ) -> tuple[str, ...]:
    """The app under test: the option's entries, else `APP_PACKAGES`, else the package of
    `test_path` (an absolute path); raises `pytest.UsageError` when none of them names one."""
    for source in (",".join(option), environ.get("APP_PACKAGES", "")):
        entries = tuple(e.strip() for e in source.split(",") if e.strip())
        if entries:
            return entries
    found = package_of(test_path)
    if found is None:
        raise pytest.UsageError(
            f"stripe_app: no app to test: {test_path} is not inside a package; name the app "
            "with --stripe-app PKG_OR_PATH or APP_PACKAGES")
    return (str(found),)


# ---- the fixtures --------------------------------------------------------------------------

@pytest.fixture
def stripe_app_packages(request: pytest.FixtureRequest) -> tuple[str, ...]:
    """The app under test, as `APP_PACKAGES` entries (see the module doc)."""
    return app_entries(request.config.getoption("--stripe-app"), os.environ,
                       Path(request.path).resolve())


@pytest.fixture(scope="session")
def stripe_emulator() -> Iterator[str]:
    """The base URL of a localstripe emulator for the whole session (its data in memory)."""
    from cli import emulator

    proc, url = emulator.start(0)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(5)


@pytest.fixture
def stripe_clock_start() -> datetime | None:
    """The moment the test's clock starts at: None, now (override it to pin one)."""
    return None


@pytest.fixture
def stripe_clock(stripe_clock_start: datetime | None) -> Iterator[time_machine.Coordinates]:
    """The test's clock, ticking from `stripe_clock_start` (see the module doc)."""
    import time

    import time_machine

    start = stripe_clock_start if stripe_clock_start is not None else time.time()
    with time_machine.travel(start, tick=True) as traveller:
        yield traveller


@pytest.fixture
def stripe_app_env() -> dict[str, str]:
    """Extra configuration variables for the backend under test (none unless overridden)."""
    return {}


@pytest.fixture
def stripe_app(stripe_app_packages: tuple[str, ...], stripe_emulator: str,
               stripe_clock: time_machine.Coordinates, stripe_app_env: dict[str, str],
               tmp_path: Path) -> Iterator[StripeApp]:
    """The app under test in a started backend (see the module doc)."""
    from service.loops import loop_factory
    from stripe_app_backend.harness import WH_SANDBOX, base_env, running

    env = base_env(tmp_path, SCHEDULER="off", STRIPE_API_BASE=stripe_emulator,
                   STRIPE_SECRET_KEY_TEST=KEYS["test"], STRIPE_SECRET_KEY_LIVE=KEYS["live"],
                   STRIPE_SECRET_KEY_SANDBOX=KEYS["sandbox"],
                   STRIPE_WEBHOOK_SECRETS_SANDBOX=WH_SANDBOX,
                   APP_PACKAGES=",".join(stripe_app_packages), **stripe_app_env)
    loop = _LoopThread(loop_factory(env.get("EVENT_LOOP", "auto")))
    try:
        context = running(env)
        app = loop.call(context.__aenter__())
        try:
            yield StripeApp(app, loop, stripe_clock, stripe_emulator)
        finally:
            loop.call(context.__aexit__(None, None, None))
    finally:
        loop.close()
