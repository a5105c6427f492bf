"""`python tests/hang_server.py`: the real server (`run.py serve`), except that processing an
`account.application.authorized` event never finishes, as if the process were about to crash
in the middle of it.

tests/test_crashes.py starts this, sends webhooks, kills it with SIGKILL while those events are
claimed (`processing`, their leases renewed), then starts the plain `run.py` on the same
database and measures how long the installs take to take effect.
"""

from __future__ import annotations

import asyncio
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cli.main import main  # noqa: E402
from jobs.events import AUTHORIZED, EventProcessor  # noqa: E402

_dispatch = EventProcessor._dispatch


async def _hanging_dispatch(self: EventProcessor, event: object, *args: object) -> None:
    if getattr(event, "type", None) == AUTHORIZED:
        await asyncio.Event().wait()  # claimed, never finished: the process dies first
    await _dispatch(self, event, *args)


EventProcessor._dispatch = _hanging_dispatch  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main(["serve"]))
