"""A fake Stripe API for benchmarks: every call answers after a fixed latency, and the server
records arrival times so the client's rate limit can be checked from the outside.

    python bench/fake_stripe.py PORT LATENCY_SECONDS
    GET /_stats -> {"calls", "accounts", "max_in_any_second", "span", "platform_calls"}

`calls` counts per-account calls (with `Stripe-Account`), the ones jobs make; the service's
start-up doctor checks the platform key with one call of its own, counted apart.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import sys
import time

import tornado.web

ARRIVALS: list[float] = []
ACCOUNTS: set[str] = set()
PLATFORM_CALLS: list[float] = []


class Balance(tornado.web.RequestHandler):
    async def get(self) -> None:
        account = self.request.headers.get("Stripe-Account")
        if account:
            ARRIVALS.append(time.monotonic())
            ACCOUNTS.add(account)
        else:
            PLATFORM_CALLS.append(time.monotonic())
        await asyncio.sleep(LATENCY)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"object": "balance", "livemode": False,
                                "available": [{"amount": 1000, "currency": "usd"}],
                                "pending": [{"amount": 0, "currency": "usd"}]}))


class Stats(tornado.web.RequestHandler):
    def get(self) -> None:
        times = sorted(ARRIVALS)
        peak = 0
        for i, t in enumerate(times):
            peak = max(peak, bisect.bisect_left(times, t + 1.0) - i)
        self.finish({"calls": len(times), "accounts": len(ACCOUNTS), "max_in_any_second": peak,
                     "span": (times[-1] - times[0]) if times else 0.0,
                     "platform_calls": len(PLATFORM_CALLS)})


class Health(tornado.web.RequestHandler):
    def get(self) -> None:
        self.finish("ok")


async def main(port: int) -> None:
    tornado.web.Application([(r"/v1/balance", Balance), (r"/_stats", Stats),
                             (r"/healthz", Health)]).listen(port, "127.0.0.1")
    await asyncio.Event().wait()


if __name__ == "__main__":
    LATENCY = float(sys.argv[2])
    asyncio.run(main(int(sys.argv[1])))
