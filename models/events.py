"""Webhook events, stored before they are acknowledged and kept as the audit trail.

`status` moves pending -> processing -> processed, or -> failed (retried at `next_attempt_at`
with backoff, for hours: see `retry_delay`) and, after `MAX_ATTEMPTS`, -> dead (kept; `run.py events
replay` runs it again).
A claim (`claim_event`) is an UPDATE that only one replica can win, so an event is processed by
one replica at a time. The claim is a short lease (`locked_until`, `models/leases.py`) that the
holder renews while it works (`renew_events`): a claim whose holder died expires within
`LEASE_SECONDS`, and `next_claimable_at` tells a poller when to look again.
"""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Callable
from typing import Any, NamedTuple

import peewee as pw

from models.backoff import Jitter, backoff_delay
from models.base import BaseModel, now
from models.db import database, is_sqlite, write_transaction
from models.enums import EventStatus, Mode
from models.leases import LEASE_SECONDS, expired, renew_rows

MAX_ATTEMPTS = 16  # with `retry_delay`: 2.6 to 5.1 hours of tries before `dead`
RETRY_CAP = 3600.0  # the longest wait between two tries


#: Errors a single event's row can cause (a batch that fails with one is stored event by event).
ROW_ERRORS = (pw.IntegrityError, pw.DataError, ValueError, TypeError)


class WebhookEvent(BaseModel):
    id = pw.CharField(max_length=255, primary_key=True)
    type = pw.CharField(max_length=255, index=True)
    account_id = pw.CharField(max_length=255, null=True, index=True)
    livemode = pw.BooleanField()
    # Verified with a sandbox webhook secret: the body says `livemode: false` for a sandbox
    # and a test event alike, so only the secret tells them apart (`mode`). A flag rather than
    # a mode column: a replica of the previous version, during a rolling upgrade, inserts
    # without it and gets the database's default, false, which is right for every event it can
    # verify (it knows no sandbox secret).
    sandbox = pw.BooleanField(default=False)
    # The event's `context` (API 2025-04-30.basil and later: the account, or path of accounts,
    # that generated it, as `Stripe-Context` names it); null when it has none.
    context = pw.CharField(max_length=255, null=True)
    created = pw.BigIntegerField()
    payload = pw.TextField()  # the raw body, byte for byte as verified (UTF-8)
    received_at = pw.DoubleField(default=now)
    status = pw.CharField(max_length=16, default=EventStatus.PENDING.value,
                         index=True)  # an EventStatus
    attempts = pw.IntegerField(default=0)
    last_error = pw.TextField(null=True)
    next_attempt_at = pw.DoubleField(null=True, index=True)
    locked_until = pw.DoubleField(null=True)  # the lease of the claim (`models/leases.py`)
    claimed_by = pw.CharField(max_length=128, null=True)  # who holds or last held the claim
    processed_at = pw.DoubleField(null=True)

    class Meta:
        indexes = ((("status", "received_at"), False),  # the status page (003)
                   (("received_at", "status"), False),
                   (("status", "processed_at"), False))  # retention deletes by these (006)

    @property
    def mode(self) -> Mode:
        return Mode.of_livemode(self.livemode, self.sandbox)


def _claimable(t: float, force: bool = False) -> pw.Expression:
    """The one definition of an event that may be claimed at time `t`.

    Due: pending or failed, and its (re)try time has come. Stale: claimed by a holder whose
    lease ran out (it died or hung), so anyone may take it over. `force` (an operator's replay)
    takes anything not held by a live claim, due or not, processed or dead.
    """
    stale = ((WebhookEvent.status == EventStatus.PROCESSING)
             & expired(WebhookEvent.locked_until, t))
    if force:
        return (WebhookEvent.status != EventStatus.PROCESSING) | stale
    due = (WebhookEvent.status.in_((EventStatus.PENDING, EventStatus.FAILED))
           & (WebhookEvent.next_attempt_at <= t))
    return due | stale


def store_event(event_id: str, type_: str, account_id: str | None, livemode: bool,
                created: int, payload: str, needs_processing: bool = True,
                mode: Mode | None = None, context: str | None = None) -> bool:
    """Insert the event; False when an event with this id is already stored (a redelivery).

    The primary key decides between two deliveries that race: exactly one insert wins. An
    event nothing handles is stored as processed straight away (one write instead of three).
    `mode` defaults to `livemode`'s (live or test); a sandbox event names it.
    """
    (stored,) = store_events([NewEvent(event_id, type_, account_id, livemode, created, payload,
                                       needs_processing, mode, context)])
    assert isinstance(stored, bool)  # a batch of one raises its error
    return stored


class NewEvent(NamedTuple):
    """An event to store (`store_events`): `store_event`'s arguments. `mode` None or live or
    test: the mode of `livemode` (`Mode.of_livemode`); only `Mode.SANDBOX` is stored as such
    (the webhook handler names the verifying secret's mode)."""

    id: str
    type: str
    account_id: str | None
    livemode: bool
    created: int
    payload: str
    needs_processing: bool = True
    mode: Mode | None = None
    context: str | None = None


