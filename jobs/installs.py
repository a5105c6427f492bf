"""Stripe's Install API: `apps.install.*` events, reconciliation, uninstall, permissions.

Events (sent to the app developer's own account: no top-level `account`; the install, with its
`account` and `livemode`, is `data.object`):
- `apps.install.created` / `apps.install.deleted` activate / deactivate the installation like
  `account.application.authorized` / `deauthorized`, through the same ordering rule
  (`models/installation.apply_state`); when both kinds arrive for one change, the second finds
  the state already set and changes nothing (jobs start once, app data is deleted once);
- every `apps.install.*` records the install's id, `status`, `permissions_granted`,
  `permissions_pending` and `approval_required` unless a newer change already did.

`apply_change` is the one code path for these events, for reconciliation and for
`run.py installs uninstall`: it deletes the account's app data only when the installation
really goes from active to inactive.

Reconciliation (`InstallSync`): list the app's installs per mode (`app=STRIPE_APP_ID`, pages of
100, auto-pagination, the mode's rate limit), then activate what Stripe has and the table lacks
and deactivate the reverse, in chunks that let the event loop breathe, one log line and one
`install_sync_changes_total` count per difference. The whole list is read before anything is
changed, so a listing that fails midway changes nothing. It runs at start-up and daily at a
stable moment of the day, each claimed in `job_run` (job `installs.sync`, account `platform`) so
that one replica does it; `run.py installs sync` runs it now.

Permissions: `missing_permissions(declared, view)` is what a job's `permissions=[...]` lacks in
the install's `permissions_granted` (nothing when the Install API has not said yet).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import peewee as pw

from jobs.errors import error_text
from jobs.stripe_api import StripeClients
from models.base import AccountModel, now
from models.db import Storage, write_transaction
from models.enums import MODES
from models.events import WebhookEvent
from models.installation import Installation, InstallationView, apply_state
from models.installation_index import InstallationIndex
from models.jobs import JobRun, update_run

log = logging.getLogger("app.installs")

CREATED = "apps.install.created"
UPDATED = "apps.install.updated"
DELETED = "apps.install.deleted"
INSTALL_EVENTS = (CREATED, UPDATED, DELETED)

#: Install statuses that mean "installed" and "not installed"; `installing` is left alone.
ACTIVE_STATUSES = ("installed", "uninstall_failed")
INACTIVE_STATUSES = ("install_failed", "uninstalling")

SYNC_JOB = "installs.sync"
PLATFORM = "platform"
DAY = 86400
SYNC_SPREAD = 3600  # the daily sync runs at a stable moment within the first hour (UTC)
STARTUP_BUCKET = 600  # replicas starting within the same ten minutes share one start-up sync
CHUNK = 500  # changes per database transaction during a sync


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
    def of(cls, obj: Any) -> InstallFacts:
        """From a dict (an event's `data.object`) or a `stripe.apps.Install`."""
        def get(name: str) -> Any:
            return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)

        return cls(str(get("account")), "live" if get("livemode") else "test", get("id"),
                   get("status"), tuple(get("permissions_granted") or ()),
                   tuple(get("permissions_pending") or ()), bool(get("approval_required")))

    @property
    def installed(self) -> bool:
        return self.status in ACTIVE_STATUSES

    def differs(self, row: Installation) -> bool:
        return (row.install_id, row.install_status, row.permissions_granted,
                row.permissions_pending, bool(row.approval_required)) != self._columns()

    def _columns(self) -> tuple[Any, ...]:
        return (self.install_id, self.status, json.dumps(list(self.permissions_granted)),
                json.dumps(list(self.permissions_pending)), self.approval_required)


def handles(type_: str) -> bool:
    return type_ in INSTALL_EVENTS


def missing_permissions(declared: Iterable[str], view: InstallationView | None) -> list[str]:
    """The declared permissions the install has not granted (none when it is not known yet)."""
    if view is None or view.permissions_granted is None:
        return []
    return [p for p in declared if p not in view.permissions_granted]


# ---- the one code path (database threads) ---------------------------------------------------

def _where(account_id: str, mode: str) -> Any:
    return (Installation.account_id == account_id) & (Installation.mode == mode)


