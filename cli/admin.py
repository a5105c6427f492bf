"""Operator commands: migrate, makemigration, install-link, jobs ..., events ...

They work on the database directly (no server needed). `jobs run` and `events replay` run the
work in this process, recorded exactly like the server would record it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from datetime import UTC, datetime
from urllib.parse import urlsplit

from models.db import Storage, open_database
from models.migrate import make_migration, migrate


def _when(ts: float | None) -> str:
    if not ts:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def run(config, command: str, args: argparse.Namespace) -> int:  # noqa: ANN001
    db = open_database(config.database_url)
    if command == "migrate":
        applied = migrate(db)
        print("applied: " + ", ".join(applied) if applied else "the database is up to date")
        return 0
    if command == "makemigration":
        migrate(db)
        name = make_migration(db, args.name)
        print(f"wrote models/migrations/{name}.py" if name else "no model changes found")
        return 0
    migrate(db)
    if command == "install-link":
        return install_link(config)
    if command == "jobs":
        return asyncio.run(jobs_command(config, db, args))
    if command == "events":
        return asyncio.run(events_command(config, db, args))
    print(f"unknown command {command}", file=sys.stderr)
    return 2


def install_link(config) -> int:  # noqa: ANN001
    parts = urlsplit(config.install_redirect_uri)
    start = f"{parts.scheme}://{parts.netloc}/install"
    if not config.app_id:
        print("STRIPE_APP_ID is not set: the install link needs the app's id", file=sys.stderr)
        return 1
    print(f"Put this link on your site: {start}")
    print("It sends the browser to the Stripe install page with a fresh, single-use state:")
    print(f"  https://marketplace.stripe.com/apps/install/link/{config.app_id}"
          f"?redirect_uri={config.install_redirect_uri}&state=<fresh state>")
    print(f"Stripe sends the browser back to {config.install_redirect_uri}, which must be listed "
          "in your app manifest's allowed_redirect_uris (https in live mode).")
    return 0


async def _context(config, db):  # noqa: ANN001, ANN202
    from jobs.credentials import Vault
    from jobs.http import make_http_client
    from jobs.oauth import OAuthProviders
    from jobs.registry import Registry
    from jobs.runner import JobRunner
    from jobs.stripe_api import StripeClients
    from models.installation_index import InstallationIndex
    from service.metrics import Metrics

    storage = Storage(db, workers=2)
    index = InstallationIndex(storage)
    await index.load()
    registry = Registry.discover()
    clients = StripeClients(config.secret_keys, config.rate_limits, config.api_base)
    metrics = Metrics()
    vault = Vault(storage, config.credentials_keys, OAuthProviders.discover())
    runner = JobRunner(registry, storage, index, clients, metrics, replica="cli", vault=vault,
                       http=make_http_client())
    return storage, index, registry, clients, metrics, runner


async def jobs_command(config, db, args: argparse.Namespace) -> int:  # noqa: ANN001
    from jobs.scheduler import attach_last_runs, describe_jobs
    from models.installation import set_paused

    storage, index, registry, clients, _, runner = await _context(config, db)
    try:
        if args.jobs_command == "list":
            print(f"{'job':24} {'mode':4} {'account':28} {'next run (UTC)':19}  last outcome")
            for name, spec in registry.jobs.items():
                schedule = f"every {spec.every:.0f}s" if spec.every else f"cron {spec.cron}"
                print(f"# {name}: {spec.description} ({schedule})")
            for view in sorted(index.active(), key=lambda v: (v.account_id, v.mode)):
                rows = describe_jobs(registry, index, None, view.account_id)
                rows = await storage.run(attach_last_runs, rows, view.account_id)
                for row in rows:
                    if row["mode"] != view.mode:
                        continue
                    last = row["last_run"]
                    outcome = f"{last['outcome']} at {_when(last['started'])}" if last else "-"
                    nxt = "paused" if row["paused"] else _when(row["next_run"])
                    print(f"{row['job']:24} {row['mode']:4} {view.account_id:28} {nxt:19}  "
                          f"{outcome}")
            return 0
        mode = "test" if args.test else "live"
        if args.jobs_command in ("pause", "resume"):
            view = await storage.run(set_paused, args.account, mode,
                                     args.jobs_command == "pause", "paused by an operator")
            if view is None:
                print(f"no installation for {args.account} in {mode} mode", file=sys.stderr)
                return 1
            print(f"{args.account} {mode}: jobs {args.jobs_command}d")
            return 0
        if args.job not in registry.jobs:
            print(f"unknown job {args.job!r}; known: {', '.join(registry.jobs)}",
                  file=sys.stderr)
            return 1
        if not index.is_active(args.account, mode):
            print(f"{args.account} has no active installation in {mode} mode", file=sys.stderr)
            return 1
        outcome = await runner.fire(args.job, args.account, mode,
                                    datetime.fromtimestamp(int(time.time()), UTC),
                                    reason="run.py jobs run")
        print(f"{args.job} for {args.account} ({mode}): {outcome}")
        return 0 if outcome == "succeeded" else 1
    finally:
        await clients.close()
        if runner.http is not None:
            await runner.http.aclose()
        storage.close()


async def events_command(config, db, args: argparse.Namespace) -> int:  # noqa: ANN001
    from jobs.events import EventProcessor
    from models.events import WebhookEvent

    storage, index, registry, clients, metrics, runner = await _context(config, db)
    try:
        if args.events_command == "list":
            query = WebhookEvent.select().order_by(WebhookEvent.received_at.desc())
            if args.failed:
                query = query.where(WebhookEvent.status.in_(("failed", "dead")))
            rows = await storage.run(lambda: list(query.limit(args.limit)))
            print(f"{'event':32} {'type':40} {'account':24} mode {'status':9} tries  error")
            for e in rows:
                error = (e.last_error or "").splitlines()[-1:] or [""]
                print(f"{e.id:32} {e.type:40} {e.account_id or 'platform':24} {e.mode} "
                      f"{e.status:9} {e.attempts:5}  {error[0][:80]}")
            return 0
        processor = EventProcessor(registry, storage, index, clients, metrics,
                                   vault=runner.vault, http=runner.http)
        exists = await storage.run(WebhookEvent.get_or_none, WebhookEvent.id == args.event_id)
        if exists is None:
            print(f"no stored event {args.event_id}", file=sys.stderr)
            return 1
        status = await processor.process(args.event_id, force=True)
        if status is None:
            print(f"{args.event_id} is being processed elsewhere right now", file=sys.stderr)
            return 1
        row = await storage.run(WebhookEvent.get_by_id, args.event_id)
        print(json.dumps({"event": row.id, "status": row.status, "attempts": row.attempts,
                          "error": row.last_error}))
        return 0 if status == "processed" else 1
    finally:
        await clients.close()
        if runner.http is not None:
            await runner.http.aclose()
        storage.close()
