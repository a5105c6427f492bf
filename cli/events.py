"""`run.py events list|replay`: stored webhook events, on the database directly (no server).

`events replay` processes the event again in this process, recorded like the server records it.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from cli.offline import with_services
from models.events import WebhookEvent
from service.services import Services


def add_parser(sub: Any) -> None:
    events = sub.add_parser("events", help="list or replay stored webhook events")
    esub = events.add_subparsers(dest="events_command", metavar="action", required=True)
    elist = esub.add_parser("list", help="the latest events")
    elist.add_argument("--failed", action="store_true", help="only failed or dead events")
    elist.add_argument("--limit", type=int, default=50)
    elist.set_defaults(func=with_services(list_events))
    erep = esub.add_parser("replay", help="process a stored event again now")
    erep.add_argument("event_id")
    erep.set_defaults(func=with_services(replay_event))


async def list_events(services: Services, args: argparse.Namespace) -> int:
    query = WebhookEvent.select().order_by(WebhookEvent.received_at.desc())
    if args.failed:
        query = query.where(WebhookEvent.status.in_(("failed", "dead")))
    rows = await services.storage.run(lambda: list(query.limit(args.limit)))
    print(f"{'event':32} {'type':40} {'account':24} {'mode':7} {'status':9} tries  error")
    for e in rows:
        error = (e.last_error or "").splitlines()[-1:] or [""]
        print(f"{e.id:32} {e.type:40} {e.account_id or 'platform':24} {e.mode:7} "
              f"{e.status:9} {e.attempts:5}  {error[0][:80]}")
    return 0


async def replay_event(services: Services, args: argparse.Namespace) -> int:
    storage = services.storage
    exists = await storage.run(WebhookEvent.get_or_none, WebhookEvent.id == args.event_id)
    if exists is None:
        print(f"no stored event {args.event_id}", file=sys.stderr)
        return 1
    status = await services.events.process(args.event_id, force=True)
    if status is None:
        print(f"{args.event_id} is being processed elsewhere right now", file=sys.stderr)
        return 1
    row = await storage.run(WebhookEvent.get_by_id, args.event_id)
    print(json.dumps({"event": row.id, "status": row.status, "attempts": row.attempts,
                      "error": row.last_error}))
    return 0 if status == "processed" else 1
