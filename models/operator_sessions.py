"""The operator's log-in sessions (the status page, `service/status.py`), kept in the database
so that a log-out ends a session in every process and replica at once.

A session's cookie carries a random id, signed; the table keeps only its SHA-256 (`digest`),
so reading the table gives no session away. A session is alive while its row exists and has
not expired: log-out deletes the row, and each log-in prunes the rows that expired.
"""

from __future__ import annotations

import hashlib

import peewee as pw

from models.base import BaseModel


class OperatorSession(BaseModel):
    id = pw.CharField(max_length=64, primary_key=True)  # sha256 hex of the cookie's session id
    created_at = pw.DoubleField()
    expires_at = pw.DoubleField(index=True)


def digest(session: str) -> str:
    return hashlib.sha256(session.encode()).hexdigest()


def open_session(session: str, now: float, lifetime: float) -> None:
    """Record a new session, alive for `lifetime` seconds from `now`; prune expired ones."""
    OperatorSession.insert(id=digest(session), created_at=now,
                           expires_at=now + lifetime).execute()
    OperatorSession.delete().where(OperatorSession.expires_at <= now).execute()


def session_alive(session: str, now: float) -> bool:
    return (OperatorSession.select(OperatorSession.id)
            .where((OperatorSession.id == digest(session))
                   & (OperatorSession.expires_at > now)).exists())


def close_session(session: str) -> bool:
    """End the session; False when it was not alive (already closed, or pruned)."""
    return OperatorSession.delete().where(OperatorSession.id == digest(session)).execute() > 0
