"""The quickstart walkthrough, run as a user would: `run.py dev` as a subprocess (with its own
localstripe), `run.py simulate ...` and `run.py jobs list` as subprocesses (issue 7)."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time

import httpx
from conftest import ROOT, free_port

RUN = os.path.join(ROOT, "run.py")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("STRIPE_") and k not in ("PORT", "DATABASE_URL")}
    env.update(extra)
    return env


def cli(cwd, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, RUN, *args], cwd=cwd, env=clean_env(**env),
                          capture_output=True, text=True, timeout=60)


def wait_until(predicate, timeout: float = 20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_walkthrough(tmp_path):
    port, stripe_port = free_port(), free_port()
    dev = subprocess.Popen([sys.executable, RUN, "dev", "--stripe-port", str(stripe_port)],
                           cwd=tmp_path, env=clean_env(PORT=str(port)),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    db_path = tmp_path / "var" / "dev.db"  # dev's own database, never the server's app.db
    try:
        def healthy():
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code
            except httpx.TransportError:
                return None

        assert wait_until(healthy, 40) == 200
        dev_env = (tmp_path / "var" / "dev.env").read_text()
        assert "STRIPE_APP_SECRETS=absec_" in dev_env
        # the file names the running Stripe stand-in and the dev database, for --dev commands
        assert "STRIPE_API_BASE=http://127.0.0.1:" in dev_env
        assert "DATABASE_URL=sqlite:///var/dev.db" in dev_env

        def db(sql: str):
            con = sqlite3.connect(db_path, timeout=10)
            try:
                return con.execute(sql).fetchall()
            finally:
                con.close()

        # 1. install an account in test mode
        out = cli(tmp_path, "simulate", "install", "--account", "acct_demo", "--test",
                  PORT=str(port))
        assert out.returncode == 0, out.stdout + out.stderr
        assert "-> GET /install" in out.stdout and '"installed": true' in out.stdout
        assert db("SELECT account_id, mode, active, confirmed FROM installation") == [
            ("acct_demo", "test", 1, 1)]

        # 2. call a signed endpoint
        out = cli(tmp_path, "simulate", "request", "/api/installation", "--account", "acct_demo",
                  PORT=str(port))
        assert out.returncode == 0, out.stderr
        answer = json.loads(out.stdout.split("<- 200:\n", 1)[1])
        assert answer["test"]["active"] is True and answer["live"]["active"] is False

        # 3. the example job ran for it against the emulator
        wait_until(lambda: db("SELECT outcome FROM job_run WHERE outcome = 'succeeded'"))
        out = cli(tmp_path, "simulate", "request", "/api/balance", "--account", "acct_demo",
                  "--payload", '{"note": "grüße", "n": 1.5}', PORT=str(port))
        assert out.returncode == 0
        balance = json.loads(out.stdout.split("<- 200:\n", 1)[1])
        assert balance["test"]["available"][0]["amount"] > 0
        out = cli(tmp_path, "jobs", "list", "--dev")
        assert out.returncode == 0, out.stderr
        assert "balance_snapshot" in out.stdout and "acct_demo" in out.stdout
        assert "succeeded" in out.stdout

        # 4. uninstall: the jobs stop and the account's app data goes
        out = cli(tmp_path, "simulate", "uninstall", "--account", "acct_demo", "--test",
                  PORT=str(port))
        assert out.returncode == 0, out.stdout
        wait_until(lambda: db("SELECT 1 FROM installation WHERE active = 0"))
        assert db("SELECT count(*) FROM balance_snapshot") == [(0,)]
        out = cli(tmp_path, "simulate", "request", "/api/jobs", "--account", "acct_demo",
                  PORT=str(port))
        assert out.returncode == 1 and "not_installed" in out.stdout
        health = httpx.get(f"http://127.0.0.1:{port}/healthz").json()
        assert health["scheduler"]["jobs"] == 0

        # 5. other events by type and from a file
        out = cli(tmp_path, "simulate", "event", "customer.created", "--account", "acct_demo",
                  "--test", PORT=str(port))
        assert out.returncode == 0 and '"duplicate": false' in out.stdout
        event_file = tmp_path / "event.json"
        event_file.write_text(json.dumps({"object": "event", "type": "invoice.paid",
                                          "livemode": False, "account": "acct_demo",
                                          "data": {"object": {}}}))
        out = cli(tmp_path, "simulate", "event", "--file", str(event_file), PORT=str(port))
        assert out.returncode == 0
        assert db("SELECT count(*) FROM webhook_event") == [(4,)]
        out = cli(tmp_path, "events", "list", "--dev")
        assert "invoice.paid" in out.stdout and "customer.created" in out.stdout
    finally:
        dev.send_signal(signal.SIGTERM)
        code = dev.wait(30)
    output = dev.stdout.read()
    assert code == 0, output
    assert "STRIPE_APP_SECRETS=absec_" in output  # dev mode prints what it configured
    assert not (tmp_path / "var" / "app.db").exists()
    with socket.socket() as s:  # and it stopped the emulator it started
        assert s.connect_ex(("127.0.0.1", stripe_port)) != 0


def test_simulate_errors_are_clear(tmp_path):
    port = free_port()  # nothing listens here
    secrets = {"STRIPE_APP_SECRETS": "absec_x" + "1" * 20,
               "STRIPE_WEBHOOK_SECRETS_TEST": "whsec_x" + "2" * 20}
    out = cli(tmp_path, "simulate", "request", "/api/installation", "--account", "acct_1",
              PORT=str(port), **secrets)
    assert out.returncode == 3
    assert "cannot reach the backend" in out.stderr and "Traceback" not in out.stderr
    out = cli(tmp_path, "simulate", "request", "/api/installation", "--account", "acct_1",
              PORT=str(port))
    assert out.returncode == 2 and "STRIPE_APP_SECRETS is not set" in out.stderr
    out = cli(tmp_path, "simulate", "uninstall", "--account", "acct_1", PORT=str(port))
    assert out.returncode == 2 and "STRIPE_WEBHOOK_SECRETS_LIVE" in out.stderr
    bad = tmp_path / "bad.json"
    for content, message in (("{not json", "is not JSON"),
                             ('{"object": "customer"}', "is not a Stripe event")):
        bad.write_text(content)
        out = cli(tmp_path, "simulate", "event", "--file", str(bad), PORT=str(port), **secrets)
        assert out.returncode == 2 and message in out.stderr, out.stderr
    out = cli(tmp_path, "simulate", "event", "--file", str(tmp_path / "missing.json"),
              PORT=str(port), **secrets)
    assert out.returncode == 2 and "cannot read" in out.stderr
    out = cli(tmp_path, "simulate", "request", "/api/x", "--account", "acct_1", "--payload",
              "[1]", PORT=str(port), **secrets)
    assert out.returncode == 2 and "must be a JSON object" in out.stderr
