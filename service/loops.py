"""The event loop a server process runs on (`EVENT_LOOP`).

    with loop_runner(config.event_loop) as runner:   # asyncio.Runner on the chosen loop
        runner.run(main())

`uvloop` answers webhooks faster than asyncio's own loop: a webhook answered after an await
costs Tornado an epoll registration and a removal, and a group commit wakes the loop from
another thread, both much cheaper in uvloop's C (docs/performance.md). `auto` takes uvloop when
it can be imported (a dependency of this package, absent only on platforms it does not support),
else asyncio. Each process makes its own loop: a `WORKERS` child makes it after the fork.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable

#: The values of `EVENT_LOOP`.
EVENT_LOOPS = ("auto", "uvloop", "asyncio")


def resolve(choice: str) -> str:
    """The loop `EVENT_LOOP=choice` runs on: `uvloop` or `asyncio`. Asking for uvloop where it
    is not installed is a start-up error (ValueError), not a silent fallback."""
    available = importlib.util.find_spec("uvloop") is not None
    if choice == "uvloop" and not available:
        raise ValueError("uvloop is not installed (pip install uvloop), or say EVENT_LOOP=auto")
    return "uvloop" if choice == "uvloop" or (choice == "auto" and available) else "asyncio"


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """What makes a new event loop of the kind `choice` resolves to."""
    if resolve(choice) == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


def loop_runner(choice: str) -> asyncio.Runner:
    return asyncio.Runner(loop_factory=loop_factory(choice))


def running_loop_name() -> str:
    """`uvloop` or `asyncio`: what the running loop is (for the start-up log line)."""
    loop = asyncio.get_running_loop()
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
