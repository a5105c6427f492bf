"""App data of the shipped example job: one balance snapshot per account, mode and run.

The job (`jobs/balance_snapshot.py`) writes with `save_snapshot`; the API (`POST /api/balance`
in `service/extension.py`) reads with `latest_snapshot`. Both run in a database thread.
"""

from __future__ import annotations

import json
from typing import Any

import peewee as pw

from models.base import AccountModel, now

KEEP = 90  # snapshots kept per account and mode


class BalanceSnapshot(AccountModel):
    taken_at = pw.DoubleField(default=now, index=True)
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


def latest_snapshot(account_id: str, mode: str) -> dict[str, Any] | None:
    """The newest snapshot as the API shows it, or None when there is none."""
    row = (BalanceSnapshot.select()
           .where((BalanceSnapshot.account_id == account_id) & (BalanceSnapshot.mode == mode))
           .order_by(BalanceSnapshot.taken_at.desc()).first())
    if row is None:
        return None
    return {"taken_at": int(row.taken_at), "available": json.loads(row.available),
            "pending": json.loads(row.pending)}