def _record_facts(facts: InstallFacts, at: int) -> None:
    row = Installation.get_or_none(_where(facts.account_id, facts.mode))
    if row is None or at < row.details_at or not facts.differs(row):
        return
    (row.install_id, row.install_status, row.permissions_granted, row.permissions_pending,
     row.approval_required) = facts._columns()
    row.details_at, row.updated_at = at, now()
    row.save()


def record_facts(facts: InstallFacts, at: int) -> InstallationView:
    """Record what an install says (unless a newer change did); the row as it now stands."""
    with write_transaction():
        Installation.insert(account_id=facts.account_id, mode=facts.mode).on_conflict_ignore(
        ).execute()
        _record_facts(facts, at)
        return InstallationView.of(Installation.get(_where(facts.account_id, facts.mode)))


def apply_change(account_id: str, mode: str, active: bool, at: int, source: str,
                 facts: InstallFacts | None = None,
                 arrived: float | None = None) -> tuple[InstallationView, bool, int]:
    """(De)activate like a lifecycle webhook; returns (row, whether `active` flipped, app rows
    deleted). App data goes only when the installation really goes from active to inactive."""
    with write_transaction():
        before = Installation.get_or_none(_where(account_id, mode))
        was_active = before is not None and before.active
        _, applied = apply_state(account_id, mode, active, at, source=source, confirm=active,
                                 arrived=arrived)
        if facts is not None:
            _record_facts(facts, at)
        deleted = 0
        if applied and was_active and not active:
            deleted = AccountModel.delete_account_data(account_id, mode)
        view = InstallationView.of(Installation.get(_where(account_id, mode)))
        return view, view.active != was_active, deleted


# ---- events ---------------------------------------------------------------------------------

async def process_event(event: WebhookEvent, storage: Storage,
                        installations: InstallationIndex) -> None:
    """Apply one stored `apps.install.*` event (called by jobs/events.py)."""
    obj = json.loads(event.payload).get("data", {}).get("object", {})
    if not isinstance(obj, dict) or not obj.get("account"):
        log.warning("%s %s has no data.object.account; nothing to apply", event.type, event.id)
        return
    if "livemode" not in obj:
        obj = {**obj, "livemode": event.livemode}
    facts = InstallFacts.of(obj)
    if event.type == UPDATED:
        view = await storage.run(record_facts, facts, event.created)
        installations.put(view)
        log.info("%s %s/%s: status %s, granted %s, pending %s", event.type, facts.account_id,
                 facts.mode, facts.status, ",".join(facts.permissions_granted) or "-",
                 ",".join(facts.permissions_pending) or "-")
        return
    view, changed, deleted = await storage.run(
        apply_change, facts.account_id, facts.mode, event.type == CREATED, event.created,
        event.id, facts, event.received_at)
    installations.put(view)
    log.info("%s %s/%s: %s%s", event.type, facts.account_id, facts.mode,
             "applied" if changed else "already so, or older than the current state",
             f", {deleted} app rows deleted" if deleted else "")


# ---- reconciliation -------------------------------------------------------------------------

class SyncFailed(RuntimeError):
    """The listing failed; nothing was changed."""


@dataclass
class SyncResult:
    mode: str
    listed: int = 0
    activated: int = 0
    deactivated: int = 0
    updated: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        return (f"{self.mode}: {self.listed} installs listed, {self.activated} activated, "
                f"{self.deactivated} deactivated, {self.updated} details updated "
                f"in {self.seconds:.1f}s")


def _rows_of_mode(mode: str) -> dict[str, Installation]:
    query = Installation.select().where(Installation.mode == mode)
    return {row.account_id: row for row in query.iterator()}


