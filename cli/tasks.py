"""`run.py tasks ...`: list, retry or cancel long-running tasks, on the database directly.

    tasks list [--account acct_X] [--failed] [--limit N]
    tasks retry <task_id>      a failed or cancelled task is queued again, with fresh attempts
    tasks cancel <task_id>     a queued task never starts; a running one stops at its next
                               lease renewal (a few seconds), at its next `await`

A retried task is run by a server's task worker, not by this command.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from cli.offline import when
from models.migrate import migrate
from models.tasks import (
    FINISHED,
    TaskStatus,
    TaskView,
    cancel_task,
    get_task,
    list_tasks,
    retry_task,
)
from service.config import Config
from service.services import open_configured_database


def add_parser(sub: Any) -> None:
    tasks = sub.add_parser("tasks", help="list, retry or cancel long-running tasks")
    tsub = tasks.add_subparsers(dest="tasks_command", metavar="action", required=True)
    tlist = tsub.add_parser("list", help="the latest tasks")
    tlist.add_argument("--account", help="only this account's")
    tlist.add_argument("--failed", action="store_true", help="only failed tasks")
    tlist.add_argument("--limit", type=int, default=50)
    retry = tsub.add_parser("retry", help="queue a failed or cancelled task again")
    retry.add_argument("task_id")
    cancel = tsub.add_parser("cancel", help="cancel a queued or running task")
    cancel.add_argument("task_id")
    tasks.set_defaults(func=run)


def _line(v: TaskView) -> str:
    progress = "-" if v.progress is None else f"{v.progress:.0%}"
    error = (v.error or "").splitlines()[-1:] or [""]
    return (f"{v.id:37} {v.name:20} {v.account_id:24} {v.mode:7} {v.status:9} {progress:>5} "
            f"{v.attempts}/{v.max_attempts}  {when(v.created_at)}  {error[0][:60]}")


def run(config: Config, args: argparse.Namespace) -> int:
    db = open_configured_database(config)
    try:
        migrate(db)
        if args.tasks_command == "list":
            rows = list_tasks(args.account, args.failed, args.limit)
            print(f"{'task':37} {'name':20} {'account':24} {'mode':7} {'status':9} prog. tries "
                  f"{'created (UTC)':19}  error")
            for view in rows:
                print(_line(view))
            return 0
        found = get_task(args.task_id)
        if found is None:
            print(f"no task {args.task_id}", file=sys.stderr)
            return 1
        if args.tasks_command == "retry":
            if found.status not in FINISHED or found.status == TaskStatus.SUCCEEDED:
                print(f"{args.task_id} is {found.status}: only a failed or cancelled task can "
                      "be retried", file=sys.stderr)
                return 1
            changed = retry_task(args.task_id)
        else:
            if found.status in FINISHED:
                print(f"{args.task_id} is already {found.status}", file=sys.stderr)
                return 1
            changed = cancel_task(args.task_id)
        assert changed is not None
        print(_line(changed))
        return 0
    finally:
        db.close()
