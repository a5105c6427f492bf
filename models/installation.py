"""Installations: one row per (account, mode), kept for good and flipped active/inactive.

Lifecycle changes are ordered by the time they describe (`state_at`, the event's `created`,
or the callback's time) and, on a tie, by arrival (`state_seq`): a late, older event never undoes
a newer one. Stripe does not deliver events in order, and `created` has one-second resolution,
so of two changes of one account and mode in the same second the one that arrived later wins
(https://docs.stripe.com/webhooks; the webhook path is in `jobs/events.py`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import peewee as pw

from models.base import BaseModel, now
from models.db import is_sqlite, write_transaction
from models.enums import Mode


class Installation(BaseModel):
    account_id = pw.CharField(max_length=255)
    mode = pw.CharField(max_length=4)  # a Mode
    active = pw.BooleanField(default=False)
    installed_by = pw.CharField(max_length=255, null=True)
    installed_at = pw.DoubleField(null=True, index=True)
    uninstalled_at = pw.DoubleField(null=True, index=True)
    confirmed = pw.BooleanField(default=False)  # an authorized webhook agreed
    state_at = pw.BigIntegerField(default=0)
    state_seq = pw.DoubleField(default=0)
    state_source = pw.CharField(max_length=64, null=True)  # "callback" or an event id
    jobs_paused = pw.BooleanField(default=False)
    pause_reason = pw.TextField(null=True)
    created_at = pw.DoubleField(default=now)
    updated_at = pw.DoubleField(default=now, index=True)
    # What Stripe's Install API last said (`apps.install.*` events, sync); see jobs/installs.py.
    install_id = pw.CharField(max_length=255, null=True)
    install_status = pw.CharField(max_length=32, null=True)
    permissions_granted = pw.TextField(null=True)  # JSON list; null: not heard of yet
    permissions_pending = pw.TextField(null=True)  # JSON list
    approval_required = pw.BooleanField(default=False)
    details_at = pw.BigIntegerField(default=0)  # `created` of the change that set them

    class Meta:
        indexes = ((("account_id", "mode"), True),
                   (("active", "mode"), False),  # the status page (003)
                   (("jobs_paused", "active", "mode", "updated_at"), False))


@dataclass(frozen=True, slots=True)
class InstallationView:
    """An immutable copy of a row, safe to share with the event loop."""

    account_id: str
    mode: Mode
    active: bool
    since: int | None
    installed_by: str | None
    confirmed: bool
    jobs_paused: bool
    pause_reason: str | None
    updated_at: float
    install_id: str | None = None
    install_status: str | None = None
    permissions_granted: tuple[str, ...] | None = None  # None: the Install API never said
    permissions_pending: tuple[str, ...] = ()
    approval_required: bool = False

    @classmethod
    def of(cls, row: Installation) -> InstallationView:
        since = row.installed_at if row.active else row.uninstalled_at
        return cls(row.account_id, Mode(row.mode), row.active, int(since) if since else None,
                   row.installed_by, row.confirmed, row.jobs_paused, row.pause_reason,
                   row.updated_at, row.install_id, row.install_status,
                   _names(row.permissions_granted), _names(row.permissions_pending) or (),
                   bool(row.approval_required))


def _names(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(json.loads(text))


def apply_state(account_id: str, mode: str, active: bool, at: int, source: str,
                user_id: str | None = None, confirm: bool = False,
                arrived: float | None = None) -> tuple[InstallationView, bool]:
    """Set the installation's state if this change is not older than the last one applied.

    Runs in a database thread. Returns the row as it now stands and whether this change took
    effect. Changes are ordered by `at` (the event's `created`), then by `arrived` (when the
    event was received), so on a tie the one that arrived later wins, even when an earlier one
    is retried after it.
    """
    seq = time.time() if arrived is None else arrived
    with write_transaction():
        Installation.insert(account_id=account_id, mode=mode).on_conflict_ignore().execute()
        query = Installation.select().where(
            (Installation.account_id == account_id) & (Installation.mode == mode))
        if not is_sqlite(Installation._meta.database):
            query = query.for_update()
        row = query.get()
        if (at, seq) < (row.state_at, row.state_seq):
            if confirm and active and row.active:
                row.confirmed = True
                row.save()
            return InstallationView.of(row), False
        stamp = now()
        if active and not row.active:
            row.installed_at = stamp
            row.jobs_paused, row.pause_reason = False, None
        if not active and row.active:
            row.uninstalled_at = stamp
        if active and user_id:
            row.installed_by = user_id
        row.active = active
        row.confirmed = confirm or (row.confirmed and active)
        row.state_at, row.state_seq, row.state_source = at, seq, source
        row.updated_at = stamp
        row.save()
        return InstallationView.of(row), True


def set_paused(account_id: str, mode: str, paused: bool,
               reason: str | None = None) -> InstallationView | None:
    """Pause or resume an installation's jobs; the row after the change, None if there is none."""
    where = (Installation.account_id == account_id) & (Installation.mode == mode)
    Installation.update(jobs_paused=paused, pause_reason=reason if paused else None,
                        updated_at=now()).where(where).execute()
    row = Installation.get_or_none(where)
    return InstallationView.of(row) if row else None
