"""Argument parsing and dispatch for `run.py`. Configuration comes from the environment.

Each command module registers its commands with `add_parser(sub)`, each with
`set_defaults(func=...)`; `main` parses, reads the configuration and calls
`args.func(config, args)` (no command: `serve`).
"""

from __future__ import annotations

import argparse
import logging
import sys

from cli import (
    credentials,
    dev,
    doctor,
    events,
    install_link,
    installs,
    jobs,
    manifest,
    migrate,
    prune,
    serve,
    simulate,
    tasks,
)
from models.db import UNAVAILABLE
from service.config import VARIABLES, Config, ConfigError
from service.logs import setup_logging

log = logging.getLogger("app.cli")

#: The command modules, in the order `--help` lists their commands.
COMMANDS = (serve, migrate, install_link, jobs, events, tasks, installs, credentials, prune,
            manifest, simulate, doctor, dev)


def _epilog() -> str:
    width = max(len(name) for name, _, _ in VARIABLES)
    lines = ["environment variables (default in brackets):"]
    for name, meaning, default in VARIABLES:
        lines.append(f"  {name.ljust(width)}  {meaning} [{default}]")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run.py", description="A self-hosted backend for Stripe Apps.",
        epilog=_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--dev", action="store_true",
        help="give any command the development configuration of `run.py dev` (var/dev.env, "
             "its database and Stripe stand-in); may also follow the command")
    parser.set_defaults(func=serve.run_server)
    sub = parser.add_subparsers(dest="command", metavar="command")
    for module in COMMANDS:
        module.add_parser(sub)
    return parser


def _take_dev_flag(argv: list[str]) -> tuple[bool, list[str]]:
    """`--dev` wherever it stands before a `--`, and the arguments without it."""
    end = argv.index("--") if "--" in argv else len(argv)
    found = "--dev" in argv[:end]
    return found, [a for a in argv[:end] if a != "--dev"] + argv[end:]


def main(argv: list[str] | None = None) -> int:
    use_dev, argv = _take_dev_flag(sys.argv[1:] if argv is None else list(argv))
    args = build_parser().parse_args(argv)
    try:
        config = dev.dev_config() if use_dev else Config.from_env()
    except ConfigError as exc:
        if getattr(args, "takes_bad_config", False):
            return int(args.func(None, args))
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except dev.DevEnvError as exc:
        print(exc, file=sys.stderr)
        return 2
    setup_logging(config.log_format, config.log_level)
    try:
        return int(args.func(config, args))
    except UNAVAILABLE as exc:  # the one place a command meets an unreachable database
        print(database_unavailable(exc), file=sys.stderr)
        return 1


def database_unavailable(exc: BaseException) -> str:
    """One line for a person: what failed, which variable, what to do (never a traceback)."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    return (f"cannot use the database (DATABASE_URL): {first}; check that the database is "
            "running and reachable, and that DATABASE_URL points at it")
