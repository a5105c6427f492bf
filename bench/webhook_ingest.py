"""Sustained webhook ingest: verified, stored, acknowledged, and processed exactly once; and its
throughput against the same process's signed-request throughput, measured in the same run.

Sends N distinct events (a mix: one in four `account.application.authorized` for many
accounts, which the service processes after answering, the others of a type it only stores),
plus a share of redeliveries of the same ids, over keep-alive connections from a separate
process, to the real service on SQLite, once with `SQLITE_SYNCHRONOUS=normal` and once with
`full`. In each, the same server process answers signed `POST /api/whoami` requests from the
same load generator (32 connections) just before and just after the webhooks (after their
processing finished): the ratios are webhook deliveries/s over the mean of those two. Then
half as many events of a type nothing processes are sent: the ingest path alone (verify,
store, answer), which is what the target is about. Afterwards the database must hold every
distinct event exactly once, every one processed once (`attempts == 1`), and one active
installation per authorized account. Targets (issue 17): ingest >= 0.6 x signed requests,
event-loop lag p99 < 25 ms. `--quick` (CI) checks correctness only, never speed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import tempfile
import time

from harness import Server, free_port, lag_histogram, load, loop_lag_p99_ms, show

SECRET = "whsec_bench" + "y" * 24
APP_SECRET = "absec_bench" + "x" * 24


def make_events(n: int, accounts: int) -> list[dict]:
    from cli.devtools import make_event

    now = int(time.time())
    events = []
    for i in range(n):
        if i % 4 == 0:
            type_, account = "account.application.authorized", f"acct_bench{i % accounts}"
        else:
            type_, account = "invoice.paid", f"acct_bench{i % accounts}"
        events.append(make_event(type_, account, True, created=now,
                                 event_id=f"evt_bench{i:08d}",
                                 obj={"id": f"in_{i}", "object": "invoice",
                                      "amount_due": 1000 + i}))
    return events


def prepare_db(url: str, account: str) -> None:
    """Migrate and install `account` (live), so that signed requests from it are answered."""
    from models.db import open_database
    from models.installation import apply_state
    from models.migrate import migrate

    db = open_database(url)
    migrate(db)
    apply_state(account, "live", True, int(time.time()), "bench")
    db.close()


def signed_rps(port: int, seconds: float) -> float:
    """Signed `POST /api/whoami` requests/s, same load generator and connections as webhooks."""
    from cli.devtools import sign
    from service.signatures import js_stringify

    body = js_stringify({"note": "benchmark", "user_id": "usr_bench",
                         "account_id": "acct_signed"}).encode()
    header = {"Stripe-Signature": sign(body, APP_SECRET), "Content-Type": "application/json"}
    result = load(port, "/api/whoami", [body], [header], connections=32, duration=seconds)
    assert result.statuses == {200: result.requests}, f"signed requests: {result.statuses}"
    return result.rps


def deliveries(events: list[dict], dup_share: float) -> tuple[list[bytes], list[dict]]:
    """The signed bodies of `events` plus a share of redeliveries, shuffled."""
    from cli.devtools import sign

    payloads = [json.dumps(e, indent=2).encode() for e in events]
    rng = random.Random(7)
    dups = [rng.randrange(len(events)) for _ in range(int(len(events) * dup_share))]
    order = list(range(len(events))) + dups
    rng.shuffle(order)
    bodies = [payloads[i] for i in order]
    return bodies, [{"Stripe-Signature": sign(b, SECRET), "Content-Type": "application/json"}
                    for b in bodies]


def run_one(synchronous: str, quick: bool) -> dict[str, float]:
    n = 600 if quick else 20000
    accounts = 50 if quick else 2000
    dup_share = 0.1
    tmp = tempfile.mkdtemp(prefix="bench-webhooks-")
    db_path = f"{tmp}/app.db"
    prepare_db(f"sqlite:///{db_path}", "acct_signed")
    events = make_events(n, accounts)
    bodies, headers = deliveries(events, dup_share)
    # The same again with only events that nothing here processes (stored as processed): the
    # ingest path alone, without the processing of the lifecycle events competing with it.
    plain = [dict(e, id=f"evt_plain{i:08d}", type="invoice.paid")
             for i, e in enumerate(make_events(n // 2, accounts))]
    plain_bodies, plain_headers = deliveries(plain, dup_share)
    port = free_port()
    server = Server(["run.py"], {"PORT": str(port), "DATABASE_URL": f"sqlite:///{db_path}",
                                 "STRIPE_WEBHOOK_SECRETS_LIVE": SECRET,
                                 "STRIPE_APP_SECRETS": APP_SECRET, "SCHEDULER": "off",
                                 "SQLITE_SYNCHRONOUS": synchronous,
                                 "LOG_LEVEL": "warning", "BENCH_TMP": tmp}, port)
    try:
        signed_seconds = 1.0 if quick else 4.0
        signed_before = signed_rps(port, signed_seconds)
        start = lag_histogram(port)
        result = load(port, "/webhooks", bodies, headers, connections=32, duration=600,
                      limit=len(bodies))
        answered = time.time()
        lag = loop_lag_p99_ms(port, since=start)  # while the mix was sent (and processed)
        # let processing of the last events finish before counting
        deadline = time.time() + 60
        con = sqlite3.connect(db_path)
        while time.time() < deadline:
            pending = con.execute("SELECT count(*) FROM webhook_event WHERE status != "
                                  "'processed'").fetchone()[0]
            if not pending:
                break
            time.sleep(0.2)
        processing_tail = time.time() - answered
        # after the processing the webhooks started, so that it does not compete
        signed_after = signed_rps(port, signed_seconds)
        start = lag_histogram(port)
        plain_result = load(port, "/webhooks", plain_bodies, plain_headers, connections=32,
                            duration=600, limit=len(plain_bodies))
        plain_lag = loop_lag_p99_ms(port, since=start)
        stored = con.execute("SELECT count(*), count(DISTINCT id) FROM webhook_event").fetchone()
        processed_once = con.execute("SELECT count(*) FROM webhook_event WHERE status = "
                                     "'processed' AND (attempts = 1 OR type = 'invoice.paid')"
                                     ).fetchone()[0]
        lifecycle_attempts = con.execute(
            "SELECT count(*), coalesce(sum(attempts), 0) FROM webhook_event "
            "WHERE type = 'account.application.authorized'").fetchone()
        active = con.execute("SELECT count(*) FROM installation WHERE active "
                             "AND account_id != 'acct_signed'").fetchone()[0]
        con.close()
        rss = server.rss_mb()
    finally:
        code = server.stop()
    expected_active = len({e["account"] for e in events
                           if e["type"] == "account.application.authorized"})
    total = n + len(plain)
    lost = total - stored[1]
    rps, plain_rps = result.rps, plain_result.rps
    signed = (signed_before + signed_after) / 2
    show(f"webhook ingest, SQLITE_SYNCHRONOUS={synchronous} ({len(bodies)} deliveries of {n} "
         "events, SQLite, one process)", [
        ("signed POST /api/whoami/s, before / after",
         f"{signed_before:.0f} / {signed_after:.0f}  (same process and load generator)"),
        ("mix (1 in 4 processed) deliveries/s", f"{rps:.0f}  ({rps / signed:.2f} x signed; "
                                                f"p50 {result.p50_ms:.1f} ms, "
                                                f"p99 {result.p99_ms:.1f} ms)"),
        (f"stored-only ({len(plain_bodies)} deliveries of {len(plain)}) deliveries/s",
         f"{plain_rps:.0f}  ({plain_rps / signed:.2f} x signed, target >= 0.6; "
         f"p50 {plain_result.p50_ms:.1f} ms, p99 {plain_result.p99_ms:.1f} ms)"),
        ("answers", f"{result.statuses}, {plain_result.statuses}"),
        ("stored / distinct / lost", f"{stored[0]} / {stored[1]} / {lost}"),
        ("processed once", f"{processed_once} of {total}, the last {processing_tail:.1f} s after "
                           "the last answer"),
        ("lifecycle events / attempts", f"{lifecycle_attempts[0]} / {lifecycle_attempts[1]}"),
        ("active installations", f"{active} (expected {expected_active})"),
        ("server RSS", f"{rss:.0f} MB"),
        ("event-loop lag p99 (bucket bound; target < 25 ms)",
         f"mix <= {lag:g} ms, stored-only <= {plain_lag:g} ms"),
        ("load average (1 min)", f"{os.getloadavg()[0]:.1f}"),
    ])
    assert result.statuses == {200: len(bodies)}, result.statuses
    assert plain_result.statuses == {200: len(plain_bodies)}, plain_result.statuses
    assert stored == (total, total) and lost == 0, "events lost or stored twice"
    assert processed_once == total, "an event was not processed exactly once"
    assert lifecycle_attempts[0] == lifecycle_attempts[1], "a lifecycle event ran twice"
    assert active == expected_active
    assert code == 0
    return {"events_per_s": rps, "signed_per_s": signed, "ingest_vs_signed": rps / signed,
            "stored_only_events_per_s": plain_rps, "stored_only_vs_signed": plain_rps / signed,
            "p99_ms": result.p99_ms, "stored_only_p99_ms": plain_result.p99_ms, "lost": lost,
            "loop_lag_p99_ms": lag, "stored_only_loop_lag_p99_ms": plain_lag}


def run(quick: bool = False) -> dict[str, float]:
    """Both `SQLITE_SYNCHRONOUS` values; the figures of each, prefixed with its name."""
    out: dict[str, float] = {}
    for synchronous in ("normal", "full"):
        for key, value in run_one(synchronous, quick).items():
            out[f"{synchronous}_{key}"] = value
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    os.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    run(parser.parse_args().quick)
