"""Signatures already used, so that each is used once: an extension's on a state-changing
endpoint, and an install signature on the install callback.

A signed request to an endpoint whose handler sets `single_use_signature`
(`service/signed.py`), and an install callback (`service/install.py`, inside the transaction
that applies it), record the signature here before they act: one row whose
primary key is a digest of what Stripe signed (the timestamp and the signed string). A second
request with the same signature, to any replica, finds the row and is refused. The key is not
taken from the header's text: a header can be rewritten (another order, an extra `v1` or `v0`)
without changing what it proves, but not the timestamp and the string a `v1` matched.

A row is needed only while its signature could still pass the timestamp check, so it expires
`SIGNATURE_TOLERANCE` seconds after the signature's timestamp; retention (`models/retention.py`)
deletes rows expired for longer than `CLOCK_SKEW` (a replica whose clock runs behind accepts a
signature a little longer).
"""

from __future__ import annotations

from hashlib import sha256

import peewee as pw

from models.base import BaseModel
from models.db import write_transaction

#: Seconds a row is kept past its expiry: covers clocks of replicas that disagree.
CLOCK_SKEW = 300.0


class UsedSignature(BaseModel):
    key = pw.CharField(max_length=64, primary_key=True)  # sha256 hex of "<t>.<signed string>"
    expires_at = pw.DoubleField(index=True)


def signature_key(timestamp: int, signed: bytes) -> str:
    """The key of a signature: what it signs, as Stripe forms it (`"<t>.<signed string>"`)."""
    return sha256(b"%d." % timestamp + signed).hexdigest()


def record_signature(key: str, expires_at: float) -> bool:
    """Record `key` as used, in the caller's transaction; False when it already was (a replay).

    One INSERT that does nothing on a conflict with the primary key, so two replicas recording
    the same key at once cannot both succeed (the database's unique index decides), and a
    conflict leaves the caller's transaction usable (PostgreSQL aborts one on an error)."""
    inserted = (UsedSignature.insert(key=key, expires_at=expires_at)
                .on_conflict_ignore().as_rowcount().execute())
    return inserted == 1


def use_signature(key: str, expires_at: float) -> bool:
    """Runs in a database thread: `record_signature` in a transaction of its own."""
    with write_transaction():  # on SQLite: queue with this process's other writers
        return record_signature(key, expires_at)
