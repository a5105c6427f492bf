"""The developer's loop as a newcomer runs it from the README (issue 24): `run.py dev` on a
port of one's own, `run.py simulate` and the `--dev` commands in a second shell, and what each
shows. Real processes on loopback, as in test_e2e.py."""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import time

import httpx
from conftest import ROOT, free_port
from test_dev_installs import healthy, start_dev, stop_dev
from test_e2e import RUN, clean_env, cli, wait_until

from cli.devtools import event_object, make_event


def test_a_simulated_event_is_about_an_object_of_its_type():
    """`simulate event TYPE` sends a `data.object` of the type's kind, named by the type's first
    segment (or by Stripe's exceptions), not the application."""
    expected = {
        "customer.created": ("customer", "cus_"),
        "invoice.paid": ("invoice", "in_"),
        "payment_intent.succeeded": ("payment_intent", "pi_"),
        "charge.refunded": ("charge", "ch_"),
        "customer.subscription.created": ("subscription", "sub_"),
        "checkout.session.completed": ("checkout.session", "cs_"),
        "product.updated": ("product", "prod_"),
        "widget.frobbed": ("widget", "widget_"),
    }
    for type_, (name, prefix) in expected.items():
        obj = make_event(type_, "acct_demo", False)["data"]["object"]
        assert obj["object"] == name, type_
        assert obj["id"].startswith(prefix) and len(obj["id"]) > len(prefix) + 8, type_
    # the install lifecycle keeps the app itself; an account event is about the account
    assert event_object("account.application.authorized")["object"] == "application"
    assert event_object("account.updated", "acct_demo") == {"id": "acct_demo",
                                                            "object": "account"}
    assert event_object("balance.available")["object"] == "balance"


def test_simulate_event_sends_the_typed_object(tmp_path):
    out = cli(tmp_path, "simulate", "event", "invoice.paid", "--account", "acct_demo", "--test",
              PORT=str(free_port()), STRIPE_WEBHOOK_SECRETS_TEST="whsec_x" + "2" * 20)
    assert out.returncode == 3, out.stderr  # nothing listens: what was sent is shown first
    sent = json.loads(out.stdout.split("-> POST /webhooks:\n", 1)[1].split("\n}\n", 1)[0] + "}")
    assert sent["type"] == "invoice.paid" and sent["account"] == "acct_demo"
    assert sent["data"]["object"]["object"] == "invoice"
    assert sent["data"]["object"]["id"].startswith("in_")


