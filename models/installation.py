"""Installations: one row per (account, mode), kept for good and flipped active/inactive.

`change_installation(change)` is the one rule for every change of an installation (the door,
`models/installation_index.InstallationIndex.apply`, runs it and tells the index). A change is
an `InstallChange` of one `Change` kind:

- `INSTALLED`: Stripe says the app is installed (`account.application.authorized`,
  `apps.install.created`, the Install API): active and confirmed;
- `UNINSTALLED`: Stripe says it is not (`deauthorized`, `apps.install.deleted`, the Install
  API, an uninstall through it): inactive;
- `LINK`: the install-link callback, with its single-use `state`: active at once, but its mode
  (the unsigned `livemode`) is provisional (`confirmed` false) until Stripe agrees;
- `PENDING`: the Marketplace callback, without `state`: nothing takes effect; the row records
  who asked and since when (`pending_at`) until Stripe confirms with an `INSTALLED`;
- `CONTRADICTED`: the Install API has the install in the other mode than a callback claimed: a
  provisional (active, unconfirmed) row is undone, a pending one stops waiting; a confirmed one
  is left alone;
- `DETAILS`: what an `apps.install` object says (id, status, permissions) and nothing else.

The ordering rule: changes are ordered by the time they describe (`at`: the event's `created`,
the install signature's timestamp, the moment an Install API answer was asked for) and, on a
tie, by arrival (`state_seq`): a late, older change never undoes a newer one, so an uninstall is
never undone by a callback signed, or an Install API answer asked for, before it. Stripe does
not deliver events in order, and `created` has one-second resolution, so of two changes of one
account and mode in the same second the one that arrived later wins
(https://docs.stripe.com/webhooks; the webhook path is in `jobs/events.py`). An older
`INSTALLED` still confirms a row that is active; `PENDING` and `DETAILS` never move the order.

Whatever the kind: when the row goes from active to inactive, the account's app data in that
mode (every `AccountModel` table) is deleted in the same transaction; never otherwise. The
tables are those of the models the caller passes (`models`: the ones the loader found, the
project's and the app's; the door holds them), by default `discover_models()`'s.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import peewee as pw

from models.base import AccountModel, BaseModel, now
from models.db import is_sqlite, write_transaction
from models.enums import MODE_LENGTH, Mode

#: Install statuses that mean "installed" and "not installed"; `installing` is left alone.
ACTIVE_STATUSES = ("installed", "uninstall_failed")
INACTIVE_STATUSES = ("install_failed", "uninstalling")


class Installation(BaseModel):
    account_id = pw.CharField(max_length=255)
    mode = pw.CharField(max_length=MODE_LENGTH)  # a Mode
    active = pw.BooleanField(default=False)
    installed_by = pw.CharField(max_length=255, null=True)
    installed_at = pw.DoubleField(null=True, index=True)
    uninstalled_at = pw.DoubleField(null=True, index=True)
    confirmed = pw.BooleanField(default=False)  # Stripe agreed (an event or the Install API)
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
    # A Marketplace install waiting for Stripe to confirm it (`Change.PENDING`), since when.
    pending_at = pw.DoubleField(null=True)
    # The account's `Stripe-Context` (an organization's, from a signed event's `context`; see
    # `models/context.py`); null: calls name the account with `Stripe-Account`.
    context = pw.CharField(max_length=255, null=True)
    context_at = pw.BigIntegerField(default=0)  # `created` of the event that set it

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
    pending: bool = False  # a Marketplace install waiting for Stripe's confirmation
    context: str | None = None  # its calls' `Stripe-Context` (models/context.py)

    @classmethod
    def of(cls, row: Installation) -> InstallationView:
        since = row.installed_at if row.active else row.uninstalled_at
        return cls(row.account_id, Mode(row.mode), row.active, int(since) if since else None,
                   row.installed_by, row.confirmed, row.jobs_paused, row.pause_reason,
                   row.updated_at, row.install_id, row.install_status,
                   _names(row.permissions_granted), _names(row.permissions_pending) or (),
                   bool(row.approval_required),
                   row.pending_at is not None and not row.active, row.context)

    @property
    def provisional(self) -> bool:
        """Active, but Stripe has not confirmed this mode yet (an install link's)."""
        return self.active and not self.confirmed


def _names(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(json.loads(text))


@dataclass(frozen=True, slots=True)
class InstallFacts:
    """What one `apps.install` object says."""

    account_id: str
    mode: str
    install_id: str | None
    status: str | None
    permissions_granted: tuple[str, ...]
    permissions_pending: tuple[str, ...]
    approval_required: bool

    @classmethod
    def of(cls, obj: Any, sandbox: bool = False) -> InstallFacts:
        """From a dict (an event's `data.object`) or a `stripe.apps.Install`; `sandbox`: seen
        with the managed sandbox's key or secret (its installs say `livemode: false`)."""
        def get(name: str) -> Any:
            return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)

        return cls(str(get("account")), Mode.of_livemode(bool(get("livemode")), sandbox),
                   get("id"),
                   get("status"), tuple(get("permissions_granted") or ()),
                   tuple(get("permissions_pending") or ()), bool(get("approval_required")))

    @property
    def installed(self) -> bool:
        return self.status in ACTIVE_STATUSES

    def differs(self, row: Installation) -> bool:
        return (row.install_id, row.install_status, row.permissions_granted,
                row.permissions_pending, bool(row.approval_required)) != self.columns()

    def columns(self) -> tuple[Any, ...]:
        return (self.install_id, self.status, json.dumps(list(self.permissions_granted)),
                json.dumps(list(self.permissions_pending)), self.approval_required)


class Change(StrEnum):
    """The kinds of change (see the module docstring)."""

    INSTALLED = "installed"
    UNINSTALLED = "uninstalled"
    LINK = "link"
    PENDING = "pending"
    CONTRADICTED = "contradicted"
    DETAILS = "details"


@dataclass(frozen=True, slots=True)
class InstallChange:
    account_id: str
    mode: str
    kind: Change
    at: int  # the time the change describes
    source: str  # "callback", "marketplace", "sync", "install_api", an event id...
    arrived: float | None = None  # when it was received (the tie-break); now when None
    user_id: str | None = None
    facts: InstallFacts | None = None  # what an `apps.install` object said, recorded too


@dataclass(frozen=True, slots=True)
class Outcome:
    view: InstallationView  # the row as it now stands
    applied: bool  # the change took effect (it was not older than the current state)
    flipped: bool  # `active` changed
    deleted: int  # app rows deleted: the installation went from active to inactive


class Refused(Exception):
    """A precondition of `change_installation` said no; nothing was written."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _where(account_id: str, mode: str) -> Any:
    return (Installation.account_id == account_id) & (Installation.mode == mode)


def _locked_row(account_id: str, mode: str) -> Installation:
    Installation.insert(account_id=account_id, mode=mode).on_conflict_ignore().execute()
    query = Installation.select().where(_where(account_id, mode))
    if not is_sqlite(Installation._meta.database):
        query = query.for_update()
    return query.get()


def _record_facts(row: Installation, facts: InstallFacts, at: int) -> bool:
    if at < row.details_at or not facts.differs(row):
        return False
    (row.install_id, row.install_status, row.permissions_granted, row.permissions_pending,
     row.approval_required) = facts.columns()
    row.details_at, row.updated_at = at, now()
    return True


def _set(row: Installation, active: bool, confirmed: bool, change: InstallChange, at: int,
         seq: float) -> None:
    stamp = now()
    if active and not row.active:
        row.installed_at = stamp
        row.jobs_paused, row.pause_reason = False, None
    if not active and row.active:
        row.uninstalled_at = stamp
    if active and change.user_id:
        row.installed_by = change.user_id
    row.active, row.confirmed, row.pending_at = active, confirmed, None
    row.state_at, row.state_seq, row.state_source = at, seq, change.source
    row.updated_at = stamp


def _apply(row: Installation, change: InstallChange, seq: float) -> bool:
    """The rule: change `row` in place; whether the change took effect."""
    older = (change.at, seq) < (row.state_at, row.state_seq)
    kind = change.kind
    if kind is Change.INSTALLED:
        if older:
            if row.active and not row.confirmed:  # a late confirmation still confirms
                row.confirmed, row.updated_at = True, now()
            return False
        _set(row, True, True, change, change.at, seq)
    elif kind is Change.UNINSTALLED:
        if older:
            return False
        _set(row, False, False, change, change.at, seq)
    elif kind is Change.LINK:
        if older:
            return False
        _set(row, True, row.active and row.confirmed, change, change.at, seq)
    elif kind is Change.CONTRADICTED:
        # Only a provisional row (ordered after what it contradicts, whatever its `at`), or a
        # pending one, which stops waiting.
        if not row.active and row.pending_at is not None:
            row.pending_at, row.updated_at = None, now()
            return True
        if not row.active or row.confirmed:
            return False
        _set(row, False, False, change, max(change.at, row.state_at), seq)
    elif kind is Change.PENDING:
        if older or row.active:
            return False
        row.pending_at, row.updated_at = now(), now()
        if change.user_id:
            row.installed_by = change.user_id
    else:  # DETAILS: only the facts, below
        return False
    return True


def change_installation(change: InstallChange,
                        precondition: Callable[[], str | None] | None = None,
                        models: Sequence[type[BaseModel]] | None = None) -> Outcome:
    """Runs in a database thread: apply one change under the rule (module docstring).

    `precondition`, when given, runs first in the same transaction (a used state or signature
    is recorded there); a reason it returns raises `Refused` and nothing is written. `models`:
    the tables whose rows of the account and mode go when the installation ends (default:
    `discover_models()`)."""
    seq = time.time() if change.arrived is None else change.arrived
    with write_transaction():
        if precondition is not None:
            reason = precondition()
            if reason is not None:
                raise Refused(reason)
        row = _locked_row(change.account_id, change.mode)
        was_active, before = row.active, InstallationView.of(row)
        applied = _apply(row, change, seq)
        if change.facts is not None and _record_facts(row, change.facts, change.at):
            applied = applied or change.kind is Change.DETAILS
        deleted = 0
        if was_active and not row.active:
            deleted = AccountModel.delete_account_data(change.account_id, change.mode,
                                                       models)
        view = InstallationView.of(row)
        if view != before:
            row.save()
            view = InstallationView.of(row)
        return Outcome(view, applied, row.active != was_active, deleted)


def _insert_new(changes: list[InstallChange]) -> dict[tuple[str, str], Outcome]:
    """Inside the caller's transaction: insert, in one statement, the active rows of accounts
    that had no row at all; returns the outcomes of the rows this inserted. A row another writer
    (a webhook) inserted meanwhile is left alone: the caller applies that change one by one."""
    stamp, seq = now(), time.time()
    fresh = [c for c in changes if c.kind is Change.INSTALLED and c.facts is not None]
    if not fresh:
        return {}
    rows = []
    for c in fresh:
        assert c.facts is not None
        install_id, status, granted, pending, approval = c.facts.columns()
        rows.append({"account_id": c.account_id, "mode": c.mode, "active": True,
                     "installed_at": stamp, "confirmed": True, "state_at": c.at,
                     "state_seq": seq, "state_source": c.source, "created_at": stamp,
                     "updated_at": stamp, "install_id": install_id, "install_status": status,
                     "permissions_granted": granted, "permissions_pending": pending,
                     "approval_required": approval, "details_at": c.at})
    Installation.insert_many(rows).on_conflict_ignore().execute()
    modes = {c.mode for c in fresh}
    mine = (Installation.select()
            .where(Installation.account_id.in_([c.account_id for c in fresh])
                   & Installation.mode.in_(list(modes)) & (Installation.state_seq == seq)
                   & (Installation.state_source.in_(list({c.source for c in fresh})))))
    return {(r.account_id, r.mode): Outcome(InstallationView.of(r), True, True, 0)
            for r in mine}


def change_many(changes: Iterable[InstallChange],
                new: frozenset[tuple[str, str]] = frozenset(),
                models: Sequence[type[BaseModel]] | None = None) -> list[Outcome]:
    """Runs in a database thread: apply many changes in one transaction, in order.

    `new` names the (account, mode) that had no row when the caller read the table: their
    `INSTALLED` changes (with facts) are inserted in bulk (100,000 of them take seconds, not
    minutes); every other change goes through `change_installation`, one by one (`models` as
    there)."""
    changes = list(changes)
    with write_transaction():
        inserted = _insert_new([c for c in changes if (c.account_id, c.mode) in new])
        return [inserted.get((c.account_id, c.mode)) or change_installation(c, None, models)
                for c in changes]


def set_paused(account_id: str, mode: str, paused: bool,
               reason: str | None = None) -> InstallationView | None:
    """Pause or resume an installation's jobs; the row after the change, None if there is none."""
    where = _where(account_id, mode)
    Installation.update(jobs_paused=paused, pause_reason=reason if paused else None,
                        updated_at=now()).where(where).execute()
    row = Installation.get_or_none(where)
    return InstallationView.of(row) if row else None


def set_context(account_id: str, mode: str, context: str | None,
                at: int) -> InstallationView | None:
    """Record the `Stripe-Context` of an installation, as the event `created` at `at` says
    (`models/context.py`); an older event than the one that set it changes nothing. The row as
    it stands after; None when there is no such installation."""
    where = _where(account_id, mode)
    with write_transaction():
        (Installation.update(context=context, context_at=at, updated_at=now())
         .where(where & (Installation.context_at <= at)).execute())
        row = Installation.get_or_none(where)
    return InstallationView.of(row) if row else None


def row_view(account_id: str, mode: str) -> InstallationView | None:
    """The row as it stands, None if there is none."""
    row = Installation.get_or_none(_where(account_id, mode))
    return InstallationView.of(row) if row else None


def apply_state(account_id: str, mode: str, active: bool, at: int, source: str,
                user_id: str | None = None, confirm: bool = False,
                arrived: float | None = None) -> tuple[InstallationView, bool]:
    """Seeding for tests and benchmarks: `change_installation` with the kind these arguments
    mean (`INSTALLED` when `confirm`, `LINK` when not, `UNINSTALLED` for `active=False`).
    Product code goes through the door (`InstallationIndex.apply`), which also tells the index."""
    kind = (Change.UNINSTALLED if not active else Change.INSTALLED if confirm else Change.LINK)
    out = change_installation(InstallChange(account_id, mode, kind, at, source, arrived,
                                            user_id))
    return out.view, out.applied
