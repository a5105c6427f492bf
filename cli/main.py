"""Argument parsing and dispatch for `run.py`. Configuration comes from the environment.

Each command module registers its commands with `add_parser(sub)`, each with
`set_defaults(func=...)`; `main` parses, reads the configuration and calls
`args.func(config, args)` (no command: `serve`).

`--app X[,Y]` (before or after the command, like `--dev`) names the developer's app and wins
over `APP_PACKAGES`: it sets that variable for this process and the processes it starts (`dev`'s
server, the workers). An app that cannot be imported stops the command with one line naming the
module and its error (exit 1), not a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
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
    new,
    openapi,
    prune,
    serve,
    simulate,
    tasks,
)
from models.db import UNAVAILABLE
from models.loader import LoadError
from service.config import VARIABLES, Config, ConfigError
from service.logs import setup_logging

log = logging.getLogger("app.cli")

#: The command modules, in the order `--help` lists their commands.
COMMANDS = (serve, migrate, install_link, jobs, events, tasks, installs, credentials, prune,
            manifest, openapi, simulate, doctor, dev, new)


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
    parser.add_argument(
        "--app", metavar="PACKAGES",
        help="your app: comma-separated package names or package directories (wins over "
             "APP_PACKAGES; see docs/apps.md); may also follow the command")
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


def _take_app_option(argv: list[str]) -> tuple[str | None, list[str]]:
    """The value of `--app X` or `--app=X` wherever it stands before a `--` (the last one
    wins), and the arguments without it."""
    end = argv.index("--") if "--" in argv else len(argv)
    value: str | None = None
    rest: list[str] = []
    i = 0
    while i < end:
        arg = argv[i]
        if arg == "--app" and i + 1 < end:
            value, i = argv[i + 1], i + 2
            continue
        if arg.startswith("--app="):
            value = arg.split("=", 1)[1]
        else:
            rest.append(arg)
        i += 1
    return value, rest + argv[end:]


def main(argv: list[str] | None = None) -> int:
    use_dev, argv = _take_dev_flag(sys.argv[1:] if argv is None else list(argv))
    app, argv = _take_app_option(argv)
    if app is not None:
        os.environ["APP_PACKAGES"] = app  # wins over the variable, here and in child processes
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
    except LoadError as exc:  # the app (APP_PACKAGES, --app) failed to import
        print(app_failed(exc), file=sys.stderr)
        return 1


def app_failed(exc: LoadError) -> str:
    """One line for a person: which module of the app failed, and why (never a traceback)."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:500]
    cause = exc.__cause__
    where = ""
    if isinstance(cause, SyntaxError) and cause.filename:
        where = f" ({cause.filename}, line {cause.lineno})"
    return (f"cannot load the app (APP_PACKAGES or --app): {first}{where}; fix that module or "
            "the app setting (see docs/apps.md)")


def database_unavailable(exc: BaseException) -> str:
    """One line for a person: what failed, which variable, what to do (never a traceback)."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    return (f"cannot use the database (DATABASE_URL): {first}; check that the database is "
            "running and reachable, and that DATABASE_URL points at it")
