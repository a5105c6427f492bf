"""The model base classes.

`BaseModel` binds a table to the deferred database. `AccountModel` is the base for app data that
belongs to one connected account in one mode: when an account uninstalls the app in a mode,
every `AccountModel` table loses that account's rows in that mode (the installation record and
the event audit trail stay).
"""

from __future__ import annotations

import time

import peewee as pw

from models.db import database


def now() -> float:
    return time.time()


class BaseModel(pw.Model):
    class Meta:
        database = database
        legacy_table_names = False


class AccountModel(BaseModel):
    account_id = pw.CharField(max_length=255, index=True)
    mode = pw.CharField(max_length=4)  # a Mode: "live" or "test"

    @classmethod
    def delete_account_data(cls, account_id: str, mode: str) -> int:
        """Delete this account's rows in `mode` from every AccountModel table; return the count."""
        deleted = 0
        for model in _subclasses(cls):
            deleted += (
                model.delete()
                .where((model.account_id == account_id) & (model.mode == mode))
                .execute()
            )
        return deleted


def _subclasses(cls: type) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(_subclasses(sub))
    return found