def _insert_new(changes: list[tuple[str, str, bool | None, InstallFacts | None]], at: int,
                source: str) -> dict[tuple[str, str], InstallationView]:
    """Inside the caller's transaction: insert, in one statement, the active rows of accounts
    that had no row at all; returns the views of the rows this inserted. A row another writer
    (a webhook) inserted meanwhile is left alone: the caller applies that change one by one."""
    stamp, seq = now(), time.time()
    fresh = [(a, m, f) for a, m, active, f in changes if active and f is not None]
    if not fresh:
        return {}
    rows = []
    for account_id, mode, facts in fresh:
        granted, pending = (json.dumps(list(facts.permissions_granted)),
                            json.dumps(list(facts.permissions_pending)))
        rows.append({"account_id": account_id, "mode": mode, "active": True,
                     "installed_at": stamp, "confirmed": True, "state_at": at, "state_seq": seq,
                     "state_source": source, "created_at": stamp, "updated_at": stamp,
                     "install_id": facts.install_id, "install_status": facts.status,
                     "permissions_granted": granted, "permissions_pending": pending,
                     "approval_required": facts.approval_required, "details_at": at})
    Installation.insert_many(rows).on_conflict_ignore().execute()
    mine = (Installation.select()
            .where(Installation.account_id.in_([a for a, _, _ in fresh])
                   & (Installation.mode == fresh[0][1]) & (Installation.state_seq == seq)
                   & (Installation.state_source == source)))
    return {(r.account_id, r.mode): InstallationView.of(r) for r in mine}


def _apply_many(changes: list[tuple[str, str, bool | None, InstallFacts | None]], at: int,
                source: str, new: frozenset[str] = frozenset()
                ) -> list[tuple[InstallationView, bool, int]]:
    """Runs in a database thread: apply a chunk of a sync's changes in one transaction.

    `new` names the accounts that had no row when the sync read the table: their activations
    are inserted in bulk (100,000 of them take seconds, not minutes); every other change goes
    through `apply_change`, the webhook's path, one by one."""
    out = []
    with write_transaction():
        inserted = _insert_new([c for c in changes if c[0] in new], at, source)
        for account_id, mode, active, facts in changes:
            view = inserted.get((account_id, mode))
            if view is not None:
                out.append((view, True, 0))
            elif active is None:
                assert facts is not None
                _record_facts(facts, at)
                view = InstallationView.of(Installation.get(_where(account_id, mode)))
                out.append((view, False, 0))
            else:
                out.append(apply_change(account_id, mode, active, at, source, facts))
    return out


def _claim(mode: str, fire_time: int, replica: str) -> int | None:
    try:
        return JobRun.insert(job=SYNC_JOB, account_id=PLATFORM, mode=mode, fire_time=fire_time,
                             replica=replica, started_at=now(), outcome="running").execute()
    except pw.IntegrityError:
        return None


def daily_fire(app_id: str, at: float) -> int:
    """The next daily sync time after `at`: the same moment of each day on every replica."""
    offset = zlib.crc32(f"{SYNC_JOB}:{app_id}".encode()) % SYNC_SPREAD
    day = int(at) // DAY * DAY
    fire = day + offset
    return fire if fire > at else fire + DAY