#: The columns `store_events` fills, in the order of its parameters.
_NEW_COLUMNS = ("id", "type", "account_id", "livemode", "sandbox", "context", "created", "payload",
                "received_at", "status", "attempts", "next_attempt_at", "processed_at")


def _insert_sql(rows: int = 1, on_conflict: bool = True) -> str:
    """`INSERT` of `rows` events, in the database's parameter style. With `on_conflict`,
    `ON CONFLICT (id) DO NOTHING` (SQLite >= 3.24 and PostgreSQL alike): a redelivery inserts
    nothing (rowcount 0), and any other failure (a constraint, a type) still raises."""
    meta = WebhookEvent._meta
    columns = ", ".join(f'"{meta.fields[c].column_name}"' for c in _NEW_COLUMNS)
    row = "(" + ", ".join([database.param] * len(_NEW_COLUMNS)) + ")"
    sql = f'INSERT INTO "{meta.table_name}" ({columns}) VALUES {", ".join([row] * rows)}'
    return sql + (f' ON CONFLICT ("{meta.primary_key.column_name}") DO NOTHING'
                  if on_conflict else "")


def _values(event: NewEvent, t: float) -> tuple[Any, ...]:
    """The values of `_NEW_COLUMNS` for `event` received at `t`."""
    processing = event.needs_processing
    status = EventStatus.PENDING if processing else EventStatus.PROCESSED
    return (event.id, event.type, event.account_id, event.livemode, event.mode == Mode.SANDBOX,
            event.context,
            event.created, event.payload, t, status.value, 0, t if processing else None,
            None if processing else t)


def _insert_one(event: NewEvent, t: float) -> bool:
    """Insert one event in the current transaction; False for an id already stored."""
    return bool(database.execute_sql(_insert_sql(), _values(event, t)).rowcount == 1)


def _insert_many(events: list[NewEvent], t: float) -> list[bool]:
    """Insert a batch in the current write transaction in two statements whatever its size
    (each statement lets the GIL go and waits to get it back, which is what a busy event loop
    makes slow): which ids are stored already, then one multi-row INSERT of the others, each
    id's first copy. A row stored meanwhile by another process (PostgreSQL) makes the INSERT
    fail, and `store_events` then stores the batch one by one."""
    ids = list(dict.fromkeys(event.id for event in events))
    meta = WebhookEvent._meta
    key = meta.primary_key.column_name
    marks = ", ".join([database.param] * len(ids))
    seen = {row[0] for row in database.execute_sql(
        f'SELECT "{key}" FROM "{meta.table_name}" WHERE "{key}" IN ({marks})', ids)}
    outcomes, new = [], []
    for event in events:
        outcomes.append(event.id not in seen)
        if event.id not in seen:
            seen.add(event.id)
            new.append(event)
    if new:
        database.execute_sql(_insert_sql(len(new), on_conflict=False),
                             [value for event in new for value in _values(event, t)])
    return outcomes


def store_events(events: list[NewEvent]) -> list[bool | BaseException]:
    """Store a batch of events in one transaction (a group commit, `Storage.grouped`); for each,
    in order: True if inserted, False if an event with its id was already stored, before or
    earlier in the same batch (the first of two copies wins), or the exception that kept it out.

    When the batch's transaction fails, nothing of it is kept, and each event is stored again in
    a transaction of its own, so that one bad event fails alone. When every event fails, the
    first event's error is raised instead (the database refuses writes: `Storage` reacts to
    it)."""
    t = now()
    try:
        with write_transaction():
            if len(events) == 1:
                return [_insert_one(events[0], t)]
            return list(_insert_many(events, t))
    except ROW_ERRORS as exc:  # one event's row may be at fault: try each alone
        if len(events) == 1:
            raise
        first: Exception = exc
    # Anything else (locked, timed out, disk full, connection lost) is the database's, not an
    # event's: raised at once, so every event of the batch is refused (Stripe retries) rather
    # than each waiting out the busy timeout again on its own.
    outcomes: list[bool | BaseException] = []
    for event in events:
        try:
            with write_transaction():
                outcomes.append(_insert_one(event, t))
        except Exception as exc:
            outcomes.append(exc)
    if all(isinstance(o, BaseException) for o in outcomes):
        raise outcomes[0] if isinstance(outcomes[0], Exception) else first
    return outcomes


def claim_event(event_id: str, force: bool = False, holder: str | None = None,
                lease: float = LEASE_SECONDS) -> WebhookEvent | None:
    """Take the event for processing if it is due and nobody holds it; None otherwise.

    The claim lasts `lease` seconds unless `holder` renews it (`renew_events`)."""
    t = now()
    query = (WebhookEvent.update(status=EventStatus.PROCESSING, locked_until=t + lease,
                                 claimed_by=holder, attempts=WebhookEvent.attempts + 1)
             .where((WebhookEvent.id == event_id) & _claimable(t, force)))
    if not is_sqlite(database) or sqlite3.sqlite_version_info >= (3, 35):
        return next(iter(query.returning(WebhookEvent).execute()), None)  # one statement
    with write_transaction():  # SQLite before 3.35 (Debian bullseye) has no RETURNING
        if not query.execute():
            return None
        return WebhookEvent.get_by_id(event_id)


