"""Signed-request throughput and latency: the real `/api/whoami` against a bare handler.

The real endpoint does everything a production request does (body streaming and limit, JSON
parse, signature over the raw body with the stripe library, future-timestamp check, the
installation check, metrics, JSON answer). The baseline is a bare Tornado handler doing only
`verify_header`. Both run as separate processes, loaded by the same generator from a third
process, in the same run. Target: ratio >= 0.8.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from harness import Server, free_port, load, show

SECRET = "absec_bench" + "x" * 24


def prepare_db(url: str, account: str) -> None:
    from models.db import open_database
    from models.installation import apply_state
    from models.migrate import migrate

    db = open_database(url)
    migrate(db)
    apply_state(account, "live", True, int(time.time()), "bench")
    db.close()


def run(quick: bool = False) -> dict[str, float]:
    from cli.devtools import sign
    from service.signatures import js_stringify

    duration = 1.0 if quick else 8.0
    tmp = tempfile.mkdtemp(prefix="bench-signed-")
    url = f"sqlite:///{tmp}/app.db"
    prepare_db(url, "acct_bench")
    body = js_stringify({"note": "benchmark", "amount": 1.5, "user_id": "usr_bench",
                         "account_id": "acct_bench"}).encode()
    header = {"Stripe-Signature": sign(body, SECRET), "Content-Type": "application/json"}

    bare_port, real_port = free_port(), free_port()
    bare = Server(["bench/bare_verify_server.py", str(bare_port), SECRET], {}, bare_port)
    real = Server(["run.py"], {"PORT": str(real_port), "DATABASE_URL": url,
                               "STRIPE_APP_SECRETS": SECRET, "SCHEDULER": "off",
                               "LOG_LEVEL": "warning", "BENCH_TMP": tmp}, real_port)
    try:
        # warm both, then measure alternately so drift on a shared machine hits both
        load(bare_port, "/bare", [body], [header], duration=0.5)
        load(real_port, "/api/whoami", [body], [header], duration=0.5)
        bares, reals = [], []
        for _ in range(1 if quick else 2):
            bares.append(load(bare_port, "/bare", [body], [header], duration=duration))
            reals.append(load(real_port, "/api/whoami", [body], [header], duration=duration))
    finally:
        bare.stop()
        code = real.stop()
    b = max(bares, key=lambda r: r.rps)
    r = max(reals, key=lambda r: r.rps)
    assert set(r.statuses) == {200}, f"real endpoint answered {r.statuses}"
    assert set(b.statuses) == {200}, f"bare endpoint answered {b.statuses}"
    assert code == 0, "the service did not shut down cleanly"
    ratio = r.rps / b.rps
    show("signed requests (POST /api/whoami vs bare verify_header)", [
        ("bare verify_header", f"{b.rps:8.0f} req/s  p50 {b.p50_ms:.2f} ms  p99 {b.p99_ms:.2f} ms"),
        ("real endpoint", f"{r.rps:8.0f} req/s  p50 {r.p50_ms:.2f} ms  p99 {r.p99_ms:.2f} ms"),
        ("ratio (target >= 0.8)", f"{ratio:.2f}"),
    ])
    return {"bare_rps": b.rps, "real_rps": r.rps, "ratio": ratio, "real_p99_ms": r.p99_ms,
            "bare_p99_ms": b.p99_ms}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    os.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    run(parser.parse_args().quick)
