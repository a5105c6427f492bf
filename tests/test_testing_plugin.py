"""The test kit (`stripe_app_backend.testing`, the pytest11 plugin): its fixtures run an app
against the emulator, and do nothing for a test that does not ask for them.

The in-process test uses the `stripe_app` fixture itself, on the sample app this session names
(`APP_PACKAGES`); the others run pytest in a child process on a small app written here, as an
app developer would, outside this project's folder and configuration."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from stripe_app_backend.testing import StripeApp, app_entries, package_of

KIT_APP = '''
"""A small app for the kit's tests: what each fixture method must reach."""
import time
from typing import Any

from stripe_app_backend import (BadInput, EndpointContext, EventContext, JobContext,
                                SignedRequest, TaskContext, endpoint, job, on_event, task)

CALLS: list[str] = []


@endpoint("/api/kit/now", roles=["admin"])
async def now(req: SignedRequest, ctx: EndpointContext) -> dict[str, Any]:
    return {"now": time.time(), "user": req.user_id, "roles": req.roles, "mode": ctx.mode}


@on_event("customer.created")
async def customer_created(ctx: EventContext) -> None:
    if ctx.data.get("id") == "cus_bad":
        raise RuntimeError("no such customer here")
    CALLS.append(f"event {ctx.data['id']} {ctx.account_id} {ctx.mode}")


@job(every=3600, permissions=["balance_read"], attempts=1)
async def snapshot(ctx: JobContext) -> None:
    await ctx.stripe.v1.balance.retrieve_async()  # the emulator answers, or the job fails
    CALLS.append(f"job {ctx.account_id} {ctx.mode}")


@job(every=3600, attempts=1)
async def broken(ctx: JobContext) -> None:
    raise RuntimeError("the job broke")


@task()
async def double(ctx: TaskContext) -> dict[str, Any]:
    if not isinstance(ctx.input.get("n"), int):
        raise BadInput("n must be a whole number")
    await ctx.progress(0.5)
    return {"twice": ctx.input["n"] * 2, "at": time.time()}
'''

KIT_TESTS = '''
from datetime import UTC, datetime

import pytest

from stripe_app_backend.testing import StripeApp


def test_requests_roles_and_the_clock(stripe_app: StripeApp) -> None:
    assert stripe_app.request("/api/kit/now", roles=["admin"]).status_code == 403  # not installed
    stripe_app.install("acct_kit", "live")
    assert stripe_app.request("/api/kit/now", account="acct_kit").status_code == 403
    assert stripe_app.request("/api/kit/now", account="acct_kit",
                              roles=["view_only"]).json()["error"]["code"] == "role_required"
    first = stripe_app.request("/api/kit/now", account="acct_kit", user="usr_ann",
                               roles=["admin"]).json()
    assert (first["user"], first["roles"], first["mode"]) == ("usr_ann", ["admin"], "live")
    stripe_app.move_clock(3 * 86400)
    later = stripe_app.request("/api/kit/now", account="acct_kit", roles=["admin"]).json()
    assert 3 * 86400 <= later["now"] - first["now"] < 3 * 86400 + 60


def test_each_test_has_a_fresh_backend(stripe_app: StripeApp) -> None:
    assert stripe_app.request("/api/kit/now", account="acct_kit",
                              roles=["admin"]).status_code == 403


def test_events_jobs_and_tasks(stripe_app: StripeApp) -> None:
    from kit_app import CALLS

    CALLS.clear()
    stripe_app.install("acct_kit")
    result = stripe_app.send_event("customer.created", {"id": "cus_1", "object": "customer"},
                                   account="acct_kit")
    assert result.status == "processed" and result.error is None
    bad = stripe_app.send_event("customer.created", {"id": "cus_bad", "object": "customer"},
                                account="acct_kit")
    assert bad.status == "failed" and "no such customer here" in (bad.error or "")
    ignored = stripe_app.send_event("customer.created", {"id": "cus_2", "object": "customer"},
                                    account="acct_other")  # not installed: not dispatched
    assert ignored.status == "processed"
    assert CALLS == ["event cus_1 acct_kit test"]

    assert stripe_app.run_job("snapshot", account="acct_kit").outcome == "succeeded"
    assert CALLS[-1] == "job acct_kit test"
    broken = stripe_app.run_job("broken", account="acct_kit")
    assert broken.outcome == "failed" and "the job broke" in (broken.error or "")
    with pytest.raises(LookupError):
        stripe_app.run_job("nope", account="acct_kit")

    done = stripe_app.run_task("double", {"n": 21}, account="acct_kit")
    assert (done.status, done.result["twice"], done.progress) == ("succeeded", 42, 1.0)
    bad_task = stripe_app.run_task("double", {"n": "x"}, account="acct_kit")
    assert bad_task.status == "failed" and "whole number" in (bad_task.error or "")


