"""Install-link `state` values: unguessable, single-use, expiring, bound to one browser.

Only a hash of the browser's cookie value is stored, so a database leak does not let anyone
complete someone else's install.
"""

from __future__ import annotations

import hashlib
import secrets

import peewee as pw

from models.base import BaseModel, now

STATE_TTL = 600


class InstallState(BaseModel):
    state = pw.CharField(max_length=128, primary_key=True)
    browser_hash = pw.CharField(max_length=64)
    created_at = pw.DoubleField(default=now)
    expires_at = pw.DoubleField(index=True)
    used_at = pw.DoubleField(null=True)
    account_id = pw.CharField(max_length=255, null=True)


def hash_browser(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_state(browser_token: str, ttl: float = STATE_TTL) -> str:
    state = secrets.token_urlsafe(32)
    t = now()
    InstallState.create(state=state, browser_hash=hash_browser(browser_token), created_at=t,
                        expires_at=t + ttl)
    InstallState.delete().where(InstallState.expires_at < t - 86400).execute()
    return state


def check_state(state: str, browser_token: str | None) -> str | None:
    """Why `state` cannot be used by this browser, or None when it can (nothing is changed)."""
    row = InstallState.get_or_none(InstallState.state == state)
    if row is None:
        return "unknown state"
    if row.used_at is not None:
        return "state already used"
    if row.expires_at < now():
        return "state expired"
    if not browser_token or not secrets.compare_digest(row.browser_hash,
                                                       hash_browser(browser_token)):
        return "state belongs to another browser"
    return None


def use_state(state: str, account_id: str) -> bool:
    """Mark the state used; False if someone else used it first (one winner under races)."""
    return bool(
        InstallState.update(used_at=now(), account_id=account_id)
        .where((InstallState.state == state) & InstallState.used_at.is_null()
               & (InstallState.expires_at >= now()))
        .execute()
    )
