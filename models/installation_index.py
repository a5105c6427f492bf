"""The door for installation changes, and an in-memory index of installations, so that the hot
paths never wait on the database.

Every change of an installation goes through `InstallationIndex.apply` (or `apply_many`, for
the Install API sync, or `pause`): it runs `models.installation.change_installation` (the one
rule: the row, the ordering, app data deleted when an install ends) in a database thread, then
takes the row as it now stands into the index, which tells the listeners (the scheduler and the
task worker subscribe) of every change of `active` or `jobs_paused`. Nothing else writes an
installation, so no caller has to remember to tell anyone.

Signed requests ask `is_active(account)` on every call; the scheduler asks which accounts to run.
The index is loaded once at start-up, updated at once by this process's own changes, and
re-read for rows other processes changed (`refresh`): as soon as the server's
`models/change_watch.py` sees another commit (SQLite's `data_version`; on PostgreSQL the
`NOTIFY` each change through this door sends, `notify_change`), and at the latest every
`REPLICA_POLL_SECONDS`. So a pause or an uninstall from the command line reaches a running
server within a second. `put` takes a row as it already stands in the database (loading,
refreshing, seeding in tests): it changes no installation, only what this process knows of one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

from models.base import BaseModel
from models.change_watch import notify_change
from models.db import Storage
from models.enums import Mode
from models.installation import (
    Change,
    Installation,
    InstallationView,
    InstallChange,
    Outcome,
    change_installation,
    change_many,
    row_view,
    set_context,
    set_paused,
)

log = logging.getLogger("app.installations")

T = TypeVar("T")

Listener = Callable[[InstallationView | None, InstallationView], None]

#: Rows are re-read a little before the watermark: clocks of replicas differ slightly.
CLOCK_SLACK = 5.0


def _announced(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` (a change through the door, committed on return), then announced to the
    other processes (`notify_change`), in the same database thread."""
    result = fn(*args)
    notify_change()
    return result


def _load_since(since: float) -> list[InstallationView]:
    query = Installation.select().where(Installation.updated_at >= since)
    return [InstallationView.of(row) for row in query.iterator()]


