"""`WORKERS=N`: N processes on one port (service/workers.py), with a real `python run.py`."""

from __future__ import annotations

import contextlib
import json
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
    WH_LIVE,
    base_env,
    compact,
    event,
    free_port,
    sign,
    sigterm_while_half_received,
)

from service.config import Config
from service.workers import worker_config

IDS = {"user_id": "usr_1", "account_id": "acct_1"}


def test_only_worker_zero_runs_the_scheduler():
    config = Config.from_env({"WORKERS": "3"})
    assert [worker_config(config, i).scheduler for i in range(3)] == [True, False, False]
    assert {worker_config(config, i).workers for i in range(3)} == {1}
    # each worker listens on the port the parent reserved (the kernel's pick for PORT=0)
    assert worker_config(Config.from_env({"WORKERS": "3", "PORT": "0"}), 1, 4321).port == 4321
    off = Config.from_env({"WORKERS": "3", "SCHEDULER": "off"})
    assert not any(worker_config(off, i).scheduler for i in range(3))
    assert Config.from_env({"WORKERS": "auto"}).workers == (os.cpu_count() or 1)


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def test_two_workers_serve_one_port_and_drain_on_sigterm(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRIPE_")}
    env.update(base_env(tmp_path, PORT=str(port), WORKERS="2", REPLICA_POLL_SECONDS="0.1"))
    proc = subprocess.Popen([sys.executable, "run.py"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 30
        while len(_children(proc.pid)) < 2 or not _healthy(url):
            assert time.time() < deadline, "workers did not start"
            time.sleep(0.1)
        workers = _children(proc.pid)
        assert len(workers) == 2
        # an install arrives as a webhook at whichever worker; every worker's index follows it
        raw = json.dumps(event("account.application.authorized"))
        resp = httpx.post(f"{url}/webhooks", content=raw.encode(),
                          headers={"Stripe-Signature": sign(raw, WH_LIVE)}, timeout=10)
        assert resp.status_code == 200, resp.text
        body = compact(IDS).encode()
        answered = 0
        deadline = time.time() + 20
        while answered < 20:  # twenty in a row, each on a new connection
            assert time.time() < deadline, "the install did not reach every worker"
            resp = httpx.post(f"{url}/api/whoami", content=body, timeout=10,
                              headers={"Stripe-Signature": sign(body, APP_SECRET)})
            answered = answered + 1 if resp.status_code == 200 else 0
            time.sleep(0.02)
        # SIGTERM to the parent: a half-received request still gets its answer
        data = sigterm_while_half_received(proc, port, body)
        assert data.startswith(b"HTTP/1.1 200"), data[:200]
        assert proc.wait(20) == 0
        for pid in workers:
            assert not os.path.exists(f"/proc/{pid}") or _is_zombie(pid)
        out = proc.stdout.read() if proc.stdout else ""
        assert out.count("app.server: stopped") == 2, out[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _listening(port: int) -> int:
    """How many sockets listen on TCP `port` (IPv4 and IPv6), from /proc/net."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                count += state == "0A" and int(local.rsplit(":", 1)[1], 16) == port
    return count


def test_each_worker_listens_on_its_own_socket_and_a_taken_port_fails_cleanly(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRIPE_")}
    env.update(base_env(tmp_path, PORT=str(port), WORKERS="2"))
    proc = subprocess.Popen([sys.executable, "run.py"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 30
        # a worker listens once its server is ready (till then the others take its share)
        while (len(_children(proc.pid)) < 2 or _listening(port) < 2
               or not _healthy(f"http://127.0.0.1:{port}")):
            assert time.time() < deadline, "workers did not start"
            time.sleep(0.1)
        # SO_REUSEPORT: one listening socket per worker, none in the parent (which only holds
        # the port with a bound socket that never listens)
        assert _listening(port) == 2
        # a second instance on the same port must not join the first one's SO_REUSEPORT group
        # (the kernel would split the connections between the two): it fails like any taken port
        second = subprocess.run([sys.executable, "run.py"], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 1, second.stdout + second.stderr
        assert "cannot listen on 127.0.0.1:" in second.stdout + second.stderr
        assert _listening(port) == 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # a port another program listens on: one line saying so, exit 1, no worker started
    with socket.create_server(("127.0.0.1", port)):
        done = subprocess.run([sys.executable, "run.py"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "cannot listen on 127.0.0.1:" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr


def test_workers_drain_and_exit_when_the_parent_is_killed(tmp_path):
    """SIGKILL to the parent (an OOM kill, a supervisor's last resort): no worker is left
    serving the port on its own."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRIPE_")}
    env.update(base_env(tmp_path, PORT=str(port), WORKERS="2"))
    proc = subprocess.Popen([sys.executable, "run.py"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        deadline = time.time() + 30
        while len(_children(proc.pid)) < 2 or _listening(port) < 2:
            assert time.time() < deadline, "workers did not start"
            time.sleep(0.1)
        workers = _children(proc.pid)
        proc.kill()
        proc.wait()
        deadline = time.time() + 20
        while any(os.path.exists(f"/proc/{pid}") and not _is_zombie(pid) for pid in workers):
            assert time.time() < deadline, "a worker outlived its parent"
            time.sleep(0.1)
        assert _listening(port) == 0
    finally:
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_workers_start_with_the_parents_objects_frozen(tmp_path):
    # The parent freezes what it holds before forking, so a worker's collections never write to
    # those objects (their pages stay shared): each worker's serve_one finds them in the
    # permanent generation before it has frozen anything itself.
    script = (
        "import gc, json, sys\n"
        "from service.config import Config\n"
        "from service.workers import run_workers\n"
        "config = Config.from_env(json.loads(sys.argv[1]))\n"
        "sys.exit(run_workers(config, lambda c, s: 0 if gc.get_freeze_count() > 10000 else 3))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRIPE_")}
    done = subprocess.run([sys.executable, "-c", script, json.dumps(base_env(tmp_path,
                          WORKERS="2"))], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
