"""Used install-link `state` values: with the used signatures (`models/used_signatures.py`),
what makes a callback single-use.

A `state` is a signed token the server can check without storing anything (so an
unauthenticated `GET /install` writes nothing). What must be remembered is only that a state
was used: a row per used nonce, inserted by the valid callback that uses it, in the same
transaction as the installation. The primary key makes a second use fail, whichever replica
tries it. A row is needed only until the token expires; `use_state` prunes rows whose token
expired more than `KEEP_AFTER_EXPIRY` seconds ago.

An install signature, with or without a state, is accepted at most once as well: it is
recorded, in the transaction that applies the callback, in the one table of used signatures
that the extension's single-use endpoints share (`models.used_signatures.record_signature`,
keyed by what Stripe signed: the `t=` and the signed string).
"""

from __future__ import annotations

import peewee as pw

from models.base import BaseModel, now
from models.db import database

#: How long a used state's row outlives its token (an expired token is refused anyway).
KEEP_AFTER_EXPIRY = 3600.0


class InstallState(BaseModel):
    state = pw.CharField(max_length=128, primary_key=True)  # the token's nonce, hex
    account_id = pw.CharField(max_length=255)
    used_at = pw.DoubleField(default=now)
    expires_at = pw.DoubleField(index=True)  # the token's expiry


def use_state(nonce: str, expires_at: float, account_id: str) -> bool:
    """Record the state `nonce` as used; False when it was used before (one winner under
    races). Call inside the transaction that records the installation."""
    try:
        with database.atomic():  # a savepoint: the outer transaction lives on
            InstallState.insert(state=nonce, account_id=account_id, used_at=now(),
                                expires_at=expires_at).execute()
    except pw.IntegrityError:
        return False
    InstallState.delete().where(InstallState.expires_at < now() - KEEP_AFTER_EXPIRY).execute()
    return True
