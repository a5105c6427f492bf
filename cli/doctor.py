"""`run.py doctor`: check the configuration against itself, this machine and the Stripe API.

Prints one line per check (✓, ✗ or "- skipped:", the variable, what was found and, for a
failure, the fix) and exits 1 when any check failed, 0 otherwise. A configuration that does
not load is explained too (the raw variables are checked before `Config` is built). It never
migrates: pending migrations are one of the things it reports.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from typing import Any

from service.config import Config, ConfigError
from service.doctor import Finding, Status, check_env, failed, format_findings, run_checks


def add_parser(sub: Any) -> None:
    p = sub.add_parser("doctor", help="check the configuration, the database and the Stripe "
                       "API; exit 1 when a check fails")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--no-probe", action="store_true",
                   help="do not call PUBLIC_URL (when the server is not running yet)")
    # the doctor also explains a configuration that does not load (it is then given None)
    p.set_defaults(func=run_doctor, takes_bad_config=True)


def _print(findings: list[Finding], as_json: bool) -> None:
    if as_json:
        for f in findings:
            print(json.dumps(f.as_dict(), ensure_ascii=False))
    else:
        for line in format_findings(findings):
            print(line)


async def _checks(config: Config, args: argparse.Namespace) -> list[Finding]:
    from jobs.registry import Registry
    from models.db import UNAVAILABLE, Storage
    from models.loader import LoadError
    from service.services import app_registry, open_configured_database

    storage = None
    findings: list[Finding] = []
    try:
        storage = Storage(open_configured_database(config), workers=1)
    except UNAVAILABLE as exc:
        findings.append(Finding(Status.FAILED, "DATABASE_URL", f"cannot open: {exc}"[:200],
                                "check DATABASE_URL and that the database is running"))
    try:
        registry: Registry | None = None
        try:
            registry = app_registry(config)  # the project's and the app's declarations
        except LoadError as exc:
            findings.append(Finding(Status.FAILED, "APP_PACKAGES", str(exc)[:300],
                                    "fix that module of your app, or the app setting"))
        checked = await run_checks(config, storage, registry, env=os.environ,
                                   probe_public_url=not args.no_probe)
        if registry is None:  # the app's own finding is its import failure, not "your app"
            checked = [f for f in checked if f.variable != "APP_PACKAGES"]
        findings = [*checked, *findings]
    finally:
        if storage is not None:
            storage.close()
    return findings


def run_doctor(config: Config | None, args: argparse.Namespace) -> int:
    if config is None:  # the configuration does not load: say why, and what else is wrong
        findings = check_env(os.environ)
        try:
            Config.from_env()
        except ConfigError as exc:
            variable, _, message = str(exc).partition(": ")
            findings.append(Finding(Status.FAILED, variable, message or str(exc),
                                    "correct the variable; the other checks need a "
                                    "configuration that loads"))
        _print(findings, args.json)
        return 1
    findings = asyncio.run(_checks(config, args))
    _print(findings, args.json)
    return 1 if failed(findings) else 0
