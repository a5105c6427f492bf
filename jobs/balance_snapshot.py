"""The example job that ships with the product: a daily balance snapshot per account.

It shows the whole path: a per-account job (`@job`), a Stripe call bound to the account
(`ctx.stripe`, so `Stripe-Account` is set), app data stored per account and mode
(`BalanceSnapshot` in `models/snapshots.py`, an `AccountModel`, deleted on uninstall), and a
signed endpoint that returns it to the extension (`service/extension.py`, `POST /api/balance`).
"""

from __future__ import annotations

from typing import Any

from jobs.registry import job
from jobs.runner import JobContext
from models.snapshots import save_snapshot


def _amounts(value: Any) -> list[dict[str, Any]]:
    # Stripe answers a list of {amount, currency, ...}; some emulators a single object.
    items = value if isinstance(value, list) else [value] if value else []
    return [{"amount": int(i["amount"]), "currency": str(i["currency"])} for i in items]


@job(every=86400, spread=86400, run_on_install=True,  # each account at its own time of day
     permissions=["balance_read"])
async def balance_snapshot(ctx: JobContext) -> None:
    """Store the account's Stripe balance once a day (and right after it installs)."""
    balance = (await ctx.stripe.v1.balance.retrieve_async()).to_dict()
    await ctx.db(save_snapshot, ctx.account_id, ctx.mode, _amounts(balance.get("available")),
                 _amounts(balance.get("pending")))
