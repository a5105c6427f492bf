"""The credentials vault's table: one encrypted value per (account, mode, name).

`Credential` is an `AccountModel`, so an uninstall in a mode deletes the account's credentials
in that mode with the rest of its app data. `value` holds a Fernet token, never plain text: the
encryption lives in `jobs/credentials.py` (`Vault`), these functions only move tokens.

`kind` says what the value is: `secret` (a string the extension stored) or `oauth` (a JSON token
set from `/api/oauth/<provider>/exchange`, refreshed by the vault).

`put_credential` with `max_count` bounds the rows of an account in a mode (`TooManyCredentials`:
a new name past it is not stored; a stored name can always be replaced): the count and the
insert are one write transaction, serial per account and mode across replicas (SQLite's write
lock, or a PostgreSQL advisory lock), so two new names at once cannot both pass the count.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

import peewee as pw

from models.base import AccountModel, now
from models.db import is_sqlite, write_transaction
from models.enums import MODES

SECRET, OAUTH = "secret", "oauth"

#: `pg_advisory_xact_lock(class, key)`: the class for the per-(account, mode) count bound.
COUNT_LOCK_CLASS = 0x7A5E


class Credential(AccountModel):
    name = pw.CharField(max_length=64)
    kind = pw.CharField(max_length=8, default=SECRET)
    value = pw.TextField()  # a Fernet token
    updated_by = pw.CharField(max_length=255, null=True)  # the Dashboard user, or "oauth"
    created_at = pw.DoubleField(default=now)
    updated_at = pw.DoubleField(default=now)

    class Meta:
        indexes = ((("account_id", "mode", "name"), True),)


@dataclass(frozen=True, slots=True)
class StoredCredential:
    """A row without its value: what `list` shows."""

    name: str
    mode: str
    kind: str
    updated: int
    updated_by: str | None


def _where(account_id: str, mode: str, name: str) -> pw.Expression:
    return ((Credential.account_id == account_id) & (Credential.mode == mode)
            & (Credential.name == name))


class KindClash(ValueError):
    """(account, mode, name) holds a value of another kind: a secret never replaces an OAuth
    token, nor an OAuth token a secret (`kind` is the stored one)."""

    def __init__(self, kind: str) -> None:
        super().__init__(f"a credential of kind {kind!r} has this name")
        self.kind = kind


class TooManyCredentials(Exception):
    """The account already stores `count` credentials in the mode, the most allowed."""

    def __init__(self, message: str, count: int) -> None:
        super().__init__(message)
        self.count = count


def _lock_key(text: str) -> int:
    """A signed 32-bit key for `pg_advisory_xact_lock(int, int)`."""
    value = zlib.crc32(text.encode())
    return value - (1 << 32) if value >= 1 << 31 else value


def put_credential(account_id: str, mode: str, name: str, token: str, kind: str = SECRET,
                   updated_by: str | None = None, max_count: int | None = None) -> int:
    """Insert or replace the encrypted value of (account, mode, name); returns the time.

    With `max_count`, a name not stored yet is refused (`TooManyCredentials`) when the account
    already has `max_count` rows in `mode`. Raises `KindClash`, changing nothing, when the name
    holds a value of another kind: the upsert updates only a row of the same kind, in one
    statement, so that two writers of different kinds cannot both win on either database."""
    t = now()
    with write_transaction():
        if max_count is not None:
            _check_count(account_id, mode, name, max_count)
        (Credential.insert(account_id=account_id, mode=mode, name=name, kind=kind, value=token,
                           updated_by=updated_by, created_at=t, updated_at=t)
         .on_conflict(conflict_target=[Credential.account_id, Credential.mode, Credential.name],
                      update={Credential.value: token, Credential.updated_by: updated_by,
                              Credential.updated_at: t},
                      where=(Credential.kind == kind))
         .execute())
        stored = fetch_credential(account_id, mode, name)
        if stored is not None and stored[0] != kind:
            raise KindClash(stored[0])
    return int(t)


def _check_count(account_id: str, mode: str, name: str, max_count: int) -> None:
    db = Credential._meta.database
    if not is_sqlite(db):  # two new names at once must not both pass the count
        db.execute_sql("SELECT pg_advisory_xact_lock(%s, %s)",
                       (COUNT_LOCK_CLASS, _lock_key(f"{account_id}:{mode}")))
    if Credential.select().where(_where(account_id, mode, name)).exists():
        return  # a replacement adds no row
    count = Credential.select().where((Credential.account_id == account_id)
                                      & (Credential.mode == mode)).count()
    if count >= max_count:
        raise TooManyCredentials(f"{account_id} stores {count} credentials in {mode} mode "
                                 f"(limit {max_count})", count)


def fetch_credential(account_id: str, mode: str, name: str) -> tuple[str, str] | None:
    """`(kind, token)` of (account, mode, name), or None."""
    row = (Credential.select(Credential.kind, Credential.value)
           .where(_where(account_id, mode, name)).first())
    return (row.kind, row.value) if row else None


def list_credentials(account_id: str, modes: tuple[str, ...] = MODES
                     ) -> list[StoredCredential]:
    query = (Credential.select(Credential.name, Credential.mode, Credential.kind,
                               Credential.updated_at, Credential.updated_by)
             .where((Credential.account_id == account_id) & Credential.mode.in_(modes))
             .order_by(Credential.mode, Credential.name))
    return [StoredCredential(r.name, r.mode, r.kind, int(r.updated_at), r.updated_by)
            for r in query]


def delete_credential(account_id: str, mode: str, name: str) -> bool:
    return Credential.delete().where(_where(account_id, mode, name)).execute() > 0


def rotate_all(rotate: Callable[[str], str], batch: int = 500) -> tuple[int, list[str]]:
    """Re-encrypt every stored value with `rotate(token) -> token`, a batch per transaction.

    Returns how many rows were rewritten and the `account/mode/name` of those `rotate` could not
    read (it raised ValueError): they are left as they were.
    """
    done, unreadable, last = 0, [], 0
    while True:
        with write_transaction():
            rows = list(Credential.select().where(Credential.id > last)
                        .order_by(Credential.id).limit(batch))
            for row in rows:
                try:
                    token = rotate(row.value)
                except ValueError:
                    unreadable.append(f"{row.account_id}/{row.mode}/{row.name}")
                    continue
                Credential.update(value=token).where(Credential.id == row.id).execute()
                done += 1
        if len(rows) < batch:
            return done, unreadable
        last = rows[-1].id