def readme_commands(after: str) -> list[list[str]]:
    """The `run.py` commands of the README's first `sh` block after the text `after`, as
    written (the arguments after `run.py`)."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    section = text.split(after, 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    lines = [line.split("  #", 1)[0].strip() for line in block.splitlines()]
    return [shlex.split(line)[2:] for line in lines
            if line.startswith(".venv/bin/python run.py")]


def readme_walkthrough() -> list[list[str]]:
    """The second shell's commands of the README's "Try everything without a Stripe account",
    as written (the arguments after `run.py`)."""
    commands = readme_commands("## Try everything without a Stripe account")
    assert commands[0] == ["dev"], "the walkthrough starts with `run.py dev` in shell 1"
    return commands[1:]


def scheduled(port: int) -> int:
    return int(httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).json()
               ["scheduler"]["jobs"])


def test_readme_walkthrough_as_written_when_dev_runs_on_a_port_of_its_own(tmp_path):
    """Shell 1 ran `PORT=<p> run.py dev`; shell 2 runs the README's lines exactly as written,
    with no PORT in its environment: each reaches the backend on <p> (through var/dev.env)."""
    port = free_port()
    dev, _ = start_dev(tmp_path, port, free_port())
    try:
        wait_until(lambda: healthy(port), 40)
        assert f"PORT={port}\n" in (tmp_path / "var" / "dev.env").read_text()
        commands = readme_walkthrough()
        assert len(commands) >= 8
        for argv in commands:
            out = cli(tmp_path, *argv)  # clean_env: no PORT, no STRIPE_*
            said = f"{argv}: {out.stdout[-1500:]} {out.stderr[-1500:]}"
            assert "cannot reach the backend" not in out.stderr, said
            if argv[:2] == ["simulate", "request"] and argv[2] == "/api/jobs":
                assert out.returncode == 1 and "not_installed" in out.stdout, said  # 403
            else:
                assert out.returncode == 0, said
            if argv[:2] == ["simulate", "install"]:
                wait_until(lambda: scheduled(port) == 1, 20)
            if argv[:2] in (["jobs", "pause"], ["jobs", "resume"]):
                # the running dev server acts on the command's change at once, not after
                # REPLICA_POLL_SECONDS (30 s here)
                start, jobs = time.monotonic(), int(argv[1] == "resume")
                wait_until(lambda jobs=jobs: scheduled(port) == jobs, 20)
                assert time.monotonic() - start < 2.0, f"{argv[1]} reached dev late"
    finally:
        stop_dev(dev)


def test_dev_says_which_port_is_taken_and_how_to_choose_another(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        out = subprocess.run([sys.executable, RUN, "dev", "--stripe-port", str(free_port())],
                             cwd=tmp_path, env=clean_env(PORT=str(busy)), capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 1
        assert f"port {busy} is taken" in out.stderr and "PORT=8123" in out.stderr
        out = subprocess.run([sys.executable, RUN, "dev", "--stripe-port", str(busy)],
                             cwd=tmp_path, env=clean_env(PORT=str(free_port())),
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 1
        assert "not a Stripe emulator" in out.stderr and "--stripe-port" in out.stderr
    help_text = cli(tmp_path, "dev", "--help").stdout
    assert "--stripe-port" in help_text and "8420" in help_text


def test_simulated_install_grants_permissions_that_an_install_sync_keeps(tmp_path):
    """`simulate install` records the permissions the install grants in dev's Install API (by
    default all the manifest asks for; `--granted` names them), so `installs sync --dev` keeps
    `balance_read` and the example job runs; with it not granted, the job is
    missing_permission."""
    port = free_port()
    dev, fake_port = start_dev(tmp_path, port, free_port())
    try:
        wait_until(lambda: healthy(port), 40)
        out = cli(tmp_path, "simulate", "install", "--account", "acct_demo", "--test")
        assert out.returncode == 0, out.stdout + out.stderr
        assert "granted: balance_read" in out.stdout
        out = cli(tmp_path, "simulate", "install", "--account", "acct_less", "--test",
                  "--granted", "customer_read")
        assert out.returncode == 0, out.stdout + out.stderr
        listed = httpx.get(f"http://127.0.0.1:{fake_port}/v1/apps/installs",
                           headers={"Authorization": "Bearer sk_test_x"}).json()["data"]
        granted = {o["account"]: o["permissions_granted"] for o in listed}
        assert "balance_read" in granted["acct_demo"]
        assert granted["acct_less"] == ["customer_read"]

        out = cli(tmp_path, "installs", "sync", "--test", "--dev")
        assert out.returncode == 0 and "test: 2 installs listed" in out.stdout, out.stderr
        out = cli(tmp_path, "jobs", "run", "balance_snapshot", "--account", "acct_demo",
                  "--test", "--dev")
        assert out.returncode == 0, out.stdout + out.stderr
        assert "balance_snapshot for acct_demo (test): succeeded" in out.stdout
        out = cli(tmp_path, "jobs", "run", "balance_snapshot", "--account", "acct_less",
                  "--test", "--dev")
        assert "balance_snapshot for acct_less (test): missing_permission" in out.stdout

        # granting it later (installing again, as an account accepts a new version) is kept
        out = cli(tmp_path, "simulate", "install", "--account", "acct_less", "--test",
                  "--granted", "balance_read,customer_read")
        assert out.returncode == 0, out.stdout + out.stderr
        assert cli(tmp_path, "installs", "sync", "--test", "--dev").returncode == 0
        out = cli(tmp_path, "jobs", "run", "balance_snapshot", "--account", "acct_less",
                  "--test", "--dev")
        assert "balance_snapshot for acct_less (test): succeeded" in out.stdout, out.stdout
    finally:
        stop_dev(dev)


def test_readme_sandbox_and_organization_walkthrough_as_written(tmp_path):
    """The README's sandbox block, line by line against `run.py dev`: the install lands in the
    sandbox mode (the Install API asked with the sandbox key), its job ran with that key, an
    event's organization context reaches the installation, and the uninstall ends it."""
    commands = readme_commands("A sandbox install and an organization's context")
    assert len(commands) == 6
    port = free_port()
    dev, _ = start_dev(tmp_path, port, free_port())
    try:
        wait_until(lambda: healthy(port), 40)
        outputs = []
        for argv in commands:
            out = cli(tmp_path, *argv)
            assert out.returncode == 0, f"{argv}: {out.stdout[-1500:]} {out.stderr[-1500:]}"
            outputs.append(out.stdout)
            if argv[:2] == ["simulate", "install"]:
                wait_until(lambda: scheduled(port) == 1, 20)
        balance = json.loads(outputs[1].split("<- 200:", 1)[1])
        assert balance["sandbox"] is not None and balance["test"] is None
        installation = json.loads(outputs[3].split("<- 200:", 1)[1])
        assert installation["org_id"] == "org_demo"
        assert installation["sandbox"]["active"] and installation["sandbox"]["context"] == \
            "org_demo"
        assert "(sandbox): succeeded" in outputs[4]
        after = cli(tmp_path, "simulate", "request", "/api/installation", "--account", "acct_sbx")
        assert json.loads(after.stdout.split("<- 200:", 1)[1])["sandbox"]["active"] is False
    finally:
        stop_dev(dev)
