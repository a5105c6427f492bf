"""Webhook deliveries `POST /webhooks` refused (bad signature, malformed body): the last `KEEP`,
for an operator debugging a wrong endpoint secret or a sender that is not Stripe.

Each row holds what arrived, bounded: the reason, the request's headers (as sent, the
`Stripe-Signature` included: it is the sender's HMAC, not a secret), the first `BODY_BYTES`
of the body and its full size, the sender's address. `record_rejections` inserts a batch and
prunes the table to the newest `KEEP` in the same transaction, so it never grows past that;
`latest_rejections` reads them for the status page.
"""

from __future__ import annotations

from typing import Any

import peewee as pw

from models.base import BaseModel
from models.db import write_transaction

#: How many rejected deliveries are kept.
KEEP = 100
#: How much of a rejected body is kept.
BODY_BYTES = 2048


class RejectedWebhook(BaseModel):
    id = pw.AutoField()
    received_at = pw.DoubleField()
    reason = pw.CharField(max_length=512)
    remote = pw.CharField(max_length=64, null=True)
    #: JSON: [[name, value], ...], each bounded (see `service/rejections.py`)
    headers = pw.TextField()
    #: the first BODY_BYTES bytes, decoded as UTF-8 with undecodable bytes as `\\xNN`
    body = pw.TextField()
    body_size = pw.IntegerField()


def record_rejections(rows: list[dict[str, Any]], keep: int = KEEP) -> None:
    """Runs in a database thread: store `rows`, then keep only the newest `keep`."""
    if not rows:
        return
    with write_transaction():
        RejectedWebhook.insert_many(rows[-keep:]).execute()
        cutoff = (RejectedWebhook.select(RejectedWebhook.id)
                  .order_by(RejectedWebhook.id.desc()).offset(keep).limit(1).scalar())
        if cutoff is not None:
            RejectedWebhook.delete().where(RejectedWebhook.id <= cutoff).execute()


def latest_rejections(limit: int = KEEP) -> list[dict[str, Any]]:
    """The newest rejected deliveries first."""
    # A range on the primary key (the table holds at most KEEP rows): read newest first by it
    query = (RejectedWebhook.select().where(RejectedWebhook.id > 0)
             .order_by(RejectedWebhook.id.desc()).limit(limit))
    return list(query.dicts())
