"""Webhook events, stored before they are acknowledged and kept as the audit trail.

`status` moves pending -> processing -> processed, or -> failed (retried at `next_attempt_at`
with backoff, for about six hours) and, after `MAX_ATTEMPTS`, -> dead (kept; `run.py events
replay` runs it again).
A claim (`claim_event`) is an UPDATE that only one replica can win, so an event is processed by
one replica at a time, and a claim whose holder died expires (`locked_until`).
"""

from __future__ import annotations

import random

import peewee as pw

from models.base import BaseModel, now

MAX_ATTEMPTS = 16  # with the backoff below: about six hours of tries before `dead`
LEASE_SECONDS = 120


class WebhookEvent(BaseModel):
    id = pw.CharField(max_length=255, primary_key=True)
    type = pw.CharField(max_length=255, index=True)
    account_id = pw.CharField(max_length=255, null=True, index=True)
    livemode = pw.BooleanField()
    created = pw.BigIntegerField()
    payload = pw.TextField()  # the raw body, byte for byte as verified (UTF-8)
    received_at = pw.DoubleField(default=now)
    status = pw.CharField(max_length=16, default="pending", index=True)
    attempts = pw.IntegerField(default=0)
    last_error = pw.TextField(null=True)
    next_attempt_at = pw.DoubleField(null=True, index=True)
    locked_until = pw.DoubleField(null=True)
    processed_at = pw.DoubleField(null=True)

    class Meta:
        indexes = ((("status", "received_at"), False),  # the status page (003)
                   (("received_at", "status"), False))

    @property
    def mode(self) -> str:
        return "live" if self.livemode else "test"


def store_event(event_id: str, type_: str, account_id: str | None, livemode: bool,
                created: int, payload: str, needs_processing: bool = True) -> bool:
    """Insert the event; False when an event with this id is already stored (a redelivery).

    The primary key decides between two deliveries that race: exactly one insert wins. An
    event nothing handles is stored as processed straight away (one write instead of three).
    """
    t = now()
    fields = ({"status": "pending", "next_attempt_at": t} if needs_processing
              else {"status": "processed", "processed_at": t})
    try:
        WebhookEvent.insert(id=event_id, type=type_, account_id=account_id, livemode=livemode,
                            created=created, payload=payload, received_at=t, **fields).execute()
        return True
    except pw.IntegrityError:
        return False


def claim_event(event_id: str, force: bool = False) -> WebhookEvent | None:
    """Take the event for processing if it is due and nobody holds it; None otherwise."""
    t = now()
    due = (WebhookEvent.status.in_(("pending", "failed"))) & (WebhookEvent.next_attempt_at <= t)
    stale = (WebhookEvent.status == "processing") & (WebhookEvent.locked_until < t)
    cond = (WebhookEvent.status != "processing") | stale if force else due | stale
    won = (
        WebhookEvent.update(status="processing", locked_until=t + LEASE_SECONDS,
                            attempts=WebhookEvent.attempts + 1)
        .where((WebhookEvent.id == event_id) & cond)
        .execute()
    )
    return WebhookEvent.get_by_id(event_id) if won else None


def finish_event(event_id: str, error: str | None, attempts: int,
                 retry_base: float = 2.0) -> str:
    """Record the outcome of a processing attempt; returns the new status."""
    t = now()
    if error is None:
        status, fields = "processed", {"processed_at": t, "last_error": None,
                                       "next_attempt_at": None}
    elif attempts >= MAX_ATTEMPTS:
        status, fields = "dead", {"last_error": error, "next_attempt_at": None}
    else:
        status, fields = "failed", {"last_error": error,
                                    "next_attempt_at": t + retry_delay(attempts, retry_base)}
    WebhookEvent.update(status=status, locked_until=None, **fields).where(
        WebhookEvent.id == event_id).execute()
    return status


def retry_delay(attempts: int, base: float = 2.0, cap: float = 3600.0) -> float:
    """Exponential backoff with full jitter: attempt 1 waits up to 2 s, then 4, 8 ... 1 h."""
    return random.uniform(0.5, 1.0) * min(cap, base ** attempts)


def due_event_ids(limit: int = 100) -> list[str]:
    t = now()
    due = WebhookEvent.status.in_(("pending", "failed")) & (WebhookEvent.next_attempt_at <= t)
    stale = (WebhookEvent.status == "processing") & (WebhookEvent.locked_until < t)
    q = (WebhookEvent.select(WebhookEvent.id).where(due | stale)
         .order_by(WebhookEvent.created, WebhookEvent.received_at).limit(limit))
    return [row.id for row in q]
