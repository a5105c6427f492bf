"""App data of the shipped example job: one balance snapshot per account, mode and run."""

from __future__ import annotations

import peewee as pw

from models.base import AccountModel, now


class BalanceSnapshot(AccountModel):
    taken_at = pw.DoubleField(default=now, index=True)
    available = pw.TextField()  # JSON list of {"amount", "currency"}
    pending = pw.TextField()
