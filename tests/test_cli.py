"""Operator commands as subprocesses: jobs run/list/pause, events list/replay, install-link."""

from __future__ import annotations

import json
import re
import time

import pytest
from conftest import ROOT, event
from test_e2e import cli

from models.db import open_database
from models.events import WebhookEvent, store_event
from models.installation import Installation, apply_state
from models.jobs import JobRun
from models.migrate import migrate


@pytest.fixture
def db_env(tmp_path):
    url = f"sqlite:///{tmp_path}/cli.db"
    db = open_database(url)
    migrate(db)
    yield url, db
    db.close()


def test_jobs_run_now_is_recorded_like_any_run(tmp_path, db_env, localstripe):
    url, _ = db_env
    apply_state("acct_cli", "test", True, int(time.time()), "setup")
    env = {"DATABASE_URL": url, "STRIPE_API_BASE": localstripe,
           "STRIPE_SECRET_KEY_TEST": "sk_test_cli"}
    out = cli(ROOT, "jobs", "run", "balance_snapshot", "--account", "acct_cli", "--test", **env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "succeeded" in out.stdout
    (run,) = list(JobRun.select())
    assert (run.job, run.account_id, run.mode, run.outcome, run.replica) == (
        "balance_snapshot", "acct_cli", "test", "succeeded", "cli")
    out = cli(ROOT, "jobs", "list", **env)
    assert "acct_cli" in out.stdout and "succeeded" in out.stdout
    # errors are clear
    out = cli(ROOT, "jobs", "run", "nope", "--account", "acct_cli", "--test", **env)
    assert out.returncode == 1 and "unknown job 'nope'" in out.stderr
    out = cli(ROOT, "jobs", "run", "balance_snapshot", "--account", "acct_cli", **env)
    assert out.returncode == 1 and "no active installation in live mode" in out.stderr
    # no key for the mode: recorded as not configured, not a crash
    out = cli(ROOT, "jobs", "run", "balance_snapshot", "--account", "acct_cli", "--test",
              DATABASE_URL=url)
    assert out.returncode == 1 and "not_configured" in out.stdout


def test_jobs_pause_and_resume(db_env):
    url, _ = db_env
    apply_state("acct_p", "live", True, int(time.time()), "setup")
    assert cli(ROOT, "jobs", "pause", "--account", "acct_p", DATABASE_URL=url).returncode == 0
    assert Installation.get().jobs_paused
    assert cli(ROOT, "jobs", "resume", "--account", "acct_p", DATABASE_URL=url).returncode == 0
    assert not Installation.get().jobs_paused
    out = cli(ROOT, "jobs", "pause", "--account", "acct_none", DATABASE_URL=url)
    assert out.returncode == 1 and "no installation" in out.stderr


def test_events_list_failed_and_replay(db_env):
    url, _ = db_env
    ev = event("account.application.authorized", "acct_r", livemode=True)
    store_event(ev["id"], ev["type"], "acct_r", True, ev["created"], json.dumps(ev))
    WebhookEvent.update(status="dead", attempts=8, last_error="RuntimeError: gave up").execute()
    out = cli(ROOT, "events", "list", "--failed", DATABASE_URL=url)
    assert ev["id"] in out.stdout and "dead" in out.stdout and "gave up" in out.stdout
    out = cli(ROOT, "events", "replay", ev["id"], DATABASE_URL=url)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["status"] == "processed"
    row = WebhookEvent.get_by_id(ev["id"])
    assert row.status == "processed" and row.attempts == 9
    assert Installation.get(Installation.account_id == "acct_r").active
    out = cli(ROOT, "events", "list", "--failed", DATABASE_URL=url)
    assert ev["id"] not in out.stdout
    out = cli(ROOT, "events", "replay", "evt_missing", DATABASE_URL=url)
    assert out.returncode == 1 and "no stored event" in out.stderr


def test_install_link_command(db_env):
    url, _ = db_env
    out = cli(ROOT, "install-link", DATABASE_URL=url, STRIPE_APP_ID="com.example.app",
              STRIPE_INSTALL_REDIRECT_URI="https://app.example.com/callback/stripe")
    assert out.returncode == 0
    assert "https://app.example.com/install" in out.stdout
    assert "marketplace.stripe.com/apps/install/link/com.example.app" in out.stdout
    # the link as GET /install builds it: the redirect URI encoded
    assert "?redirect_uri=https%3A%2F%2Fapp.example.com%2Fcallback%2Fstripe&state=" in out.stdout
    out = cli(ROOT, "install-link", DATABASE_URL=url)
    assert out.returncode == 1 and "STRIPE_APP_ID" in out.stderr


def test_jobs_and_installs_take_sandbox(db_env):
    """Issue 26: `--sandbox` names the sandbox install, never the test one of the account."""
    url, _ = db_env
    apply_state("acct_box", "sandbox", True, int(time.time()), "setup")
    out = cli(ROOT, "jobs", "pause", "--account", "acct_box", "--sandbox", DATABASE_URL=url)
    assert out.returncode == 0 and out.stdout.strip() == "acct_box: jobs paused in sandbox mode"
    assert Installation.get(Installation.account_id == "acct_box").jobs_paused
    out = cli(ROOT, "jobs", "pause", "--account", "acct_box", "--test", DATABASE_URL=url)
    assert out.returncode == 1 and "no installation for acct_box in test mode" in out.stderr
    out = cli(ROOT, "jobs", "resume", "--account", "acct_box", "--sandbox", DATABASE_URL=url)
    assert out.returncode == 0 and not Installation.get().jobs_paused
    out = cli(ROOT, "jobs", "list", "--account", "acct_box", DATABASE_URL=url)
    assert re.search(r"balance_snapshot\s+sandbox\s+acct_box", out.stdout), out.stdout
    # no sandbox key: recorded as not configured, in sandbox mode
    out = cli(ROOT, "jobs", "run", "balance_snapshot", "--account", "acct_box", "--sandbox",
              DATABASE_URL=url)
    assert out.returncode == 1 and "(sandbox): not_configured" in out.stdout
    out = cli(ROOT, "jobs", "pause", "--account", "acct_box", "--test", "--sandbox",
              DATABASE_URL=url)
    assert out.returncode == 2 and "not allowed with argument" in out.stderr
    # installs: the sandbox's key is the one needed
    out = cli(ROOT, "installs", "sync", "--sandbox", DATABASE_URL=url,
              STRIPE_APP_ID="com.example.app", STRIPE_SECRET_KEY_TEST="sk_test_clitest")
    assert out.returncode == 2 and "STRIPE_SECRET_KEY_SANDBOX is not set" in out.stderr