class InstallSync:
    def __init__(self, app_id: str, clients: StripeClients, storage: Storage,
                 installations: InstallationIndex, replica: str | None = None,
                 on_change: Callable[[str, str], None] | None = None) -> None:
        """`on_change(mode, kind)` hears each difference applied (`kind`: `activated`,
        `deactivated` or `details`); the service counts them."""
        self.app_id = app_id
        self.clients = clients
        self.storage = storage
        self.installations = installations
        self.on_change = on_change
        self.replica = replica or f"{socket.gethostname()}:{id(self):x}"

    def modes(self) -> list[str]:
        return [m for m in MODES if self.clients.secret_keys.get(m)]

    async def list_installs(self, mode: str) -> dict[str, InstallFacts]:
        """Every install of the app in `mode`, by account; raises `SyncFailed` on any error."""
        client = self.clients.for_platform(mode)
        found: dict[str, InstallFacts] = {}
        try:
            page = await client.v1.apps.installs.list_async({"app": self.app_id, "limit": 100})
            async for inst in page.auto_paging_iter():
                facts = InstallFacts.of(inst)
                found[facts.account_id] = facts
                if len(found) % 1000 == 0:
                    await asyncio.sleep(0)
        except Exception as exc:
            raise SyncFailed(f"listing {mode}-mode installs failed after {len(found)}: "
                             + error_text(exc, limit=300)) from exc
        return found

    async def sync(self, mode: str) -> SyncResult:
        """Make the table agree with Stripe's list for `mode`; see the module docstring."""
        started = time.time()
        listed = await self.list_installs(mode)
        # Changes made while the list was read (events created from `started` on) win.
        at = int(started) - 1
        rows = await self.storage.run(_rows_of_mode, mode)
        result = SyncResult(mode, listed=len(listed))
        changes: list[tuple[str, str, bool | None, InstallFacts | None]] = []
        for i, (account_id, facts) in enumerate(listed.items()):
            if i % 5000 == 4999:
                await asyncio.sleep(0)
            row = rows.get(account_id)
            active = row is not None and row.active
            if facts.installed and not active:
                changes.append((account_id, mode, True, facts))
            elif active and facts.status in INACTIVE_STATUSES:
                changes.append((account_id, mode, False, facts))
            elif row is not None and facts.differs(row):
                changes.append((account_id, mode, None, facts))
        for account_id, row in rows.items():
            if row.active and account_id not in listed:
                changes.append((account_id, mode, False, None))
        for start in range(0, len(changes), CHUNK):
            chunk = changes[start:start + CHUNK]
            new = frozenset(a for a, _, active, _ in chunk if active and a not in rows)
            applied = await self.storage.run(_apply_many, chunk, at, "sync", new)
            for (account_id, _, active, _facts), (view, changed, deleted) in zip(
                    chunk, applied, strict=True):
                self.installations.put(view)
                if active is None:
                    result.updated += 1
                    kind = "details"
                elif not changed:
                    continue  # a newer event decided meanwhile
                else:
                    kind = "activated" if active else "deactivated"
                    setattr(result, kind, getattr(result, kind) + 1)
                    log.info("install sync %s/%s: %s (%s)%s", account_id, mode, kind,
                             "Stripe has it, the table did not" if active
                             else "the table had it, Stripe does not",
                             f", {deleted} app rows deleted" if deleted else "")
                if self.on_change is not None:
                    self.on_change(mode, kind)
            await asyncio.sleep(0)
        result.seconds = time.time() - started
        log.info("install sync %s", result.line())
        return result

    async def uninstall(self, account_id: str, mode: str) -> InstallationView:
        """Uninstall through the API, then apply the result here as a webhook would."""
        client = self.clients.for_platform(mode)
        view = self.installations.get(account_id, mode)
        install_id = view.install_id if view else None
        if not install_id:
            page = await client.v1.apps.installs.list_async(
                {"app": self.app_id, "account": account_id, "limit": 1})
            if not page.data:
                raise LookupError(f"Stripe has no {mode}-mode install of {self.app_id} on "
                                  f"{account_id}")
            install_id = page.data[0].id
        obj = await client.v1.apps.installs.uninstall_async(install_id)
        facts = InstallFacts.of(obj)
        after, _, deleted = await self.storage.run(
            apply_change, account_id, mode, False, int(time.time()), "uninstall", facts)
        self.installations.put(after)
        log.info("uninstalled %s/%s through the API (%s)%s", account_id, mode, facts.status,
                 f", {deleted} app rows deleted" if deleted else "")
        return after

    # ---- claimed runs: start-up and daily -------------------------------------------------
    async def run_claimed(self, mode: str, fire_time: int) -> SyncResult | None:
        """Sync `mode` unless another replica claimed this fire; None when not claimed."""
        run_id = await self.storage.run(_claim, mode, fire_time, self.replica)
        if run_id is None:
            return None
        outcome, error, result = "failed", None, None
        try:
            result = await self.sync(mode)
            outcome = "succeeded"
        except Exception as exc:
            error = error_text(exc)
            log.warning("install sync %s failed, nothing changed: %s", mode, error)
        finally:
            await asyncio.shield(self.storage.run(update_run, run_id, outcome=outcome,
                                                  error=error, finished_at=now()))
        return result

    async def run_forever(self) -> None:
        """At start-up, then daily: a claimed sync of every mode with a platform key."""
        fire = int(time.time()) // STARTUP_BUCKET * STARTUP_BUCKET
        while True:
            for mode in self.modes():
                try:
                    await self.run_claimed(mode, fire)
                except Exception as exc:  # the database may be down; the next day tries again
                    log.warning("install sync %s could not run: %s", mode, type(exc).__name__)
            fire = daily_fire(self.app_id, time.time())
            await asyncio.sleep(max(0.0, fire - time.time()))
