"""Processing stored webhook events: the installation lifecycle, then the app's own handlers.

The webhook endpoint stores an event and calls `submit(event_id)`; processing happens after the
answer. An event is processed by whoever wins its claim (`models/events.claim_event`), so a
redelivery, a second replica or a restart never runs it twice at once. The claim is a short
lease (`models/leases.py`), renewed every few seconds while the event is processed: when the
process dies, the lease runs out within `LEASE_SECONDS` and the next `poll()` of any replica
(a restarted one included) takes the event up again. `poll_forever` sleeps exactly until the
next lease or retry falls due (at most `poll_interval`), so nothing waits longer than needed. A
failed attempt is retried with backoff by `poll()`.

Built in:
- `account.application.authorized` activates the installation for (`account`, mode);
- `account.application.deauthorized` deactivates it and deletes the account's app data in that
  mode (every `AccountModel` table), in one transaction; the scheduler hears of it and stops the
  account's jobs in that mode.
Both are applied only if not older than the last change applied (see `models/installation.py`),
through the door every installation change goes through (`InstallationIndex.apply`).
The mode is the stored event's (`WebhookEvent.mode`): its signed `livemode`, read as a sandbox
event when a sandbox secret verified it (service/webhooks.py); never an unsigned field.
- An event's `context` (organizations) becomes its installation's `Stripe-Context` by the rule
  of `models/context.py` (`_take_context`); an event whose context would change its
  installation's is processed even when nothing else acts on it (`needs_processing`).

The app's handlers (`@on_event`) then run only for an event about the platform itself (no
`account`) or about an account that has the app installed, active, in the event's mode (after
the lifecycle above: an `authorized` event reaches the handlers of the install it makes). An
event for any other account, a Connect account without the app for instance, or one whose
install is pending or ended, is stored like every event and marked processed without reaching a
handler; replay it from the status page once the app is installed there.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jobs import installs
from jobs.context import AccountTools, Toolbox
from jobs.credentials import NOT_CONFIGURED
from jobs.errors import error_text
from jobs.registry import JobFunc
from models.base import now
from models.context import account_context
from models.enums import EventStatus, Mode
from models.events import (
    WebhookEvent,
    claim_event,
    due_event_ids,
    finish_event,
    newer_contexts,
    next_claimable_at,
    renew_events,
    waiting_event,
)
from models.installation import Change, InstallChange
from models.leases import LEASE_SECONDS, LeaseKeeper

log = logging.getLogger("app.events")

AUTHORIZED = "account.application.authorized"
DEAUTHORIZED = "account.application.deauthorized"

#: Told of every processing attempt: `on_processed(event_type, new_status)`.
ProcessedListener = Callable[[str, EventStatus], None]


def _ignore_processed(type_: str, status: EventStatus) -> None:
    pass


@dataclass
class EventContext(AccountTools):
    """What an event handler receives: the event, and the tools (`AccountTools`; `account_id`
    is None for an event about the platform account, which has no `stripe` or `credentials`).
    """

    event: dict[str, Any]
    account_id: str | None
    mode: Mode
    attempt: int

    @property
    def type(self) -> str:
        return self.event["type"]

    @property
    def data(self) -> dict[str, Any]:
        return self.event.get("data", {}).get("object", {})


class InstallNotApplied(Exception):
    """An event's account has the app's install event stored but not yet applied: the event is
    retried (with the usual backoff) instead of being passed over as one for an account
    without the app."""


class EventProcessor:
    """Processes stored events; `on_processed(type, status)` hears each attempt (a no-op when
    not given)."""

    def __init__(self, tools: Toolbox, concurrency: int = 8, poll_interval: float = 5.0,
                 on_processed: ProcessedListener | None = None,
                 lease: float = LEASE_SECONDS) -> None:
        self.tools = tools
        self.registry, self.storage = tools.registry, tools.storage
        self.installations = tools.installations
        self.on_processed: ProcessedListener = on_processed or _ignore_processed
        self.poll_interval = poll_interval
        self.retry_base = 2.0  # seconds; attempt n waits up to retry_base ** n
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._poller: asyncio.Task[None] | None = None
        #: Who holds this process's claims: unique per process, so a claim that lapsed and was
        #: taken over is never renewed or finished by its former holder.
        self.holder = f"{socket.gethostname()}:{uuid.uuid4().hex[:12]}"
        self.leases: LeaseKeeper[str] = LeaseKeeper(
            self.storage, lambda ids, until: renew_events(ids, until, self.holder), clock=now,
            lease=lease, name="event lease")

    @staticmethod
    def _is_lifecycle(type_: str, account_id: str | None) -> bool:
        return type_ in (AUTHORIZED, DEAUTHORIZED) and bool(account_id)

    def _handlers(self, type_: str) -> list[JobFunc]:
        return self.registry.handlers.get(type_, []) + self.registry.handlers.get("*", [])

    def needs_processing(self, type_: str, account_id: str | None, mode: str | None = None,
                         context: str | None = None) -> bool:
        """False for an event nothing here acts on: it is stored as processed at once. An
        event whose `context` would change its installation's is acted on (`_take_context`)."""
        return (self._is_lifecycle(type_, account_id) or installs.handles(type_)
                or bool(self._handlers(type_))
                or (context is not None and account_id is not None and mode is not None
                    and self._context_news(account_id, mode, context)))

    def _context_news(self, account_id: str, mode: str, context: str) -> bool:
        """Whether `context` (an event's) would change what the installation holds."""
        view = self.installations.get(account_id, mode)
        if view is None:
            return False
        applies, value = account_context(context, account_id)
        return applies and value != view.context

    def submit(self, event_id: str) -> None:
        """Process a just-stored event soon, without making the caller wait."""
        task = asyncio.get_running_loop().create_task(self.process(event_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def process(self, event_id: str, force: bool = False) -> EventStatus | None:
        """Claim and process one event; returns its new status, or None if not claimed."""
        if event_id in self.leases.held:  # this process is on it (its lease may look stale)
            return None
        async with self._slots:
            event = await self.storage.run(claim_event, event_id, force, self.holder,
                                           self.leases.lease)
            if event is None:
                return None
            self.leases.hold(event.id)
            revealed: set[str] = set()  # the credential values its handlers were given
            try:
                error, final = None, False
                try:
                    await self._dispatch(event, revealed)
                except InstallNotApplied as exc:  # retried with backoff, after the install
                    error = str(exc)
                    log.info("event %s (%s) waits, attempt %d: %s", event.id, event.type,
                             event.attempts, error)
                except NOT_CONFIGURED as exc:  # a retry cannot mend it: dead, replay later
                    error = error_text(exc, revealed, prefix="not_configured: ",
                                       message_only=True)
                    final = True
                    log.warning("event %s (%s) not processed: %s; replay it once configured",
                                event.id, event.type, error)
                except Exception as exc:
                    error = error_text(exc, revealed)
                    log.warning("event %s (%s) failed, attempt %d: %s", event.id, event.type,
                                event.attempts, error)
                status = await asyncio.shield(self.storage.run(
                    finish_event, event.id, error, event.attempts, self.retry_base, self.holder,
                    final))
            finally:
                self.leases.release(event.id)
            self.on_processed(event.type, status)
            return status

    async def _dispatch(self, event: WebhookEvent, revealed: set[str]) -> None:
        if self._is_lifecycle(event.type, event.account_id):
            assert event.account_id is not None
            kind = Change.INSTALLED if event.type == AUTHORIZED else Change.UNINSTALLED
            out = await self.installations.apply(InstallChange(
                event.account_id, event.mode, kind, event.created, event.id,
                event.received_at))
            log.info("%s %s/%s: %s%s", event.type, event.account_id, event.mode,
                     "applied" if out.applied else "older than the current state, ignored",
                     f", {out.deleted} app rows deleted" if out.deleted else "")
        if installs.handles(event.type):
            await installs.process_event(event, self.installations)
        if event.account_id and event.context:
            await self._take_context(event)
        handlers = self._handlers(event.type)
        if not handlers:
            return
        if event.account_id and not await self.installations.is_active_now(event.account_id,
                                                                           event.mode):
            if await self.storage.run(waiting_event, AUTHORIZED, event.account_id,
                                      event.mode):
                # Stripe keeps no order: the install this event follows may be stored and
                # not yet applied (processed at the same time, or failed and to be retried)
                raise InstallNotApplied(f"the account.application.authorized event of "
                                        f"{event.account_id}/{event.mode} is not processed yet")
            log.info("event %s (%s) for %s/%s: the app is not installed there; stored, not "
                     "dispatched to handlers", event.id, event.type, event.account_id,
                     event.mode)
            return
        body = json.loads(event.payload)
        for handler in handlers:
            ctx = EventContext(body, event.account_id, event.mode, event.attempts,
                               storage=self.storage, clients=self.tools.clients,
                               vault=self.tools.vault, http=self.tools.http, revealed=revealed)
            await handler(ctx)

    async def _take_context(self, event: WebhookEvent) -> None:
        """The installation of the event's account and mode takes the event's context, by the
        rule of `models/context.py` (never another account's; newest event wins)."""
        account, mode = event.account_id, event.mode
        assert account is not None
        view = self.installations.get(account, mode)
        if view is None:
            return  # no installation here: its install event, or a later event, will tell
        applies, context = account_context(event.context, account)
        if not applies:
            log.warning("event %s for %s/%s: its context %s names another account; ignored",
                        event.id, account, mode, event.context)
            return
        if context == view.context:
            return
        # An event repeating the current context changes nothing and is not even processed
        # (`needs_processing`), so `context_at` may be older than the newest word: the stored
        # events newer than this one decide first (the newest whose context applies).
        at = event.created
        for newer, created in await self.storage.run(newer_contexts, account, mode,
                                                     event.created):
            applies, value = account_context(newer, account)
            if applies:
                if value != context:
                    log.info("event %s for %s/%s: a newer event's context decides; its "
                             "context is not taken", event.id, account, mode)
                    return
                at = created
                break
        after = await self.installations.set_context(account, mode, context, at)
        if after is not None and after.context == context:
            log.info("%s/%s: calls now use %s (event %s)", account, mode,
                     f"Stripe-Context {context}" if context else "Stripe-Account", event.id)

    async def poll(self) -> int:
        """Process events that are due for a retry or were left behind; returns how many."""
        ids = await self.storage.run(due_event_ids)
        results = await asyncio.gather(*(self.process(i) for i in ids))
        return sum(1 for r in results if r is not None)

    async def poll_forever(self) -> None:
        while True:
            delay = self.poll_interval
            try:
                await self.poll()
                due = await self.storage.run(next_claimable_at)
                if due is not None:  # wake when the next lease runs out or retry falls due
                    delay = min(delay, max(0.25, due - now() + 0.05))
            except Exception as exc:  # the database may be down; try again later
                log.warning("event poll failed: %s", type(exc).__name__)
            await asyncio.sleep(delay)

    def start(self) -> None:
        self._poller = asyncio.get_running_loop().create_task(self.poll_forever())

    async def stop(self, timeout: float = 10.0) -> None:
        if self._poller:
            self._poller.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)
        await self.leases.stop()
