"""Stripe's Install API: `apps.install.*` events, reconciliation, uninstall, permissions.

Events (sent to the app developer's own account: no top-level `account`; the install, with its
`account` and `livemode`, is `data.object`):
- `apps.install.created` / `apps.install.deleted` activate / deactivate the installation like
  `account.application.authorized` / `deauthorized`, through the same ordering rule
  (`models/installation.py`); when both kinds arrive for one change, the second finds the
  state already set and changes nothing (jobs start once, app data is deleted once);
- every `apps.install.*` records the install's id, `status`, `permissions_granted`,
  `permissions_pending` and `approval_required` unless a newer change already did.

Every change goes through the door, `InstallationIndex.apply` / `apply_many`
(models/installation_index.py), as for the webhooks and the install callback: it deletes the
account's app data only when the installation really goes from active to inactive.

Confirmation (`InstallSync.confirm`): the install callback asks the Install API, within
`CONFIRM_TIMEOUT`, whether the app is installed on the account in the mode the callback claims:
a Marketplace install (pending) takes effect, an install link's provisional mode is confirmed,
or, when Stripe has the install in the other mode instead, undone (`Change.CONTRADICTED`) while
the other mode is installed.

Reconciliation (`InstallSync`): list the app's installs per mode (`app=STRIPE_APP_ID`, pages of
100, auto-pagination, the mode's rate limit), then activate what Stripe has and the table lacks
and deactivate the reverse, in chunks that let the event loop breathe, one log line and one
`install_sync_changes_total` count per difference. The whole list is read before anything is
changed, so a listing that fails midway changes nothing. It runs at start-up and daily at a
stable moment of the day (the sandbox mode hourly: `next_fire`), each claimed in `job_run` (job
`installs.sync`, account `platform`) so that one replica does it; `run.py installs sync` runs it
now. The sandbox mode lists the managed sandbox's installs with its own key.

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

import peewee as pw

from jobs.errors import error_text
from jobs.stripe_api import StripeClients
from models.base import now
from models.db import Storage
from models.enums import MODES, Mode
from models.events import WebhookEvent
from models.installation import (
    INACTIVE_STATUSES,
    Change,
    Installation,
    InstallationView,
    InstallChange,
    InstallFacts,
    Outcome,
)
from models.installation_index import InstallationIndex
from models.jobs import JobRun, update_run

log = logging.getLogger("app.installs")

CREATED = "apps.install.created"
UPDATED = "apps.install.updated"
DELETED = "apps.install.deleted"
INSTALL_EVENTS = (CREATED, UPDATED, DELETED)

SYNC_JOB = "installs.sync"
PLATFORM = "platform"
DAY = 86400
HOUR = 3600
SYNC_SPREAD = 3600  # the daily sync runs at a stable moment within the first hour (UTC)
STARTUP_BUCKET = 600  # replicas starting within the same ten minutes share one start-up sync
CHUNK = 500  # changes per database transaction during a sync
CONFIRM_TIMEOUT = 3.0  # seconds the install callback waits for the Install API's answer


def handles(type_: str) -> bool:
    return type_ in INSTALL_EVENTS


def missing_permissions(declared: Iterable[str], view: InstallationView | None) -> list[str]:
    """The declared permissions the install has not granted (none when it is not known yet)."""
    if view is None or view.permissions_granted is None:
        return []
    return [p for p in declared if p not in view.permissions_granted]


# ---- events ---------------------------------------------------------------------------------

async def process_event(event: WebhookEvent, installations: InstallationIndex) -> None:
    """Apply one stored `apps.install.*` event (called by jobs/events.py)."""
    obj = json.loads(event.payload).get("data", {}).get("object", {})
    if not isinstance(obj, dict) or not obj.get("account"):
        log.warning("%s %s has no data.object.account; nothing to apply", event.type, event.id)
        return
    if obj.get("livemode", event.livemode) is not event.livemode:
        # The mode is the event's (its verifying secret's), never the object's: a test secret
        # must not install or end a live installation through `data.object.livemode`.
        log.warning("%s %s: data.object.livemode %r disagrees with the event's; applied in "
                    "the event's mode, %s", event.type, event.id, obj.get("livemode"),
                    event.mode)
    obj = {**obj, "livemode": event.livemode}
    facts = InstallFacts.of(obj, sandbox=event.mode == Mode.SANDBOX)
    kind = {CREATED: Change.INSTALLED, DELETED: Change.UNINSTALLED}.get(event.type,
                                                                        Change.DETAILS)
    out = await installations.apply(InstallChange(
        facts.account_id, facts.mode, kind, event.created, event.id, event.received_at,
        facts=facts))
    if kind is Change.DETAILS:
        log.info("%s %s/%s: status %s, granted %s, pending %s", event.type, facts.account_id,
                 facts.mode, facts.status, ",".join(facts.permissions_granted) or "-",
                 ",".join(facts.permissions_pending) or "-")
        return
    log.info("%s %s/%s: %s%s", event.type, facts.account_id, facts.mode,
             "applied" if out.flipped else "already so, or older than the current state",
             f", {out.deleted} app rows deleted" if out.deleted else "")


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


#: Where else `confirm` looks for an install a callback placed in a mode Stripe does not have
#: it in: a `livemode=false` callback is first a sandbox install, then a live one.
OTHER_MODES: dict[Mode, tuple[Mode, ...]] = {
    Mode.LIVE: (Mode.TEST, Mode.SANDBOX),
    Mode.TEST: (Mode.SANDBOX, Mode.LIVE),
    Mode.SANDBOX: (Mode.TEST, Mode.LIVE),
}


def _rows_of_mode(mode: str) -> dict[str, Installation]:
    query = Installation.select().where(Installation.mode == mode)
    return {row.account_id: row for row in query.iterator()}


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


def next_fire(app_id: str, mode: str, at: float) -> int:
    """The next sync of `mode` after `at`, the same on every replica: daily (`daily_fire`) for
    live and test; hourly for sandbox, at a stable minute of the hour, since Stripe retries a
    sandbox webhook only a few times over a few hours, so a missed one is caught sooner."""
    if mode != Mode.SANDBOX:
        return daily_fire(app_id, at)
    offset = zlib.crc32(f"{SYNC_JOB}:{app_id}:{mode}".encode()) % HOUR
    fire = int(at) // HOUR * HOUR + offset
    return fire if fire > at else fire + HOUR


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
                facts = InstallFacts.of(inst, sandbox=mode == Mode.SANDBOX)
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
        changes: list[InstallChange] = []
        for i, (account_id, facts) in enumerate(listed.items()):
            if i % 5000 == 4999:
                await asyncio.sleep(0)
            row = rows.get(account_id)
            active = row is not None and row.active
            if facts.installed and not active:
                kind = Change.INSTALLED
            elif active and facts.status in INACTIVE_STATUSES:
                kind = Change.UNINSTALLED
            elif row is not None and facts.differs(row):
                kind = Change.DETAILS
            else:
                continue
            changes.append(InstallChange(account_id, mode, kind, at, "sync", facts=facts))
        for account_id, row in rows.items():
            if row.active and account_id not in listed:
                changes.append(InstallChange(account_id, mode, Change.UNINSTALLED, at, "sync"))
        for start in range(0, len(changes), CHUNK):
            chunk = changes[start:start + CHUNK]
            new = frozenset((c.account_id, mode) for c in chunk
                            if c.kind is Change.INSTALLED and c.account_id not in rows)
            applied = await self.installations.apply_many(chunk, new)
            for change, out in zip(chunk, applied, strict=True):
                if change.kind is Change.DETAILS:
                    result.updated += 1
                    label = "details"
                elif not out.flipped:
                    continue  # a newer event decided meanwhile
                else:
                    label = "activated" if change.kind is Change.INSTALLED else "deactivated"
                    setattr(result, label, getattr(result, label) + 1)
                    log.info("install sync %s/%s: %s (%s)%s", change.account_id, mode, label,
                             "Stripe has it, the table did not" if label == "activated"
                             else "the table had it, Stripe does not",
                             f", {out.deleted} app rows deleted" if out.deleted else "")
                if self.on_change is not None:
                    self.on_change(mode, label)
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
        facts = InstallFacts.of(obj, sandbox=mode == Mode.SANDBOX)
        out = await self.installations.apply(InstallChange(
            account_id, mode, Change.UNINSTALLED, int(time.time()), "uninstall", facts=facts))
        log.info("uninstalled %s/%s through the API (%s)%s", account_id, mode, facts.status,
                 f", {out.deleted} app rows deleted" if out.deleted else "")
        return out.view

    async def _installed(self, account_id: str, mode: str,
                         timeout: float) -> InstallFacts | None | bool:
        """The account's installed install of the app in `mode`; False when Stripe lists none
        there; None when that cannot be known now (no key, an error, too slow, `installing`)."""
        if mode not in self.modes():
            return None
        client = self.clients.for_platform(mode)
        try:
            page = await asyncio.wait_for(client.v1.apps.installs.list_async(
                {"app": self.app_id, "account": account_id, "limit": 10}), timeout)
        except Exception as exc:
            log.warning("install of %s/%s not confirmed now (the Install API: %s); waiting for "
                        "Stripe's event", account_id, mode, type(exc).__name__)
            return None
        found = [f for f in (InstallFacts.of(i, sandbox=mode == Mode.SANDBOX) for i in page.data)
                 if f.account_id == account_id and f.mode == mode]
        installed = [f for f in found if f.installed]
        if installed:
            return installed[0]
        return None if found else False  # installing, or failed: no answer yet either way

    async def confirm(self, account_id: str, mode: str, user_id: str | None = None,
                      timeout: float = CONFIRM_TIMEOUT) -> Outcome | None:
        """Ask the Install API whether the app is installed on `account_id` in `mode` (each
        question bounded by `timeout` seconds), and apply what Stripe says:

        - installed in `mode`: `INSTALLED` there (a pending install takes effect, a provisional
          mode is confirmed); its outcome is returned;
        - not in `mode` (or `mode` has no key here) but installed in another mode
          (`OTHER_MODES`, in order): the claimed mode was wrong (it is not signed, and a
          callback's `livemode=false` is a test or a sandbox install alike: a sandbox install,
          started from an install link or the Marketplace, carries no sandbox flag).
          `CONTRADICTED` undoes a provisional `mode` (its jobs stop) and `INSTALLED` applies
          the mode Stripe has, whose outcome is returned;
        - anything else (no key, an error, a timeout, listed nowhere, perhaps not yet): nothing
          changes and None is returned; the event, or the daily sync, decides. A listing that
          shows nothing anywhere undoes nothing: it may lag behind the install.

        An answer is dated when it was asked for, so an uninstall recorded after that is never
        undone by it."""
        asked = int(time.time()) - 1
        here = await self._installed(account_id, mode, timeout)
        if isinstance(here, InstallFacts):
            return await self.installations.apply(InstallChange(
                account_id, mode, Change.INSTALLED, asked, "install_api", user_id=user_id,
                facts=here))
        if here is None and mode in self.modes():
            return None
        there: InstallFacts | None | bool = None
        for other in OTHER_MODES[Mode(mode)]:
            there = await self._installed(account_id, other, timeout)
            if isinstance(there, InstallFacts):
                break
        if not isinstance(there, InstallFacts):
            return None
        other = Mode(there.mode)
        undone = await self.installations.apply(InstallChange(
            account_id, mode, Change.CONTRADICTED, asked, "install_api"))
        if undone.flipped:
            log.warning("install link for %s claimed %s mode, but Stripe has it in %s mode: %s "
                        "undone", account_id, mode, other, mode)
        return await self.installations.apply(InstallChange(
            account_id, other, Change.INSTALLED, asked, "install_api", user_id=user_id,
            facts=there))

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
        """At start-up, then each mode at its `next_fire` (live and test daily, sandbox
        hourly): a claimed sync of every mode with a platform key."""
        modes = self.modes()
        if not modes:
            return
        start = int(time.time()) // STARTUP_BUCKET * STARTUP_BUCKET
        due = dict.fromkeys(modes, start)
        while True:
            for mode in modes:
                if due[mode] > time.time():
                    continue
                try:
                    await self.run_claimed(mode, due[mode])
                except Exception as exc:  # the database may be down; the next fire tries again
                    log.warning("install sync %s could not run: %s", mode, type(exc).__name__)
                due[mode] = next_fire(self.app_id, mode, time.time())
            await asyncio.sleep(max(0.0, min(due.values()) - time.time()))
