"""Long-running tasks at scale: 10,000 queued tasks across 1,000 accounts, 2 worker processes
sharing one PostgreSQL.

Each process runs the real `TaskWorker` (claims with `FOR UPDATE SKIP LOCKED` and advisory
locks, leases renewed) with `--slots` slots; each task sleeps `--duration` seconds and records
when it ran and where. `concurrency_per_account` is 1. Checked afterwards:

- none lost: every task succeeded; none doubled: each ran exactly once, with one attempt;
- per-account concurrency held: no two runs of one account overlap in time (both processes
  write wall-clock times of one machine);
- throughput, from the first start to the last end, against the bound the slots set,
  processes x slots / duration. Target: >= 0.9 of the bound.

    python bench/tasks.py [--tasks 10000 --accounts 1000 --slots 50 --duration 0.2]
    python bench/run_all.py tasks [--quick]   # quick: 1,000 tasks, correctness only

Needs a PostgreSQL at TEST_PG_ADMIN_URL (default postgresql://postgres@127.0.0.1:5432/postgres);
a throw-away database is created and dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

PG_ADMIN = os.environ.get("TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def prepare(url: str, tasks: int, accounts: int) -> None:
    from models.db import open_database
    from models.installation import Installation
    from models.migrate import migrate
    from models.tasks import Task

    db = open_database(url)
    migrate(db)
    t = time.time()
    names = [f"acct_bench{i:05d}" for i in range(accounts)]
    with db.atomic():
        Installation.insert_many([
            {"account_id": a, "mode": "test", "active": True, "installed_at": t,
             "confirmed": True, "state_at": 1, "created_at": t, "updated_at": t}
            for a in names]).execute()
        rows = [{"id": f"task_{uuid.uuid4().hex}", "account_id": names[i % accounts],
                 "mode": "test", "name": "bench_sleep", "input": "{}", "status": "queued",
                 "max_attempts": 3, "created_at": t, "next_attempt_at": t}
                for i in range(tasks)]
        for start in range(0, len(rows), 1000):
            Task.insert_many(rows[start:start + 1000]).execute()
    db.execute_sql("ANALYZE")  # the statistics autovacuum would gather on a live system
    db.close()


async def work(url: str, name: str, slots: int, duration: float, out: str) -> None:
    from jobs.context import Toolbox
    from jobs.registry import Registry
    from jobs.stripe_api import StripeClients
    from jobs.task_worker import TaskWorker
    from jobs.tasks import task
    from models.db import Storage, open_database
    from models.installation_index import InstallationIndex
    from models.tasks import count_by_status

    log: list[tuple[str, str, float, float]] = []

    @task(concurrency_per_account=1)
    async def bench_sleep(ctx):  # noqa: ANN001, ANN202
        start = time.time()
        await asyncio.sleep(duration)
        log.append((ctx.task_id, ctx.account_id, start, time.time()))

    registry = Registry()
    registry.tasks["bench_sleep"] = bench_sleep.__task_spec__
    db = open_database(url)
    storage = Storage(db, workers=4)
    index = InstallationIndex(storage)
    await index.load()
    clients = StripeClients({}, {"live": 80, "test": 20})
    worker = TaskWorker(Toolbox(registry, storage, index, clients, replica=name), slots=slots,
                        lease=10)
    worker.start()
    while True:
        await asyncio.sleep(0.5)
        counts = await storage.run(count_by_status)
        if counts["queued"] == 0 and counts["running"] == 0:
            break
    await worker.stop(5)
    await clients.close()
    storage.close()
    with open(out, "w") as f:
        json.dump(log, f)


def reachable() -> bool:
    """Whether the PostgreSQL admin URL answers (the benchmark is skipped with a line if not)."""
    from playhouse.db_url import connect

    try:
        connect(PG_ADMIN, connect_timeout=3).connect()
    except Exception:
        return False
    return True


def measure(tasks: int, accounts: int, slots: int, duration: float,
            processes: int) -> dict[str, Any]:
    """Queue `tasks`, run them with `processes` workers; the figures and correctness counts."""
    from playhouse.db_url import connect

    dbname = "bench_tasks_" + uuid.uuid4().hex[:10]
    admin = connect(PG_ADMIN)
    admin.execute_sql(f"CREATE DATABASE {dbname}")
    url = PG_ADMIN.rsplit("/", 1)[0] + "/" + dbname
    try:
        prepare(url, tasks, accounts)
        with tempfile.TemporaryDirectory() as tmp:
            outs = [os.path.join(tmp, f"w{i}.json") for i in range(processes)]
            procs = [subprocess.Popen([sys.executable, __file__, "--worker", url, out,
                                       "--name", f"worker{i}", "--slots", str(slots),
                                       "--duration", str(duration)])
                     for i, out in enumerate(outs)]
            for p in procs:
                p.wait()
            assert all(p.returncode == 0 for p in procs), "a worker process failed"
            runs = []
            for out in outs:
                with open(out) as f:
                    runs.append(json.load(f))
        from models.db import open_database
        from models.tasks import Task

        db = open_database(url)
        rows = list(Task.select(Task.id, Task.status, Task.attempts, Task.claimed_by).tuples())
        db.close()
    finally:
        admin.execute_sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = %s", (dbname,))
        admin.execute_sql(f"DROP DATABASE IF EXISTS {dbname}")
        admin.close()

    executions = [r for log in runs for r in log]
    per_task: dict[str, int] = defaultdict(int)
    for task_id, *_ in executions:
        per_task[task_id] += 1
    lost = [r for r in rows if r[1] != "succeeded"]
    doubled = [t for t, n in per_task.items() if n > 1] + [r[0] for r in rows if r[2] != 1]
    by_account = defaultdict(list)
    for _, account, start, end in executions:
        by_account[account].append((start, end))
    overlaps = 0
    for spans in by_account.values():
        spans.sort()
        overlaps += sum(1 for a, b in zip(spans, spans[1:], strict=False) if b[0] < a[1])
    first = min(s for _, _, s, _ in executions)
    last = max(e for _, _, _, e in executions)
    throughput = len(executions) / (last - first)
    bound = processes * slots / duration
    return {
        "tasks": tasks, "accounts": accounts, "processes": processes,
        "slots": slots, "duration": duration,
        "ran": len(executions), "lost": len(lost), "doubled": len(doubled),
        "account_overlaps": overlaps,
        "per_process": [len(log) for log in runs],
        "seconds": round(last - first, 2), "throughput": round(throughput, 1),
        "bound": round(bound, 1), "ratio": round(throughput / bound, 3),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def check(result: dict[str, Any], ratio: bool) -> None:
    """AssertionError unless none was lost or doubled, no account overlapped, and (`ratio`)
    throughput reached 0.9 of the slot bound."""
    assert result["lost"] == 0 and result["ran"] == result["tasks"], f"lost: {result}"
    assert result["doubled"] == 0, f"a task ran twice: {result}"
    assert result["account_overlaps"] == 0, f"an account ran two at once: {result}"
    if ratio:
        assert result["ratio"] >= 0.9, f"throughput {result['ratio']} of the slot bound"


def run(quick: bool = False) -> dict[str, Any]:
    """For bench/run_all.py: full size, or (`quick`) 1,000 tasks checked for correctness only.
    Skipped, with a line, when PostgreSQL is not reachable."""
    if not reachable():
        print(f"\n== tasks: skipped (no PostgreSQL at {PG_ADMIN}; set TEST_PG_ADMIN_URL)")
        return {"skipped": True}
    size = ((1_000, 100, 10, 0.05) if quick else (10_000, 1_000, 50, 0.2))
    result = measure(*size, processes=2)
    from harness import show

    show(f"tasks: {result['tasks']:,} queued across {result['accounts']:,} accounts, "
         f"{result['processes']} processes x {result['slots']} slots, PostgreSQL", [
             ("ran", f"{result['ran']:,} (lost {result['lost']}, doubled {result['doubled']}, "
                     f"account overlaps {result['account_overlaps']}), per process "
                     f"{result['per_process']}"),
             ("throughput", f"{result['throughput']:,.0f} tasks/s in {result['seconds']} s; "
                            f"slot bound {result['bound']:,.0f}/s; ratio {result['ratio']}"),
             ("load average", str(result["load_average"])),
         ])
    check(result, ratio=not quick)
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--accounts", type=int, default=1_000)
    parser.add_argument("--slots", type=int, default=50)
    parser.add_argument("--duration", type=float, default=0.2)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--worker", nargs=2, metavar=("URL", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--name", default="w", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        asyncio.run(work(args.worker[0], args.name, args.slots, args.duration, args.worker[1]))
        return 0
    result = measure(args.tasks, args.accounts, args.slots, args.duration, args.processes)
    print(json.dumps(result, indent=2))
    try:
        check(result, ratio=True)
    except AssertionError as exc:
        print(f"FAIL: {exc}")
        return 1
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
