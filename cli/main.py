"""Argument parsing and dispatch for `run.py`. Configuration comes from the environment."""

from __future__ import annotations

import argparse
import logging
import sys

from service.config import VARIABLES, Config, ConfigError
from service.logs import setup_logging

log = logging.getLogger("app.cli")


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
    sub = parser.add_subparsers(dest="command", metavar="command")
    sub.add_parser("serve", help="run the backend (the default)")
    sub.add_parser("migrate", help="bring the database schema up to date")
    mk = sub.add_parser("makemigration", help="write a migration for model changes")
    mk.add_argument("name")
    sub.add_parser("install-link", help="print the install link to put on your site")

    jobs = sub.add_parser("jobs", help="list, run, pause or resume per-account jobs")
    jsub = jobs.add_subparsers(dest="jobs_command", metavar="action", required=True)
    jsub.add_parser("list", help="jobs, next fire per account, last outcome")
    jrun = jsub.add_parser("run", help="run a job for one account now (recorded like any run)")
    jrun.add_argument("job")
    jrun.add_argument("--account", required=True)
    jrun.add_argument("--test", action="store_true", help="test mode (default: live)")
    for name, text in (("pause", "pause an account's jobs"), ("resume", "resume them")):
        p = jsub.add_parser(name, help=text)
        p.add_argument("--account", required=True)
        p.add_argument("--test", action="store_true")

    events = sub.add_parser("events", help="list or replay stored webhook events")
    esub = events.add_subparsers(dest="events_command", metavar="action", required=True)
    elist = esub.add_parser("list", help="the latest events")
    elist.add_argument("--failed", action="store_true", help="only failed or dead events")
    elist.add_argument("--limit", type=int, default=50)
    erep = esub.add_parser("replay", help="process a stored event again now")
    erep.add_argument("event_id")

    from cli.simulate import add_parser as add_simulate

    add_simulate(sub)
    from cli.doctor import add_parser as add_doctor

    add_doctor(sub)
    dev = sub.add_parser("dev", help="run with development secrets and a local Stripe emulator")
    dev.add_argument("--stripe-port", type=int, default=8420)
    return parser


def run_server(config: Config) -> int:
    """Serve until SIGTERM/SIGINT; a start-up failure is one line on stderr and exit 1."""
    import asyncio

    from service.server import StartupError, serve

    try:
        asyncio.run(serve(config))
    except StartupError as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = args.command or "serve"
    try:
        config = Config.from_env()
    except ConfigError as exc:
        if command == "doctor":  # the doctor explains a configuration that does not load
            return args.func(None, args)
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log_format, config.log_level)
    if command == "serve":
        return run_server(config)
    if command == "doctor":
        return args.func(config, args)
    if command == "dev":
        from cli.dev import run_dev

        return run_dev(args)
    if command == "simulate":
        from cli.simulate import run_simulate

        return run_simulate(config, args)
    from cli import admin

    return admin.run(config, command, args)
