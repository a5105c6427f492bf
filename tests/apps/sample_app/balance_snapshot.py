"""The example job: a daily balance snapshot per account, and the endpoint that shows it.

It shows the whole path: a per-account job (`@job`), a Stripe call bound to the account
(`ctx.stripe`, so `Stripe-Account` is set), app data stored per account and mode
(`BalanceSnapshot`, an `AccountModel`, deleted on uninstall), and a signed endpoint that returns
it to the extension:

    POST /api/balance -> {"account_id", "live": snapshot|null, "test": ..., "sandbox": ...}
        snapshot: {"taken_at", "available": [{"amount", "currency"}], "pending": [...]}, the
        latest in each installed mode, null before the first; 403 when not installed.
"""

from __future__ import annotations

import json
import time
from typing import Any

import peewee as pw

from stripe_app_backend import (
    MODES,
    AccountModel,
    EndpointContext,
    JobContext,
    SignedRequest,
    endpoint,
    job,
)

KEEP = 90  # snapshots kept per account and mode


# ---- the table and its queries (run in a database thread) ------------------------------------
class BalanceSnapshot(AccountModel):
    taken_at = pw.DoubleField(default=time.time, index=True)
    available = pw.TextField()  # JSON list of {"amount", "currency"}
    pending = pw.TextField()


def save_snapshot(account_id: str, mode: str, available: list[dict[str, Any]],
                  pending: list[dict[str, Any]]) -> int:
    """Store a snapshot and drop those beyond the newest `KEEP`; returns the new row's id."""
    row = BalanceSnapshot.create(account_id=account_id, mode=mode,
                                 available=json.dumps(available), pending=json.dumps(pending))
    old = (BalanceSnapshot.select(BalanceSnapshot.id)
           .where((BalanceSnapshot.account_id == account_id) & (BalanceSnapshot.mode == mode))
           .order_by(BalanceSnapshot.taken_at.desc()).offset(KEEP))
    BalanceSnapshot.delete().where(BalanceSnapshot.id.in_(old)).execute()
    return row.id


# ---- the endpoint ----------------------------------------------------------------------------
def latest(account_id: str, mode: str) -> dict[str, Any] | None:
    """The newest snapshot as the API shows it, or None when there is none."""
    row = (BalanceSnapshot.select()
           .where((BalanceSnapshot.account_id == account_id) & (BalanceSnapshot.mode == mode))
           .order_by(BalanceSnapshot.taken_at.desc()).first())
    if row is None:
        return None
    return {"taken_at": int(row.taken_at), "available": json.loads(row.available),
            "pending": json.loads(row.pending)}


@endpoint("/api/balance", description="The newest balance snapshot in each installed mode")
async def balance(req: SignedRequest, ctx: EndpointContext) -> dict[str, Any]:
    """`{"account_id", "live": snapshot|null, "test": ..., "sandbox": ...}` (null: not installed in
    that mode, or no snapshot yet)."""
    answer: dict[str, Any] = {"account_id": ctx.account_id}
    for mode in MODES:
        answer[mode] = await ctx.db(latest, ctx.account_id, mode) if mode in ctx.modes else None
    return answer


# ---- the job ---------------------------------------------------------------------------------
def _amounts(value: Any) -> list[dict[str, Any]]:
    # Stripe answers a list of {amount, currency, ...}; some emulators a single object.
    items = value if isinstance(value, list) else [value] if value else []
    return [{"amount": int(i["amount"]), "currency": str(i["currency"])} for i in items]


@job(every=86400, spread=86400, run_on_install=True,  # each account at its own time of day
     permissions=["balance_read"])
async def balance_snapshot(ctx: JobContext) -> None:
    """Store the account's Stripe balance once a day (and right after it installs)."""
    current = (await ctx.stripe.v1.balance.retrieve_async()).to_dict()
    await ctx.db(save_snapshot, ctx.account_id, ctx.mode, _amounts(current.get("available")),
                 _amounts(current.get("pending")))
