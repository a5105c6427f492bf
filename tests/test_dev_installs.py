"""`run.py dev` with `run.py simulate` and the install sync, as a user runs them (all real
processes on loopback): a simulated install is registered with dev's Install API fake, so
`installs sync --dev` and the sync at dev's start-up keep it, also after a restart of dev;
`simulate uninstall` removes it there; `installs uninstall --dev` finds it. And dev's children
(the emulator and the fake) end with dev, even when dev is killed."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import stat
import subprocess
import sys

import httpx
from conftest import free_port
from test_e2e import RUN, clean_env, cli, wait_until


def start_dev(cwd, port: int, stripe_port: int) -> tuple[subprocess.Popen, int]:
    """`run.py dev` in `cwd`, once it prints its backend line; also the fake's port."""
    dev = subprocess.Popen([sys.executable, "-u", RUN, "dev", "--stripe-port", str(stripe_port)],
                           cwd=cwd, env=clean_env(PORT=str(port)), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    assert dev.stdout is not None
    fake_port = None
    for line in dev.stdout:
        found = re.match(r"Install API fake: started at http://127\.0\.0\.1:(\d+)", line)
        if found:
            fake_port = int(found.group(1))
        if line.startswith("backend:"):
            break
    assert fake_port is not None, "dev did not start its Install API fake"
    return dev, fake_port


def stop_dev(dev: subprocess.Popen) -> None:
    dev.send_signal(signal.SIGTERM)
    dev.communicate(timeout=30)


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex(("127.0.0.1", port)) == 0


def healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def test_simulated_installs_survive_syncs_and_restarts(tmp_path):
    port, stripe_port = free_port(), free_port()
    db_path = tmp_path / "var" / "dev.db"

    def db(sql: str):
        con = sqlite3.connect(db_path, timeout=10)
        try:
            return con.execute(sql).fetchall()
        finally:
            con.commit()
            con.close()

    def synced_at_start():
        return db("SELECT count(*) FROM job_run WHERE job = 'installs.sync' AND mode = 'test' "
                  "AND outcome = 'succeeded'")[0][0]

    def demo():
        return db("SELECT active FROM installation WHERE account_id = 'acct_demo' "
                  "AND mode = 'test'")

    dev, _ = start_dev(tmp_path, port, stripe_port)
    try:
        wait_until(lambda: healthy(port), 40)
        wait_until(synced_at_start)
        out = cli(tmp_path, "simulate", "install", "--account", "acct_demo", "--test",
                  PORT=str(port))
        assert out.returncode == 0, out.stdout + out.stderr
        assert "/v1/apps/installs (Stripe-Account: acct_demo)" in out.stdout
        assert re.search(r"<- 200 apinst_\w+", out.stdout), out.stdout
        assert demo() == [(1,)]
        out = cli(tmp_path, "installs", "sync", "--test", "--dev")
        assert out.returncode == 0, out.stderr
        assert "test: 1 installs listed, 0 activated, 0 deactivated" in out.stdout
        assert demo() == [(1,)]
    finally:
        stop_dev(dev)
    state = tmp_path / "var" / "dev-installs.json"
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o600
    assert [o["account"] for o in json.loads(state.read_text())["installs"]] == ["acct_demo"]

    # a restart: its start-up sync finds the install the fake kept. Replicas starting within
    # the same ten minutes share one start-up sync: forget the first, as a later restart would.
    db("DELETE FROM job_run WHERE job = 'installs.sync'")
    assert synced_at_start() == 0
    dev, fake_port = start_dev(tmp_path, port, stripe_port)
    try:
        wait_until(lambda: healthy(port), 40)
        wait_until(synced_at_start)
        assert demo() == [(1,)]
        out = cli(tmp_path, "installs", "uninstall", "--account", "acct_demo", "--test", "--dev")
        assert out.returncode == 0, out.stderr
        assert "acct_demo (test): uninstalled; active=False" in out.stdout
        assert demo() == [(0,)]

        # simulate uninstall removes it from the fake too: the sync agrees with the table
        out = cli(tmp_path, "simulate", "install", "--account", "acct_demo", "--test",
                  PORT=str(port))
        assert out.returncode == 0 and demo() == [(1,)], out.stdout + out.stderr
        out = cli(tmp_path, "simulate", "uninstall", "--account", "acct_demo", "--test",
                  PORT=str(port))
        assert out.returncode == 0, out.stdout + out.stderr
        assert re.search(r"/v1/apps/installs/apinst_\w+/uninstall", out.stdout), out.stdout
        wait_until(lambda: demo() == [(0,)])
        listed = httpx.get(f"http://127.0.0.1:{fake_port}/v1/apps/installs",
                           headers={"Authorization": "Bearer sk_test_x"}).json()
        assert listed["data"] == []
        out = cli(tmp_path, "installs", "sync", "--test", "--dev")
        assert out.returncode == 0, out.stderr
        assert "test: 0 installs listed, 0 activated, 0 deactivated" in out.stdout
        assert demo() == [(0,)]
    finally:
        stop_dev(dev)


def test_dev_children_end_with_dev_even_when_it_is_killed(tmp_path):
    port, stripe_port = free_port(), free_port()
    dev, fake_port = start_dev(tmp_path, port, stripe_port)
    assert listening(stripe_port) and listening(fake_port)
    dev.kill()  # no handler, no `finally`: only the closed pipes tell the children
    dev.communicate(timeout=30)
    wait_until(lambda: not listening(stripe_port) and not listening(fake_port), 10)


def test_simulate_writes_only_to_a_loopback_install_api(capsys):
    from cli.simulate import local_install_api
    from models.enums import Mode
    from service.config import Config

    def config(**env: str) -> Config:
        return Config.from_env({"STRIPE_APP_ID": "com.example.app",
                                "STRIPE_SECRET_KEY_TEST": "sk_test_" + "k" * 24, **env})

    assert local_install_api(config(), Mode.TEST) is None  # Stripe's own API: never written to
    assert local_install_api(config(STRIPE_API_BASE="https://api.stripe.com"), Mode.TEST) is None
    local = local_install_api(config(STRIPE_API_BASE="http://127.0.0.1:9/"), Mode.TEST)
    assert local == ("http://127.0.0.1:9", {"Authorization": "Bearer sk_test_" + "k" * 24})
    assert local_install_api(config(STRIPE_API_BASE="http://127.0.0.1:9/"), Mode.LIVE) is None
    assert "STRIPE_SECRET_KEY_LIVE is not set" in capsys.readouterr().out


def test_a_sandbox_install_goes_end_to_end_in_dev(tmp_path):
    """Issue 26: dev gives the managed sandbox its own key and webhook secret; `simulate install
    --sandbox` registers the install with the sandbox's key (a list of its own in dev's Install
    API fake), its callback (`livemode=false`, as Stripe's) is placed in test mode until the
    Install API says it is the sandbox's, and its webhook is signed with the sandbox's secret
    only; `installs sync --sandbox --dev` keeps it; `simulate uninstall --sandbox` removes it."""
    port, stripe_port = free_port(), free_port()
    db_path = tmp_path / "var" / "dev.db"

    def rows():
        con = sqlite3.connect(db_path, timeout=10)
        try:
            return con.execute("SELECT mode, active FROM installation WHERE account_id = "
                               "'acct_box' ORDER BY mode").fetchall()
        finally:
            con.close()

    def sandbox_event():
        con = sqlite3.connect(db_path, timeout=10)
        try:
            return con.execute("SELECT livemode, sandbox FROM webhook_event WHERE type = "
                               "'account.application.authorized' AND account_id = 'acct_box'"
                               ).fetchall()
        finally:
            con.close()

    dev, fake_port = start_dev(tmp_path, port, stripe_port)
    try:
        wait_until(lambda: healthy(port), 40)
        env = dict(line.split("=", 1) for line in
                   (tmp_path / "var" / "dev.env").read_text().splitlines() if "=" in line)
        sandbox_key = env["STRIPE_SECRET_KEY_SANDBOX"]
        assert sandbox_key.startswith("sk_test_") and sandbox_key != env["STRIPE_SECRET_KEY_TEST"]
        assert env["STRIPE_WEBHOOK_SECRETS_SANDBOX"].startswith("whsec_")
        out = cli(tmp_path, "simulate", "install", "--account", "acct_box", "--sandbox",
                  PORT=str(port))
        assert out.returncode == 0, out.stdout + out.stderr
        assert '"livemode": "false"' in out.stdout and '"livemode": false' in out.stdout
        wait_until(lambda: ("sandbox", 1) in rows())
        assert ("test", 1) not in rows()
        assert sandbox_event() == [(0, 1)]  # stored as the sandbox's: its secret verified it
        # the fake lists it with the sandbox's key only
        listed = httpx.get(f"http://127.0.0.1:{fake_port}/v1/apps/installs",
                           headers={"Authorization": f"Bearer {sandbox_key}"}).json()
        assert [o["account"] for o in listed["data"]] == ["acct_box"]
        listed = httpx.get(f"http://127.0.0.1:{fake_port}/v1/apps/installs",
                           headers={"Authorization": "Bearer sk_test_x"}).json()
        assert listed["data"] == []
        out = cli(tmp_path, "installs", "sync", "--sandbox", "--dev")
        assert out.returncode == 0, out.stderr
        assert "sandbox: 1 installs listed, 0 activated, 0 deactivated" in out.stdout
        out = cli(tmp_path, "jobs", "list", "--account", "acct_box", "--dev")
        assert out.returncode == 0 and "sandbox" in out.stdout, out.stdout + out.stderr
        out = cli(tmp_path, "simulate", "uninstall", "--account", "acct_box", "--sandbox",
                  PORT=str(port))
        assert out.returncode == 0, out.stdout + out.stderr
        wait_until(lambda: ("sandbox", 0) in rows())
        out = cli(tmp_path, "installs", "sync", "--sandbox", "--dev")
        assert "sandbox: 0 installs listed" in out.stdout, out.stdout + out.stderr
    finally:
        stop_dev(dev)


def test_simulate_signs_a_sandbox_event_with_the_sandbox_secret_only(tmp_path):
    """`simulate event --sandbox` without a sandbox secret stops before sending anything: it
    never signs with the test or live secret."""
    env = {"STRIPE_WEBHOOK_SECRETS_TEST": "whsec_simtest", "STRIPE_APP_SECRETS": "absec_sim",
           "PORT": str(free_port())}
    out = cli(tmp_path, "simulate", "event", "customer.created", "--account", "acct_1",
              "--sandbox", **env)
    assert out.returncode == 2 and "set STRIPE_WEBHOOK_SECRETS_SANDBOX" in out.stderr
    out = cli(tmp_path, "simulate", "install", "--account", "acct_1", "--sandbox", **env)
    assert out.returncode == 2 and "set STRIPE_WEBHOOK_SECRETS_SANDBOX" in out.stderr
    assert "GET /install" not in out.stdout
    out = cli(tmp_path, "simulate", "event", "customer.created", "--test", "--sandbox", **env)
    assert out.returncode == 2 and "not allowed with argument" in out.stderr
