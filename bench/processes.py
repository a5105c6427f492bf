"""Every core: the service with `WORKERS=2` (two processes accepting on one port) against one
process, and the docs' Express backend the way Node uses several cores (its `cluster` module,
two workers) against one, under the same signed-request load, alternated, in the same run.

On a 2-core machine the load generator needs part of a core too, so the ratio is what a second
process buys here, not a scaling limit. Quick mode checks only that every answer is 200 and
that the services shut down cleanly.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile

import express_backend
from harness import LoadResult, Server, free_port, load_one, show
from signed_requests import SECRET, prepare_db


def run(quick: bool = False) -> dict[str, float]:
    from cli.devtools import sign
    from service.signatures import js_stringify

    duration, rounds = (1.0, 1) if quick else (4.0, 2)
    tmp = tempfile.mkdtemp(prefix="bench-procs-")
    url = f"sqlite:///{tmp}/app.db"
    prepare_db(url, "acct_bench")
    body = js_stringify({"user_id": "usr_bench", "account_id": "acct_bench"}).encode()
    header = {"Stripe-Signature": sign(body, SECRET), "Content-Type": "application/json"}
    env = {"DATABASE_URL": url, "STRIPE_APP_SECRETS": SECRET, "LOG_LEVEL": "warning",
           "BENCH_TMP": tmp}
    servers: dict[str, tuple[Server, str]] = {}
    try:
        for workers in (1, 2):
            port = free_port()
            servers[f"service, WORKERS={workers}"] = (Server(
                ["run.py"], {**env, "PORT": str(port), "WORKERS": str(workers)}, port),
                "/api/whoami")
        for workers in (1, 2):
            port = free_port()
            express = express_backend.start(port, SECRET, workers, install=not quick, tmp=tmp)
            if express is None:
                break
            servers[f"Express, {workers} cluster worker{'s' if workers > 1 else ''}"] = (
                express, "/bare")
        results: dict[str, list[LoadResult]] = {name: [] for name in servers}
        for server, path in servers.values():
            load_one(server.port, path, body, header, duration=1.0 if quick else 2.0)
        for _ in range(rounds):
            for name, (server, path) in servers.items():
                results[name].append(load_one(server.port, path, body, header,
                                              duration=duration))
    finally:
        codes = {name: server.stop() for name, (server, _) in servers.items()}
    for name, runs in results.items():
        for r in runs:
            assert set(r.statuses) == {200}, f"{name} answered {r.statuses}"
    assert all(code == 0 for name, code in codes.items() if name.startswith("service")), codes
    median = {name: statistics.median(r.rps for r in runs) for name, runs in results.items()}
    lines = [(name, " / ".join(f"{r.rps:,.0f}" for r in runs) + " req/s")
             for name, runs in results.items()]
    one, two = median["service, WORKERS=1"], median["service, WORKERS=2"]
    out = {"one_rps": one, "two_rps": two, "ratio": two / one}
    lines.append(("service 2 / 1", f"{two / one:.2f} (on {os.cpu_count()} cores, load "
                                   "generator included)"))
    if "Express, 2 cluster workers" in median:
        e1, e2 = median["Express, 1 cluster worker"], median["Express, 2 cluster workers"]
        lines.append(("Express 2 / 1", f"{e2 / e1:.2f}"))
        lines.append(("service WORKERS=2 / Express cluster of 2", f"{two / e2:.2f}"))
        out.update({"express_one_rps": e1, "express_two_rps": e2, "express_ratio": e2 / e1,
                    "two_vs_express_two": two / e2})
    show("processes (signed requests; medians of alternated rounds)", lines)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    os.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    run(parser.parse_args().quick)
