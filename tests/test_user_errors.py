"""Errors a user can act on (issue 13, section 5), as subprocesses: a DATABASE_URL typo, an
unreachable database for every command, and `run.py dev` keeping inherited keys to itself."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time

import pytest
from conftest import free_port
from test_e2e import RUN, clean_env, cli

from cli.dev import write_private


def test_a_sqlite_url_with_two_slashes_is_refused_with_the_fix(tmp_path):
    out = cli(tmp_path, "jobs", "list", DATABASE_URL="sqlite://relative.db")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "DATABASE_URL" in lines[0] and "sqlite:///relative.db" in lines[0]
    assert "TypeError" not in out.stderr


@pytest.mark.parametrize("command", [["jobs", "list"], ["migrate"], ["events", "list"],
                                     ["jobs", "pause", "--account", "acct_1"], ["serve"]])
def test_an_unreachable_database_is_one_line_for_every_command(tmp_path, command):
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"  # nobody listens there
    out = cli(tmp_path, *command, DATABASE_URL=url, PORT=str(free_port()))
    assert out.returncode != 0
    assert "Traceback" not in out.stderr, out.stderr
    errors = [line for line in out.stderr.splitlines() if "DATABASE_URL" in line]
    assert len(errors) == 1, out.stderr
    assert "connection" in errors[0].lower() or "refused" in errors[0].lower()
    # besides that line, only serve's start-up notes (one per feature left off) and no others
    others = [line for line in out.stderr.splitlines() if "DATABASE_URL" not in line]
    assert all(" INFO app.server: " in line for line in others), out.stderr


def test_an_sqlite_folder_that_cannot_exist_is_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    out = cli(tmp_path, "jobs", "list", DATABASE_URL=f"sqlite:///{tmp_path}/file/app.db")
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and "DATABASE_URL" in out.stderr, out.stderr


def test_dev_prints_only_its_own_secrets_and_keeps_them_private(tmp_path):
    real_key, real_hook = "sk_live_" + "R" * 24, "whsec_" + "W" * 24
    (tmp_path / "var").mkdir()
    env_file = tmp_path / "var" / "dev.env"
    old = tmp_path / "old.env"
    port, stripe_port = free_port(), free_port()
    dev = subprocess.Popen(
        [sys.executable, "-u", RUN, "dev", "--stripe-port", str(stripe_port)], cwd=tmp_path,
        env=clean_env(PORT=str(port), STRIPE_SECRET_KEY_LIVE=real_key,
                      STRIPE_WEBHOOK_SECRETS_LIVE=real_hook),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = dev.stdout.readline()
            output.append(line)
            if line.startswith("backend:") or not line:
                break
    finally:
        dev.send_signal(signal.SIGTERM)
        rest, _ = dev.communicate(timeout=30)
    text = "".join(output) + rest
    assert "backend:" in text, text
    assert real_key not in text and real_hook not in text
    assert "STRIPE_SECRET_KEY_LIVE: set in the environment (not shown)" in text
    assert "STRIPE_SECRET_KEY_TEST=sk_test_dev" in text  # what it generated is shown
    assert stat.S_IMODE(os.stat(env_file).st_mode) == 0o600
    assert real_key not in env_file.read_text()
    # rewriting a file that exists (an older version's, world-readable) makes it private too
    old.write_text("")
    os.chmod(old, 0o644)
    write_private(str(old), "x")
    assert stat.S_IMODE(os.stat(old).st_mode) == 0o600
