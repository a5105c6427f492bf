"""`run.py serve` (the default command): run the backend until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from models.loader import load_modules, with_apps
from service.config import Config, app_packages
from service.loops import loop_runner
from service.server import StartupError, serve
from service.workers import run_workers


def add_parser(sub: Any) -> None:
    sub.add_parser("serve", help="run the backend (the default)").set_defaults(func=run_server)


def run_server(config: Config, args: argparse.Namespace | None = None) -> int:
    """Serve until SIGTERM/SIGINT; a start-up failure is one line on stderr and exit 1.
    `WORKERS` above 1: that many processes on the one port (`service/workers.py`)."""
    if config.workers > 1:
        # the app is imported once, here, before the workers fork: one that fails to import
        # stops start-up before anything runs (main() prints the LoadError's one line)
        load_modules(with_apps(app_packages(config)))
        return run_workers(config, _serve_one)
    return _serve_one(config)


def _serve_one(config: Config, reuse_port: bool = False) -> int:
    try:
        with loop_runner(config.event_loop) as runner:
            runner.run(serve(config, reuse_port=reuse_port))
    except StartupError as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        return 1
    return 0
