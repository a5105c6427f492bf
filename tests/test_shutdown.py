"""Graceful shutdown of a real `python run.py` process (issue 2)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
from conftest import (
    APP_SECRET,
    ROOT,
    base_env,
    compact,
    free_port,
    sign,
    wait_until_closed,
    wait_until_in_flight,
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
        head = (f"POST /api/installation HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
                f"Stripe-Signature: {sign(body, APP_SECRET)}\r\n"
                "Content-Type: application/json\r\n\r\n").encode()
        conn = socket.create_connection(("127.0.0.1", port))
        conn.sendall(head + body[:10])  # headers and part of the body: in flight
        wait_until_in_flight(port, 1)
        proc.send_signal(signal.SIGTERM)
        wait_until_closed(port)  # no longer accepting new connections
        assert proc.poll() is None, "exited while a request was in flight"
        conn.sendall(body[10:])
        conn.settimeout(10)
        data = b""
        while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
        conn.close()
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
