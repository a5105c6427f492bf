"""`run.py jobs list|run|pause|resume`: per-account jobs, on the database directly (no server).

`jobs run` runs the job in this process, recorded like a scheduled run (replica `cli`) but as
its own run (kind `manual`): it never collides with a fire or another manual run in the same
second, and is refused, in words, only while a run of the same job and account is under way.
`run`, `pause` and `resume` act in live mode unless given `--test` or `--sandbox` (`--live` says
it outright); they print the mode they acted in. `list --account acct_...` shows one account's jobs.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from cli.devtools import add_mode_options, chosen_mode
from cli.offline import when, with_services
from jobs.scheduler import describe_jobs
from models.enums import Mode
from models.jobs import attach_last_runs
from service.services import Services


def add_parser(sub: Any) -> None:
    jobs = sub.add_parser("jobs", help="list, run, pause or resume per-account jobs")
    jsub = jobs.add_subparsers(dest="jobs_command", metavar="action", required=True)
    jlist = jsub.add_parser("list", help="jobs, next fire per account, last outcome")
    jlist.add_argument("--account", help="only this account (acct_...)")
    jlist.set_defaults(func=with_services(list_jobs))
    jrun = jsub.add_parser("run", help="run a job for one account now (recorded like any run)")
    jrun.add_argument("job")
    jrun.add_argument("--account", required=True)
    _add_mode(jrun)
    jrun.set_defaults(func=with_services(run_job))
    for name, text in (("pause", "pause an account's jobs (live mode unless --test or "
                                 "--sandbox)"),
                       ("resume", "resume them (live mode unless --test or --sandbox)")):
        p = jsub.add_parser(name, help=text)
        p.add_argument("--account", required=True)
        _add_mode(p)
        p.set_defaults(func=with_services(pause_or_resume))


def _add_mode(parser: argparse.ArgumentParser) -> None:
    add_mode_options(parser)


def _mode(args: argparse.Namespace) -> Mode:
    return chosen_mode(args)


def _mode_note(args: argparse.Namespace) -> str:
    """The mode acted in, saying so when it was the default."""
    if args.mode is None:
        return "live mode (the default; --test or --sandbox for the others)"
    return f"{_mode(args)} mode"


async def list_jobs(services: Services, args: argparse.Namespace) -> int:
    storage, index, registry = services.storage, services.installations, services.registry
    views = [v for v in index.active() if args.account in (None, v.account_id)]
    width = max([4, *(len(v.mode) for v in views)])  # "sandbox" widens the column, if listed
    print(f"{'job':24} {'mode':{width}} {'account':28} {'next run (UTC)':19}  last outcome")
    for name, spec in registry.jobs.items():
        schedule = f"every {spec.every:.0f}s" if spec.every else f"cron {spec.cron}"
        print(f"# {name}: {spec.description} ({schedule})")
    if args.account and not views:
        print(f"# {args.account} has no active installation")
    for view in sorted(views, key=lambda v: (v.account_id, v.mode)):
        rows = describe_jobs(registry, index, None, view.account_id)
        rows = await storage.run(attach_last_runs, rows, view.account_id)
        for row in rows:
            if row["mode"] != view.mode:
                continue
            last = row["last_run"]
            outcome = f"{last['outcome']} at {when(last['started'])}" if last else "-"
            if last and last["outcome"] in ("skipped", "interrupted") and last["error"]:
                outcome += f" ({last['error']})"
            nxt = "paused" if row["paused"] else when(row["next_run"])
            print(f"{row['job']:24} {row['mode']:{width}} {view.account_id:28} {nxt:19}  "
                  f"{outcome}")
    return 0


async def pause_or_resume(services: Services, args: argparse.Namespace) -> int:
    mode, pause = _mode(args), args.jobs_command == "pause"
    view = await services.installations.pause(args.account, mode, pause,
                                              "paused by an operator")
    if view is None:
        print(f"no installation for {args.account} in {_mode_note(args)}", file=sys.stderr)
        return 1
    print(f"{args.account}: jobs {args.jobs_command}d in {_mode_note(args)}")
    return 0


async def run_job(services: Services, args: argparse.Namespace) -> int:
    mode, registry = _mode(args), services.registry
    if args.job not in registry.jobs:
        print(f"unknown job {args.job!r}; known: {', '.join(registry.jobs)}", file=sys.stderr)
        return 1
    if not services.installations.is_active(args.account, mode):
        print(f"{args.account} has no active installation in {_mode_note(args)}",
              file=sys.stderr)
        return 1
    outcome, busy = await services.runner.run_now(args.job, args.account, mode)
    if busy is not None:
        print(f"{args.job} for {args.account} ({mode}) is running right now (started "
              f"{when(busy.started_at)} UTC by {busy.replica}); not started again",
              file=sys.stderr)
        return 1
    print(f"{args.job} for {args.account} ({mode}): {outcome}")
    return 0 if outcome == "succeeded" else 1
