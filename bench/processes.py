"""The effect of the number of processes: one service process against two sharing one SQLite
file (each with its own port; a load balancer would sit in front in production), under the
same signed-request load from a separate process, in the same run.

On a 2-core machine the load generator needs a core too, so a second service process mostly
shows what sharing the CPU costs; on bigger machines the ratio is the scaling factor.
"""

from __future__ import annotations

import argparse
import os
import tempfile

from harness import Server, free_port, load, show
from signed_requests import SECRET, prepare_db


def run(quick: bool = False) -> dict[str, float]:
    from cli.devtools import sign
    from service.signatures import js_stringify

    duration = 1.0 if quick else 6.0
    tmp = tempfile.mkdtemp(prefix="bench-procs-")
    url = f"sqlite:///{tmp}/app.db"
    prepare_db(url, "acct_bench")
    body = js_stringify({"user_id": "usr_bench", "account_id": "acct_bench"}).encode()
    header = {"Stripe-Signature": sign(body, SECRET), "Content-Type": "application/json"}
    env = {"DATABASE_URL": url, "STRIPE_APP_SECRETS": SECRET, "LOG_LEVEL": "warning",
           "BENCH_TMP": tmp}
    ports = [free_port(), free_port()]
    servers = [Server(["run.py"], {**env, "PORT": str(p), "SCHEDULER": "on" if i == 0 else "off"},
                      p) for i, p in enumerate(ports)]
    try:
        load(ports, "/api/whoami", [body], [header], duration=0.5)
        one = load(ports[0], "/api/whoami", [body], [header], duration=duration)
        two = load(ports, "/api/whoami", [body], [header], duration=duration)
    finally:
        codes = [s.stop() for s in servers]
    assert set(one.statuses) == {200} and set(two.statuses) == {200}
    assert codes == [0, 0]
    show("processes (signed requests, 1 vs 2 service processes)", [
        ("1 process", f"{one.rps:8.0f} req/s  p99 {one.p99_ms:.2f} ms"),
        ("2 processes", f"{two.rps:8.0f} req/s  p99 {two.p99_ms:.2f} ms"),
        ("ratio 2/1", f"{two.rps / one.rps:.2f} (on {os.cpu_count()} cores, load generator "
                      "included)"),
    ])
    return {"one_rps": one.rps, "two_rps": two.rps, "ratio": two.rps / one.rps}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    os.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    run(parser.parse_args().quick)
