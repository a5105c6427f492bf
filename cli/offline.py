"""What the operator commands that work on the database share: the graph, opened for one command.

    sub.add_parser("list").set_defaults(func=with_services(list_jobs))

`with_services(body)` makes a `func(config, args) -> exit code` that starts
`service.services.Services` through its `OFFLINE` steps (database migrated, installations
loaded, the Stripe clients and workers built; no scheduler, nothing served; job runs recorded
with replica `cli`), awaits `body(services, args)` and undoes the steps again.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from service.config import Config
from service.services import OFFLINE, Services

Body = Callable[[Services, argparse.Namespace], Awaitable[int]]
Command = Callable[[Config, argparse.Namespace], int]


def with_services(body: Body) -> Command:
    def command(config: Config, args: argparse.Namespace) -> int:
        async def main() -> int:
            async with Services.opened(config, until=OFFLINE, replica="cli") as services:
                return await body(services, args)

        return asyncio.run(main())

    command.__doc__ = body.__doc__
    return command


def when(ts: float | None) -> str:
    """A timestamp as UTC for a table column, `-` when there is none."""
    if not ts:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")
