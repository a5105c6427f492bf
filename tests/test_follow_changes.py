"""A change made from the command line reaches a running server at once (issue 24): the
server's follower of other processes' installation changes wakes on the database's own signal
(SQLite's `data_version`, PostgreSQL's LISTEN/NOTIFY: models/change_watch.py), not after
`REPLICA_POLL_SECONDS`, set here to its maximum of 60 s so that only the signal can pass. Real
processes: `run.py` serving, `run.py jobs pause|resume` as a second process on the same
database, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import pytest
from conftest import ROOT, WH_LIVE, base_env, event, free_port, server_child, sign, wait_for

RUN = os.path.join(ROOT, "run.py")

#: How soon the running server must act on a change another process committed: the watch
#: checks SQLite twice a second; the rest is the CLI's own exit and the scheduler's update.
AT_ONCE = 2.0


async def scheduled(client) -> int:
    return int((await client.get("/healthz")).json()["scheduler"]["jobs"])


async def until(client, jobs: int, timeout: float) -> float:
    """Seconds until the server's scheduler holds `jobs` jobs (fails after `timeout`)."""
    start = time.monotonic()

    async def reached() -> bool:
        return await scheduled(client) == jobs
    await wait_for(reached, timeout, f"{jobs} scheduled jobs")
    return time.monotonic() - start


@pytest.mark.gen_test(timeout=120)
async def test_a_pause_from_the_command_line_reaches_the_running_server_at_once(tmp_path,
                                                                                db_url):
    env = base_env(tmp_path, DATABASE_URL=db_url, PORT=str(free_port()),
                   REPLICA_POLL_SECONDS="60", INSTALL_SYNC="off")
    async with server_child(RUN, env) as (_, client):
        raw = event("account.application.authorized", "acct_1", True)
        import json
        body = json.dumps(raw, indent=2)
        resp = await client.post("/webhooks", content=body.encode(),
                                 headers={"Stripe-Signature": sign(body, WH_LIVE)})
        assert resp.status_code == 200, resp.text
        await until(client, 1, 30)  # the server's own change: at once in any case
        for action, jobs in (("pause", 0), ("resume", 1), ("pause", 0)):
            out = await asyncio.to_thread(
                subprocess.run, [sys.executable, RUN, "jobs", action, "--account", "acct_1"],
                cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True,
                timeout=60)
            assert out.returncode == 0, out.stderr
            seconds = await until(client, jobs, 30)
            assert seconds < AT_ONCE, f"{action} reached the server after {seconds:.1f}s"


def test_closing_the_sqlite_watch_waits_for_a_read_under_way(tmp_path):
    """The watch's connection is closed only after a database thread's read on it ends (seen:
    a shutdown that closed it during a read crashed the process), and a read that starts after
    the watch is closed opens no new connection."""
    import sqlite3
    import threading

    from models.change_watch import SqliteWatch

    path = str(tmp_path / "watch.db")
    sqlite3.connect(path).close()
    watch = SqliteWatch(None, path)  # type: ignore[arg-type]  # _read needs no storage
    assert isinstance(watch._read(), int)
    holding = threading.Event()
    release = threading.Event()

    def reader():
        with watch._lock:  # as `_read` holds it while its PRAGMA runs
            holding.set()
            release.wait(5)

    thread = threading.Thread(target=reader)
    thread.start()
    assert holding.wait(5)
    closer = threading.Thread(target=watch.close)
    closer.start()
    closer.join(0.2)
    assert closer.is_alive()  # waits for the read
    assert watch._conn is not None
    release.set()
    closer.join(5)
    thread.join(5)
    assert watch._conn is None
    try:
        watch._read()
    except sqlite3.ProgrammingError:
        pass
    else:
        raise AssertionError("a read after close opened a connection")
    assert watch._conn is None
