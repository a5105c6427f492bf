"""Graceful shutdown of a real `python run.py` process (issue 2)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
from conftest import (
    ROOT,
    base_env,
    compact,
    free_port,
    sigterm_while_half_received,
)


def _start(tmp_path, **extra):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRIPE_")}
    env.update(base_env(tmp_path, PORT=str(port), **extra))
    proc = subprocess.Popen([sys.executable, "run.py"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc, port
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("server did not start: " + (proc.stdout.read() if proc.stdout else ""))


def test_sigterm_lets_a_half_received_request_finish(tmp_path):
    proc, port = _start(tmp_path)
    try:
        body = compact({"user_id": "usr_1", "account_id": "acct_1"}).encode()
        data = sigterm_while_half_received(proc, port, body)
        assert data.startswith(b"HTTP/1.1 200"), data[:200]
        assert b'"account_id":"acct_1"' in data
        assert proc.wait(15) == 0
        out = proc.stdout.read()
        assert "shutting down" in out and "stopped" in out
        assert "Traceback" not in out
    finally:
        if proc.poll() is None:
            proc.kill()


def test_sigint_on_idle_server_exits_zero(tmp_path):
    proc, port = _start(tmp_path)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(15) == 0
