"""`run.py installs sync [--test|--sandbox]` and `run.py installs uninstall --account A
[--test|--sandbox]` (live mode by default).

`sync` lists the app's installs in the mode through Stripe's Install API and makes the table
agree (see jobs/installs.py); a running server learns of the changes at once
(`models/change_watch.py`). `uninstall` calls the API's uninstall for the account and applies the
result here as the webhook would (jobs stop, app data deleted). Both need `STRIPE_APP_ID` and
the mode's `STRIPE_SECRET_KEY_<MODE>` (for `--sandbox` the managed sandbox's, which lists the
sandbox installs); they exit 1 when Stripe refuses or the listing fails
(nothing changed then), 2 when the configuration is missing.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from cli.devtools import add_mode_options, chosen_mode
from cli.offline import with_services
from service.config import Config
from service.services import Services


def add_parser(sub: Any) -> None:
    inst = sub.add_parser("installs", help="reconcile installs with Stripe, or uninstall one")
    isub = inst.add_subparsers(dest="installs_command", metavar="action", required=True)
    sync = isub.add_parser("sync", help="make the table agree with Stripe's Install API")
    add_mode_options(sync)
    unin = isub.add_parser("uninstall", help="uninstall the app from an account through the API")
    unin.add_argument("--account", required=True)
    add_mode_options(unin)
    inst.set_defaults(func=run_installs)


def run_installs(config: Config, args: argparse.Namespace) -> int:
    mode = chosen_mode(args)
    if not config.app_id:
        print("STRIPE_APP_ID is not set: the Install API is asked for this app's installs",
              file=sys.stderr)
        return 2
    if not config.secret_keys.get(mode):
        print(f"STRIPE_SECRET_KEY_{mode.upper()} is not set", file=sys.stderr)
        return 2
    return with_services(_run)(config, args)


async def _run(services: Services, args: argparse.Namespace) -> int:
    import stripe

    from jobs.installs import SyncFailed

    mode = chosen_mode(args)
    sync = services.install_sync
    assert sync is not None  # STRIPE_APP_ID is set (checked above)
    if args.installs_command == "sync":
        try:
            result = await sync.sync(mode)
        except SyncFailed as exc:
            print(f"{exc}; nothing was changed", file=sys.stderr)
            return 1
        print(result.line())
        return 0
    try:
        view = await sync.uninstall(args.account, mode)
    except (LookupError, stripe.StripeError) as exc:
        print(f"cannot uninstall {args.account} ({mode}): {exc}", file=sys.stderr)
        return 1
    print(f"{args.account} ({mode}): uninstalled; active={view.active}")
    return 0
