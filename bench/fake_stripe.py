"""A fake Stripe API for benchmarks: every call answers after a fixed latency, and the server
records arrival times so the client's rate limit can be checked from the outside.

    python bench/fake_stripe.py PORT LATENCY_SECONDS
    GET /_stats -> {"calls", "accounts", "platform_calls", "max_in_any_second",
                    "max_in_any_0_9s", "span"}

`calls` and the peaks count per-account calls (with `Stripe-Account`), the ones job runs make;
`platform_calls` those without (the configuration doctor checking the key at start-up).

Arrival times lag send times by a scheduling delay that a busy machine stretches; a sender that
keeps to a rate in every sliding second (plus a guard) can therefore show a few more arrivals in
some one-second window. `max_in_any_0_9s` tolerates 100 ms of such lag, so it is the figure a
correctness check can hold to the rate; `max_in_any_second` is the figure to report.
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
PLATFORM_CALLS: list[float] = []  # without Stripe-Account: e.g. the doctor checking the key


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

        def peak(window: float) -> int:
            return max((bisect.bisect_left(times, t + window) - i for i, t in enumerate(times)),
                       default=0)

        self.finish({"calls": len(times), "accounts": len(ACCOUNTS),
                     "platform_calls": len(PLATFORM_CALLS),
                     "max_in_any_second": peak(1.0), "max_in_any_0_9s": peak(0.9),
                     "span": (times[-1] - times[0]) if times else 0.0})


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