def renew_events(event_ids: list[str], until: float, holder: str | None) -> int:
    """Push the lease of the events `holder` still holds to `until` (one UPDATE)."""
    return renew_rows(WebhookEvent, WebhookEvent.locked_until, event_ids, until,
                      WebhookEvent.claimed_by, holder,
                      still=WebhookEvent.status == EventStatus.PROCESSING)


def finish_event(event_id: str, error: str | None, attempts: int,
                 retry_base: float = 2.0, holder: str | None = None,
                 final: bool = False) -> EventStatus:
    """Record the outcome of a processing attempt; returns the new status.

    `final`: the error is one a retry cannot mend (something is not configured): `dead` at
    once, to be replayed (`run.py events replay`) once it is set up.

    With `holder`, only while the claim is still `holder`'s: if its lease lapsed and another
    replica took the event over, that replica records the outcome."""
    t = now()
    fields: dict[str, Any]
    if error is None:
        status, fields = EventStatus.PROCESSED, {"processed_at": t, "last_error": None,
                                                 "next_attempt_at": None}
    elif final or attempts >= MAX_ATTEMPTS:
        status, fields = EventStatus.DEAD, {"last_error": error, "next_attempt_at": None}
    else:
        status, fields = EventStatus.FAILED, {
            "last_error": error, "next_attempt_at": t + retry_delay(attempts, retry_base)}
    cond = WebhookEvent.id == event_id
    if holder is not None:
        cond &= WebhookEvent.claimed_by == holder
    WebhookEvent.update(status=status, locked_until=None, **fields).where(cond).execute()
    return status


def retry_delay(attempts: int, base: float = 2.0, cap: float = RETRY_CAP,
                uniform: Callable[[float, float], float] = random.uniform) -> float:
    """The wait after failed attempt number `attempts` (1-based): exponential with equal jitter.

    Between half and all of min(cap, base ** attempts): after attempt 1, 1 to 2 s, then 2 to
    4, 4 to 8 ... up to 30 to 60 min. With `MAX_ATTEMPTS` tries, an event is retried for 2.6 to
    5.1 hours before it is dead.
    """
    return backoff_delay(attempts - 1, first=base, factor=base, cap=cap, jitter=Jitter.EQUAL,
                         uniform=uniform)


def of_mode(mode: Mode | str) -> pw.Expression:
    """The events of `mode` (the inverse of `WebhookEvent.mode`)."""
    mode = Mode(mode)
    return ((WebhookEvent.livemode == mode.livemode)
            & (WebhookEvent.sandbox == (mode == Mode.SANDBOX)))


def waiting_event(type_: str, account_id: str, mode: Mode | str) -> bool:
    """Whether an event of `type_` about this account and mode is stored and not yet done with
    (pending, being processed, or failed and to be retried; not processed, not dead)."""
    return (WebhookEvent.select(WebhookEvent.id)
            .where(WebhookEvent.type == type_, WebhookEvent.account_id == account_id,
                   of_mode(mode),
                   WebhookEvent.status.in_([EventStatus.PENDING, EventStatus.PROCESSING,
                                            EventStatus.FAILED]))
            .exists())


def newer_contexts(account_id: str, mode: Mode | str, after: int,
                   limit: int = 20) -> list[tuple[str, int]]:
    """`(context, created)` of the stored events about this account and mode that were
    created after `after` and carry a context, newest first (at most `limit`): what decides an
    installation's context before an older event may change it (`models/context.py`)."""
    query = (WebhookEvent.select(WebhookEvent.context, WebhookEvent.created)
             .where(WebhookEvent.account_id == account_id, of_mode(mode),
                    WebhookEvent.created > after, WebhookEvent.context.is_null(False))
             .order_by(WebhookEvent.created.desc()).limit(limit))
    return [(row.context, row.created) for row in query]


def due_event_ids(limit: int = 100) -> list[str]:
    """Events to claim now (due or stale), oldest first."""
    t = now()
    q = (WebhookEvent.select(WebhookEvent.id).where(_claimable(t))
         .order_by(WebhookEvent.created, WebhookEvent.received_at).limit(limit))
    return [row.id for row in q]


def next_claimable_at() -> float | None:
    """The earliest time an event not claimable now becomes so: a retry falling due or a
    lease running out (None when there is none). A poller sleeps until then, not longer."""
    times = []
    for cond, column in (
        (WebhookEvent.status == EventStatus.PROCESSING, WebhookEvent.locked_until),
        (WebhookEvent.status.in_((EventStatus.PENDING, EventStatus.FAILED)),
         WebhookEvent.next_attempt_at),
    ):
        value = (WebhookEvent.select(pw.fn.MIN(column)).where(cond & column.is_null(False))
                 .scalar())
        if value is not None:
            times.append(float(value))
    return min(times) if times else None
