"""`run.py serve` (the default command): run the backend until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from service.config import Config
from service.server import StartupError, serve


def add_parser(sub: Any) -> None:
    sub.add_parser("serve", help="run the backend (the default)").set_defaults(func=run_server)


def run_server(config: Config, args: argparse.Namespace | None = None) -> int:
    """Serve until SIGTERM/SIGINT; a start-up failure is one line on stderr and exit 1."""
    try:
        asyncio.run(serve(config))
    except StartupError as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        return 1
    return 0
