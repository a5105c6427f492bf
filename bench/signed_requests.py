"""Signed-request throughput: the real endpoints against the docs' Express backend and two bare
Tornado servers, three rounds alternated in one run.

Rows (each its own process, loaded by `harness.load_one`: `wrk -t1 -c32` when installed):

- the docs' Express backend (`bench/express/server.js`: `express.raw` body,
  `stripe.webhooks.signature.verifyHeader`), skipped with a line when node is absent;
- a bare Tornado `RequestHandler` doing only `verify_header` (`bench/bare_verify_server.py`);
- the floor: Tornado's `HTTPServer` with a bare `HTTPMessageDelegate` doing only
  `verify_header` (`bench/bare_delegate_server.py`);
- the real `POST /api/installation` and `POST /api/whoami`, with every check they do (body
  limit, JSON, the signature with the stripe library, the timestamp, the installation index,
  CORS, metrics, bounded logging);
- an app's `@endpoint` on the same server (`bench/apps/bench_app`, named by `APP_PACKAGES`):
  `POST /api/bench/hello`, with a declared field and no `await`, so the lean path serves it
  (issue 24: as fast as `/api/installation`).

Ratios are of the median of the rounds. Each row also shows the server process's CPU time per
request (median over the rounds, from /proc), which other work on a shared machine disturbs less
than throughput (node's JIT and GC threads count in its figure). Targets (issue 17): real
>= 1.25 x Express and >= 0.85 x the bare delegate, for the built-in and the app endpoint alike.
`--quick` runs one short round and checks only that every answer is 200 and that the service
shuts down cleanly.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import express_backend
from harness import LoadResult, Server, free_port, generator, load_one, show

SECRET = "absec_bench" + "x" * 24
#: The app the real server runs, and its endpoint's row.
APP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "apps", "bench_app")
APP_ROW = "app POST /api/bench/hello (@endpoint)"


def prepare_db(url: str, account: str) -> None:
    from models.db import open_database
    from models.installation import apply_state
    from models.migrate import migrate
    from service.config import EXAMPLE_APP

    db = open_database(url)
    # the app's migrations too: servers started together on this file would otherwise each
    # migrate the example app at start-up (SQLite has no migration lock; a table rebuild by
    # one makes the other's fail with "database is locked")
    migrate(db, apps=[EXAMPLE_APP])
    apply_state(account, "live", True, int(time.time()), "bench")
    db.close()


def run(quick: bool = False) -> dict[str, float]:
    from cli.devtools import sign
    from service.signatures import js_stringify

    duration, rounds = (1.0, 1) if quick else (4.0, 3)
    tmp = tempfile.mkdtemp(prefix="bench-signed-")
    url = f"sqlite:///{tmp}/app.db"
    prepare_db(url, "acct_bench")
    body = js_stringify({"note": "benchmark", "amount": 1.5, "user_id": "usr_bench",
                         "account_id": "acct_bench"}).encode()
    header = {"Stripe-Signature": sign(body, SECRET), "Content-Type": "application/json"}

    servers: dict[str, Server] = {}
    targets: list[tuple[str, str, str]] = []  # (row, server, path)
    try:
        port = free_port()
        express = express_backend.start(port, SECRET, install=not quick, tmp=tmp)
        if express is not None:
            servers["express"] = express
            targets.append(("the docs' Express backend", "express", "/bare"))
        port = free_port()
        servers["handler"] = Server(["bench/bare_verify_server.py", str(port), SECRET],
                                    {"BENCH_TMP": tmp}, port)
        targets.append(("bare Tornado RequestHandler", "handler", "/bare"))
        port = free_port()
        servers["delegate"] = Server(["bench/bare_delegate_server.py", str(port), SECRET],
                                     {"BENCH_TMP": tmp}, port)
        targets.append(("bare Tornado HTTPMessageDelegate", "delegate", "/bare"))
        port = free_port()
        servers["real"] = Server(["run.py"], {"PORT": str(port), "DATABASE_URL": url,
                                              "STRIPE_APP_SECRETS": SECRET, "SCHEDULER": "off",
                                              "LOG_LEVEL": "warning", "BENCH_TMP": tmp,
                                              "APP_PACKAGES": APP}, port)
        targets.append(("real POST /api/installation", "real", "/api/installation"))
        targets.append(("real POST /api/whoami", "real", "/api/whoami"))
        targets.append((APP_ROW, "real", "/api/bench/hello"))

        results: dict[str, list[LoadResult]] = {row: [] for row, _, _ in targets}
        cpu: dict[str, list[float]] = {row: [] for row, _, _ in targets}  # µs per request
        for _row, name, path in targets:  # warm each (node's JIT needs a few seconds)
            load_one(servers[name].port, path, body, header, duration=1.0 if quick else 3.0)
        for _ in range(rounds):  # alternate, so that drift on a shared machine hits all
            for row, name, path in targets:
                before = servers[name].cpu_seconds()
                result = load_one(servers[name].port, path, body, header, duration=duration)
                results[row].append(result)
                used = servers[name].cpu_seconds() - before
                cpu[row].append(1e6 * used / result.requests if result.requests else 0.0)
    finally:
        codes = {name: server.stop() for name, server in servers.items()}
    for row, runs in results.items():
        for r in runs:
            assert set(r.statuses) == {200}, f"{row} answered {r.statuses}"
    assert codes.get("real") == 0, "the service did not shut down cleanly"

    median = {row: statistics.median(r.rps for r in runs) for row, runs in results.items()}
    real, whoami = median["real POST /api/installation"], median["real POST /api/whoami"]
    app = median[APP_ROW]
    delegate = median["bare Tornado HTTPMessageDelegate"]
    express_rps = median.get("the docs' Express backend")
    lines = [("load generator", generator())]
    for row, runs in results.items():
        rounds_text = " / ".join(f"{r.rps:,.0f}" for r in runs)
        vs = f"  {median[row] / express_rps:.2f} x Express" if express_rps else ""
        lines.append((row, f"{rounds_text} req/s  (p99 {runs[-1].p99_ms:.2f} ms){vs}  "
                           f"CPU {statistics.median(cpu[row]):.0f} µs/request"))
    cpu_of = {row: statistics.median(values) for row, values in cpu.items()}
    real_cpu = cpu_of["real POST /api/installation"]
    express_cpu = cpu_of.get("the docs' Express backend", 0.0)

    def by_cpu(other: float) -> str:  # no /proc: no CPU figures
        return f"{other / real_cpu:.2f}" if real_cpu else "n/a"

    def by_cpu_of(row: str, other: float) -> str:  # the same, for another row than the real
        return f"{other / cpu_of[row]:.2f}" if cpu_of[row] else "n/a"

    lines.append(("/api/installation vs bare delegate (target >= 0.85)",
                  f"{real / delegate:.2f}  (by CPU per request: "
                  f"{by_cpu(cpu_of['bare Tornado HTTPMessageDelegate'])})"))
    lines.append(("app @endpoint vs bare delegate (target >= 0.85)",
                  f"{app / delegate:.2f}  (by CPU per request: "
                  f"{by_cpu_of(APP_ROW, cpu_of['bare Tornado HTTPMessageDelegate'])})"))
    if express_rps:
        lines.append(("/api/installation vs Express (target >= 1.25)",
                      f"{real / express_rps:.2f}  (by CPU per request: "
                      f"{by_cpu(express_cpu)})"))
        lines.append(("app @endpoint vs Express (target >= 1.25)",
                      f"{app / express_rps:.2f}  (by CPU per request: "
                      f"{by_cpu_of(APP_ROW, express_cpu)})"))
    show("signed requests (three rounds alternated; ratios of the medians)", lines)
    out = {f"{name}_rps": median[row] for row, name in zip(
        results, ["express", "handler", "delegate", "installation", "whoami", "app"][
            0 if express_rps else 1:], strict=True)}
    out.update({"installation_vs_delegate": real / delegate,
                "whoami_vs_delegate": whoami / delegate,
                "app_vs_delegate": app / delegate,
                "app_vs_installation": app / real,
                "handler_vs_delegate": median["bare Tornado RequestHandler"] / delegate})
    if express_rps:
        out.update({"installation_vs_express": real / express_rps,
                    "whoami_vs_express": whoami / express_rps,
                    "app_vs_express": app / express_rps,
                    "delegate_vs_express": delegate / express_rps})
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    os.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    run(parser.parse_args().quick)
