"""Scheduled runs at scale: 100,000 installations.

1. Start-up: a SQLite database with N active installations (installed two days ago, no runs
   recorded); the time from starting `python run.py` to every installation's job being in the
   scheduler, and the service's resident memory then. Targets: < 10 s and < 400 MB.
2. Run throughput: the restart finds the daily `balance_snapshot` fires missed within the grace
   hour (about N/24 of them, by the per-account spread) and runs them against a fake Stripe
   with 50 ms latency. Throughput is compared with its bound, min(JOB_CONCURRENCY / latency,
   STRIPE_RATE_LIMIT_LIVE); the fake Stripe counts the most calls that arrived in any one
   second. Targets: >= 0.9 of the bound, never above the configured rate.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import tempfile
import time
import urllib.request

from harness import Server, free_port, show

LATENCY = 0.05


def prepare(db_url: str, db_path: str, n: int) -> None:
    from models.db import open_database
    from models.migrate import migrate

    db = open_database(db_url)
    migrate(db)
    db.close()
    installed = time.time() - 2 * 86400
    con = sqlite3.connect(db_path)
    con.executemany(
        "INSERT INTO installation (account_id, mode, active, installed_at, confirmed, state_at,"
        " state_seq, jobs_paused, approval_required, details_at, created_at, updated_at)"
        " VALUES (?, 'live', 1, ?, 1, ?, 0, 0, 0, 0, ?, ?)",
        [(f"acct_b{i:07d}", installed, int(installed), installed, installed) for i in range(n)])
    con.commit()
    con.close()


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def run(quick: bool = False) -> dict[str, float]:
    n = 2000 if quick else 100_000
    concurrency, rate = 10, 80.0
    tmp = tempfile.mkdtemp(prefix="bench-sched-")
    db_path = f"{tmp}/app.db"
    prepare(f"sqlite:///{db_path}", db_path, n)

    stripe_port = free_port()
    fake = Server(["bench/fake_stripe.py", str(stripe_port), str(LATENCY)], {}, stripe_port)
    port = free_port()
    started = time.monotonic()
    started_wall = int(time.time())
    service = Server(["run.py"], {
        "PORT": str(port), "DATABASE_URL": f"sqlite:///{db_path}", "SCHEDULER": "on",
        "STRIPE_SECRET_KEY_LIVE": "sk_live_bench", "STRIPE_API_BASE":
        f"http://127.0.0.1:{stripe_port}", "JOB_CONCURRENCY": str(concurrency),
        "STRIPE_RATE_LIMIT_LIVE": str(rate), "LOG_LEVEL": "warning", "BENCH_TMP": tmp}, port)
    try:
        health = get_json(f"http://127.0.0.1:{port}/healthz")
        while health["scheduler"]["jobs"] < n and time.monotonic() - started < 120:
            time.sleep(0.05)
            health = get_json(f"http://127.0.0.1:{port}/healthz")
        startup = time.monotonic() - started
        rss = service.rss_mb()
        scheduled = health["scheduler"]["jobs"]
        # the catch-up burst (fires missed before the start; the regular schedule goes on
        # firing about N/86400 runs a second, which are not counted): wait until it is done
        con = sqlite3.connect(db_path, timeout=30)
        missed = f"FROM job_run WHERE fire_time < {started_wall}"
        last, stable_since = -1, time.monotonic()
        while time.monotonic() - stable_since < 3 and time.monotonic() - started < 900:
            done = con.execute(f"SELECT count(*) {missed} AND outcome != 'running'").fetchone()[0]
            if done != last:
                last, stable_since = done, time.monotonic()
            time.sleep(0.2)
        con.close()
        code = service.stop()  # graceful: runs in progress finish first
        stats = get_json(f"http://127.0.0.1:{stripe_port}/_stats")
        con = sqlite3.connect(db_path, timeout=30)
        row = con.execute(f"SELECT count(*), sum(outcome = 'succeeded'), min(started_at), "
                          f"max(finished_at), count(DISTINCT account_id) {missed}").fetchone()
        total = con.execute("SELECT count(*) FROM job_run").fetchone()[0]
        snapshots = con.execute("SELECT count(*) FROM balance_snapshot").fetchone()[0]
        con.close()
    finally:
        if service.proc.poll() is None:
            service.stop()
        fake.stop()
    runs, succeeded, first, last_end, accounts = row
    elapsed = (last_end - first) if runs else 0.0
    throughput = runs / elapsed if elapsed else 0.0
    bound = min(concurrency / LATENCY, rate)
    show(f"scheduled runs ({n} installations, SQLite, one process)", [
        ("start to all jobs scheduled (target < 10 s)", f"{startup:.1f} s ({scheduled} jobs)"),
        ("resident memory (target < 400 MB)", f"{rss:.0f} MB"),
        ("missed fires run on restart", f"{runs} ({succeeded} succeeded, {accounts} accounts)"),
        ("all runs / Stripe calls / snapshots", f"{total} / {stats['calls']} / {snapshots}"),
        ("run throughput", f"{throughput:.1f} runs/s"),
        ("bound min(concurrency/latency, rate)", f"{bound:.1f} runs/s"),
        ("ratio (target >= 0.9)", f"{throughput / bound:.2f}"),
        ("most Stripe calls in any second", f"{stats['max_in_any_second']} (limit {rate:.0f})"),
    ])
    assert scheduled == n, f"only {scheduled} of {n} jobs scheduled"
    assert runs > 0 and succeeded == runs == accounts
    assert total == snapshots == stats["calls"], "a run without its Stripe call or snapshot"
    assert stats["max_in_any_second"] <= rate + 1, "the rate limit was exceeded"
    assert code == 0
    return {"startup_s": startup, "rss_mb": rss, "runs_per_s": throughput,
            "ratio": throughput / bound, "max_calls_in_second": stats["max_in_any_second"]}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    os.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    run(parser.parse_args().quick)