def test_granted_permissions_are_kept(stripe_app: StripeApp) -> None:
    stripe_app.install("acct_kit", granted=["customer_read"])
    result = stripe_app.run_job("snapshot", account="acct_kit")
    assert result.outcome == "missing_permission" and "balance_read" in (result.error or "")
    assert stripe_app.uninstall("acct_kit") == 0
    assert stripe_app.run_job("snapshot", account="acct_kit").outcome == "not_active"


@pytest.fixture
def stripe_clock_start() -> datetime:
    return datetime(2031, 5, 6, 7, 8, tzinfo=UTC)


def test_a_pinned_clock(stripe_app: StripeApp) -> None:
    stripe_app.install("acct_kit")
    done = stripe_app.run_task("double", {"n": 1}, account="acct_kit")
    assert 0 <= done.result["at"] - datetime(2031, 5, 6, 7, 8, tzinfo=UTC).timestamp() < 60
'''


def pytest_child(tmp_path: Path, *args: str, env: dict[str, str] | None = None
                 ) -> subprocess.CompletedProcess[str]:
    """`python -m pytest ARGS` in `tmp_path`, outside this project's configuration, without
    the session's `APP_PACKAGES` unless `env` gives one."""
    base = {k: v for k, v in os.environ.items() if k != "APP_PACKAGES"}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
                          cwd=str(tmp_path), env={**base, **(env or {})}, capture_output=True,
                          text=True, timeout=300)


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


def test_the_kit_runs_an_app_named_by_the_option(tmp_path: Path) -> None:
    write(tmp_path / "kit_app" / "__init__.py", KIT_APP)
    write(tmp_path / "elsewhere" / "test_kit.py", KIT_TESTS)  # outside the app's package
    started = time.monotonic()
    out = pytest_child(tmp_path, "-q", "elsewhere", "--stripe-app", str(tmp_path / "kit_app"))
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    assert "5 passed" in out.stdout
    assert time.monotonic() - started < 120  # seconds, not minutes (a ceiling for a busy box)


def test_without_an_app_the_fixture_says_how_to_name_one(tmp_path: Path) -> None:
    write(tmp_path / "loose" / "test_loose.py", """
        def test_uses_the_kit(stripe_app):
            pass
    """)
    out = pytest_child(tmp_path, "-q", "loose")
    assert out.returncode != 0
    assert "no app to test" in out.stdout + out.stderr
    assert "--stripe-app PKG_OR_PATH or APP_PACKAGES" in out.stdout + out.stderr


def test_the_plugin_is_inert_for_a_test_that_does_not_use_it(tmp_path: Path) -> None:
    """Loaded in every pytest run of the environment: a plain test neither starts an emulator
    nor a backend, and the option is listed, off by default."""
    write(tmp_path / "plain" / "test_plain.py", """
        import os
        import subprocess

        def test_plain():
            children = subprocess.run(["ps", "-o", "args=", "--ppid", str(os.getpid())],
                                      capture_output=True, text=True).stdout
            assert "cli.emulator" not in children
    """)
    out = pytest_child(tmp_path, "-q", "plain")
    assert out.returncode == 0 and "1 passed" in out.stdout, out.stdout + out.stderr
    helped = pytest_child(tmp_path, "--help")
    assert "--stripe-app=PKG_OR_PATH" in helped.stdout


def test_which_app_is_under_test(tmp_path: Path) -> None:
    app = tmp_path / "acme_app"
    write(app / "__init__.py", "")
    write(app / "tests" / "__init__.py", "")
    write(app / "sub" / "__init__.py", "")
    test_file = app / "tests" / "test_x.py"
    write(test_file, "")
    assert package_of(test_file) == app and package_of(app / "sub") == app
    assert package_of(tmp_path / "elsewhere.py") is None
    # the option first, then APP_PACKAGES, then the test's own package
    assert app_entries(["a,b", "c"], {"APP_PACKAGES": "x"}, test_file) == ("a", "b", "c")
    assert app_entries([], {"APP_PACKAGES": "x, y"}, test_file) == ("x", "y")
    assert app_entries([], {}, test_file) == (str(app),)
    with pytest.raises(pytest.UsageError, match="no app to test"):
        app_entries([], {"APP_PACKAGES": " "}, tmp_path / "elsewhere.py")


@pytest.fixture
def stripe_clock_start() -> datetime:
    return datetime(2026, 3, 14, 12, 0, tzinfo=UTC)


def test_the_fixture_in_process_on_the_sample_app(stripe_app: StripeApp) -> None:
    """The session's app (the sample app): its job reaches the emulator and its endpoint shows
    what the job stored; its task runs to its end; the clock is the pinned one."""
    assert stripe_app.backend.apps == (os.environ["APP_PACKAGES"],)
    assert abs(time.time() - datetime(2026, 3, 14, 12, 0, tzinfo=UTC).timestamp()) < 60
    stripe_app.install("acct_sample", "test")
    result = stripe_app.run_job("balance_snapshot", account="acct_sample")
    assert result.outcome == "succeeded", result.error
    resp = stripe_app.request("/api/balance", account="acct_sample")
    assert resp.status_code == 200, resp.text
    assert resp.json()["test"]["taken_at"] == pytest.approx(time.time(), abs=60)
    stripe_app.stripe().v1.customers.create({"email": "kit@example.com"})
    task = stripe_app.run_task("sync_customers", account="acct_sample")
    assert task.status == "succeeded", task.error
    assert stripe_app.request("/api/customers/summary",
                              account="acct_sample").json()["test"]["count"] >= 1


def test_the_fixture_serves_a_sandbox_install(stripe_app: StripeApp) -> None:
    """Issue 26: the kit serves sandbox installs as the server does: its own key (a test-mode
    key other than the test key) for the job's calls, its own webhook secret for its events
    (stored as the sandbox's), its app rows apart from test mode's."""
    from sample_app.balance_snapshot import latest

    from models.events import WebhookEvent
    from stripe_app_backend.testing import KEYS

    assert KEYS["sandbox"].startswith("sk_test_") and KEYS["sandbox"] != KEYS["test"]
    config = stripe_app.backend.config
    assert config.secret_keys["sandbox"] == KEYS["sandbox"] and config.sandbox_configured
    stripe_app.install("acct_box", "sandbox")
    result = stripe_app.run_job("balance_snapshot", account="acct_box", mode="sandbox")
    assert result.outcome == "succeeded", result.error
    assert stripe_app.db(latest, "acct_box", "sandbox") is not None
    assert stripe_app.db(latest, "acct_box", "test") is None
    # not installed in test mode: the sandbox install is not a test one
    assert stripe_app.run_job("balance_snapshot", account="acct_box").outcome == "not_active"
    sent = stripe_app.send_event("customer.created", {"id": "cus_box", "object": "customer"},
                                 account="acct_box", mode="sandbox")
    assert sent.status == "processed", sent.error

    def stored() -> list[tuple[str, bool]]:
        return [(e.mode, e.livemode) for e in WebhookEvent.select().where(
            WebhookEvent.type == "customer.created", WebhookEvent.account_id == "acct_box")]

    assert stripe_app.db(stored) == [("sandbox", False)]
    assert stripe_app.uninstall("acct_box", "sandbox") == 1  # its snapshot went
    assert stripe_app.db(latest, "acct_box", "sandbox") is None


def test_the_fixture_sends_an_organizations_context(stripe_app: StripeApp) -> None:
    """Issue 26: `send_event(..., context="org_...")` delivers the event's context; the
    installation takes it, so the account's calls from then on name it with `Stripe-Context`
    (and no `Stripe-Account`); another account's context is never taken."""
    stripe_app.install("acct_org", "test")
    index = stripe_app.backend.installations
    sent = stripe_app.send_event("customer.created", {"id": "cus_o", "object": "customer"},
                                 account="acct_org", context="org_demo1")
    assert sent.status == "processed", sent.error
    assert index.context_of("acct_org", "test") == "org_demo1"
    options = stripe_app.backend.clients.for_account("acct_org", "test")._requestor._options
    assert (options.stripe_context, options.stripe_account) == ("org_demo1", None)
    stripe_app.send_event("customer.updated", {"id": "cus_o", "object": "customer"},
                          account="acct_org", context="org_x/acct_other1")
    assert index.context_of("acct_org", "test") == "org_demo1"
