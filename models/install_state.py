"""Used install-link `state` values and used install signatures: what makes a callback single-use.

A `state` is a signed token the server can check without storing anything (so an
unauthenticated `GET /install` writes nothing). What must be remembered is only that a state
was used: a row per used nonce, inserted by the valid callback that uses it, in the same
transaction as the installation. The primary key makes a second use fail, whichever replica
tries it. A row is needed only until the token expires; `use_state` prunes rows whose token
expired more than `KEEP_AFTER_EXPIRY` seconds ago.

An install signature, with or without a state, is accepted at most once as well
(`use_signature`): a row per used signature, keyed by a digest of what it signs and when (the
`t=` and the signed string, so a header reworded around the same `v1` is the same signature),
inserted in the transaction that applies the callback. A signature older than the tolerance is
refused by its check, so a row is needed only until `t + tolerance`, and pruned after that.
"""

from __future__ import annotations

from hashlib import sha256

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


class UsedInstallSignature(BaseModel):
    digest = pw.CharField(max_length=64, primary_key=True)  # sha256 of "t.signed string", hex
    account_id = pw.CharField(max_length=255)
    used_at = pw.DoubleField(default=now)
    expires_at = pw.DoubleField(index=True)  # when the signature's check refuses it anyway

    class Meta:
        table_name = "used_install_signature"


def signature_digest(timestamp: int, signed: str) -> str:
    """What identifies one install signature: the time it was made and what it signs."""
    return sha256(f"{timestamp}.{signed}".encode()).hexdigest()


def use_signature(digest: str, expires_at: float, account_id: str) -> bool:
    """Record an install signature as used; False when it was used before (one winner under
    races, whichever replica). Call inside the transaction that applies the callback."""
    try:
        with database.atomic():  # a savepoint: the outer transaction lives on
            UsedInstallSignature.insert(digest=digest, account_id=account_id, used_at=now(),
                                        expires_at=expires_at).execute()
    except pw.IntegrityError:
        return False
    UsedInstallSignature.delete().where(UsedInstallSignature.expires_at < now()).execute()
    return True
