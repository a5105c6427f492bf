"""Reconciling 100,000 installs: time, Stripe calls per second, event-loop lag, memory.

    python bench/install_sync.py [--installs 100000] [--rate 80] [--quick]

The Install API fake (cli/fake_installs.py) runs as a separate process seeded with N live
installs; this process runs `InstallSync.sync("live")` against an empty SQLite table (so every
install is a difference to apply: the worst case), with the live rate limit, while a probe task
measures how late the event loop wakes it (every 10 ms). Printed: listing and total seconds,
pages and the highest count of calls in any one second (must stay within the rate limit), the
worst and 99th-percentile loop lag, and the process's peak memory.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cli import fake_installs  # noqa: E402
from jobs.installs import InstallSync  # noqa: E402
from jobs.stripe_api import StripeClients  # noqa: E402
from models.db import Storage, open_database  # noqa: E402
from models.installation_index import InstallationIndex  # noqa: E402
from models.migrate import migrate  # noqa: E402

APP = "com.example.benchapp"


async def probe(lags: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        start = time.perf_counter()
        await asyncio.sleep(0.01)
        lags.append(max(0.0, time.perf_counter() - start - 0.01))


async def bench(n: int, rate: float) -> dict[str, float]:
    proc, url = fake_installs.start(0, extra=["--seed", str(n), "--seed-app", APP,
                                              "--seed-live"], timeout=120)
    sent: list[float] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            db = open_database(f"sqlite:///{tmp}/bench.db")
            migrate(db)
            storage = Storage(db, workers=4)
            clients = StripeClients({"live": "sk_live_bench", "test": None}, {"live": rate},
                                    url, on_response=lambda mode, status: sent.append(
                                        time.monotonic()))
            index = InstallationIndex(storage)
            await index.load()
            sync = InstallSync(APP, clients, storage, index, replica="bench")
            lags: list[float] = []
            stop = asyncio.Event()
            prober = asyncio.get_running_loop().create_task(probe(lags, stop))
            start = time.perf_counter()
            listed = await sync.list_installs("live")
            listing = time.perf_counter() - start
            # the full sync (lists again, then applies every difference)
            start = time.perf_counter()
            result = await sync.sync("live")
            total = time.perf_counter() - start
            stop.set()
            await prober
            await clients.close()
            storage.close()
    finally:
        proc.terminate()
        proc.wait(5)
    sent.sort()
    peak, j = 0, 0
    for i, t in enumerate(sent):
        while sent[j] <= t - 1.0:
            j += 1
        peak = max(peak, i - j + 1)
    lags.sort()
    return {"installs": n, "listed": len(listed), "activated": result.activated,
            "listing_s": round(listing, 2), "sync_s": round(total, 2),
            "pages": len(sent), "max_calls_in_any_second": peak, "rate_limit": rate,
            "loop_lag_max_ms": round(lags[-1] * 1000, 1),
            "loop_lag_p99_ms": round(lags[int(len(lags) * 0.99)] * 1000, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def run(quick: bool = False, n: int = 100_000, rate: float = 80.0) -> dict[str, float]:
    """For bench/run_all.py: the figures, and the correctness checks as assertions."""
    figures = asyncio.run(bench(2000 if quick else n, rate))
    for key, value in figures.items():
        print(f"  {key:26} {value}")
    assert figures["listed"] == figures["activated"] == figures["installs"], figures
    assert figures["max_calls_in_any_second"] <= rate, "the rate limit was exceeded"
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--installs", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=80.0)
    parser.add_argument("--quick", action="store_true", help="2,000 installs")
    args = parser.parse_args()
    run(args.quick, args.installs, args.rate)


if __name__ == "__main__":
    main()