class InstallationIndex:
    def __init__(self, storage: Storage,
                 models: Sequence[type[BaseModel]] | None = None) -> None:
        """`models`: the models the loader found (the project's and the app's), whose rows of
        an account and mode an ended installation deletes (default: `discover_models()`)."""
        self.storage = storage
        self.models = tuple(models) if models is not None else None
        self._rows: dict[tuple[str, str], InstallationView] = {}
        self._active_accounts: dict[str, int] = {}
        self._active_by_mode: dict[str, int] = {mode: 0 for mode in Mode}
        self._listeners: list[Listener] = []
        self._watermark = 0.0

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    async def load(self) -> int:
        """Read every installation; returns how many are active."""
        rows = await self.storage.run(_load_since, 0.0)
        for view in rows:
            self.put(view)
        return sum(self._active_accounts.values())

    async def refresh(self) -> int:
        """Apply rows changed since the last read (by any replica); returns how many changed."""
        rows = await self.storage.run(_load_since, self._watermark - CLOCK_SLACK)
        return sum(1 for view in rows if self.put(view))

    # ---- the door ---------------------------------------------------------------------------
    async def apply(self, change: InstallChange,
                    precondition: Callable[[], str | None] | None = None) -> Outcome:
        """Apply one change (the rule: `models/installation.py`) and take its result in; a
        `precondition` runs first in the same transaction (`Refused` when it says no)."""
        outcome = await self.storage.run(_announced, change_installation, change,
                                         precondition, self.models)
        self.put(outcome.view)
        await self._undo_claims_of_sandbox(change, outcome)
        return outcome

    async def apply_many(self, changes: Iterable[InstallChange],
                         new: frozenset[tuple[str, str]] = frozenset()) -> list[Outcome]:
        """Apply changes in one transaction (`change_many`), then take each result in."""
        changes_list = list(changes)
        outcomes = await self.storage.run(_announced, change_many, changes_list, new,
                                          self.models)
        for outcome in outcomes:
            self.put(outcome.view)
        for change, outcome in zip(changes_list, outcomes, strict=True):
            await self._undo_claims_of_sandbox(change, outcome)
        return outcomes

    async def _undo_claims_of_sandbox(self, change: InstallChange, outcome: Outcome) -> None:
        """Stripe has the app installed in a sandbox: a sandbox is an account of its own, never
        installed in live or test mode, so a callback's claim of another mode for it (a
        provisional row, or a pending one: the callback says only `livemode=false`, or nothing)
        is undone (`CONTRADICTED`), as `InstallSync.confirm` would have done had it known."""
        view = outcome.view
        if (change.kind is not Change.INSTALLED or change.mode != Mode.SANDBOX
                or not (view.active and view.confirmed)):
            return
        for other in (Mode.TEST, Mode.LIVE):
            claimed = self.get(change.account_id, other)
            if claimed is not None and (claimed.provisional or claimed.pending):
                await self.apply(InstallChange(change.account_id, other, Change.CONTRADICTED,
                                               change.at, f"sandbox {change.source}"))

    async def pause(self, account_id: str, mode: str, paused: bool,
                    reason: str | None = None) -> InstallationView | None:
        """Pause or resume an installation's jobs; None when there is no such installation."""
        view = await self.storage.run(_announced, set_paused, account_id, mode, paused, reason)
        if view is not None:
            self.put(view)
        return view

    async def set_context(self, account_id: str, mode: str, context: str | None,
                          at: int) -> InstallationView | None:
        """Record an installation's `Stripe-Context` (`models/context.py`) as the event created
        at `at` says; None when there is no such installation. Not a change of the
        installation's state: no listener hears of it, the calls made from now on use it."""
        view = await self.storage.run(_announced, set_context, account_id, mode, context, at)
        if view is not None:
            self.put(view)
        return view

    def context_of(self, account_id: str, mode: str) -> str | None:
        """The `Stripe-Context` calls for this installation use; None: `Stripe-Account`."""
        view = self._rows.get((account_id, mode))
        return view.context if view is not None else None

    async def is_active_now(self, account_id: str, mode: str) -> bool:
        """`is_active`, asking the database when the index says no (another replica may have
        activated it since the last refresh)."""
        if self.is_active(account_id, mode):
            return True
        view = await self.storage.run(row_view, account_id, mode)
        if view is None:
            return False
        self.put(view)
        return view.active

    # ---- the index ---------------------------------------------------------------------------
    def put(self, view: InstallationView) -> bool:
        """Take a row as it now stands in the database; True if it changed what we knew."""
        key = (view.account_id, view.mode)
        old = self._rows.get(key)
        if old is not None and (old.updated_at > view.updated_at or old == view):
            return False
        self._rows[key] = view
        self._watermark = max(self._watermark, view.updated_at)
        was_active = old is not None and old.active
        if view.active != was_active:
            self._active_by_mode[view.mode] = (self._active_by_mode.get(view.mode, 0)
                                               + (1 if view.active else -1))
            count = self._active_accounts.get(view.account_id, 0) + (1 if view.active else -1)
            if count > 0:
                self._active_accounts[view.account_id] = count
            else:
                self._active_accounts.pop(view.account_id, None)
        if old is None or (old.active, old.jobs_paused) != (view.active, view.jobs_paused):
            for listener in self._listeners:
                try:
                    listener(old, view)
                except Exception:
                    log.exception("installation listener failed for %s/%s", *key)
        return True

    def get(self, account_id: str, mode: str) -> InstallationView | None:
        return self._rows.get((account_id, mode))

    def is_active(self, account_id: str, mode: str | None = None) -> bool:
        if mode is None:
            return account_id in self._active_accounts
        view = self._rows.get((account_id, mode))
        return view is not None and view.active

    def active(self, mode: str | None = None) -> Iterator[InstallationView]:
        for view in list(self._rows.values()):
            if view.active and (mode is None or view.mode == mode):
                yield view

    def count_active(self, mode: str) -> int:
        return self._active_by_mode.get(mode, 0)
