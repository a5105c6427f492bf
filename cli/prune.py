"""`run.py prune`: apply the retention policy now (`models/retention.py`, `RETENTION_DAYS`).

The server does the same every hour; this is for an operator who wants the space back now, or
runs no server with the scheduler. It deletes in small batches, so it can run beside a live
server.
"""

from __future__ import annotations

import argparse
from typing import Any

from cli.offline import with_services
from models.retention import FAILED_FACTOR, prune
from service.services import Services


def add_parser(sub: Any) -> None:
    sub.add_parser("prune", help="apply the retention policy now").set_defaults(
        func=with_services(prune_now))


async def prune_now(services: Services, args: argparse.Namespace) -> int:
    days = services.config.retention_days
    counts = await prune(services.storage, days)
    print(f"pruned with RETENTION_DAYS={days:g} (failed and dead events: "
          f"{days * FAILED_FACTOR:g} days):")
    for name, count in counts.items():
        print(f"  {name.replace('_', ' ')}: {count}")
    return 0
