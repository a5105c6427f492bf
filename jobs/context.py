"""What job runs, tasks and event handlers share: the workers' toolbox and the contexts' base.

`Toolbox` is the one bundle of dependencies the job runner (`jobs/runner.py`), the event
processor (`jobs/events.py`) and the task worker (`jobs/task_worker.py`) are built with:
the registry, storage, installation index, Stripe clients, credentials vault, the shared
third-party HTTP client and the replica's name. `service/services.py` builds it once.

`AccountTools` is the base of every context a run receives, `JobContext` (`jobs/runner.py`),
`TaskContext` (`jobs/tasks.py`) and `EventContext` (`jobs/events.py`): it holds the shared tools
(keyword fields `storage`, `clients`, `vault`, `http`) and, given the subclass's `account_id`
and `mode`, gives `ctx.stripe` (bound to the account), `ctx.credentials`, `ctx.livemode` and
`ctx.db(fn, ...)`. The credential values `ctx.credentials` hands out are kept in `ctx.revealed`,
so that the run's error text can leave them out (`jobs/errors.py`).
`idempotency_key(*parts)` is the one way jobs and tasks derive Stripe idempotency keys.
"""

from __future__ import annotations

import hashlib
import json
import socket
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

import httpx
import stripe

from jobs.credentials import AccountCredentials, Vault
from jobs.stripe_api import StripeClients
from models.db import Storage
from models.enums import Mode

if TYPE_CHECKING:  # jobs.registry imports jobs.tasks, which imports this module
    from jobs.registry import Registry
    from models.installation_index import InstallationIndex


def idempotency_key(*parts: object) -> str:
    """A Stripe idempotency key (at most 255 characters) determined by `parts` alone: job fires
    and tasks derive theirs here."""
    digest = hashlib.sha256(json.dumps(parts, separators=(",", ":")).encode()).hexdigest()
    return f"{parts[0]}_{digest[:48]}"


@dataclass(frozen=True)
class Toolbox:
    """The dependencies every worker is built with, in one bundle (see the module docstring).

    `replica` names this process in the rows it claims; None: each worker names itself."""

    registry: Registry
    storage: Storage
    installations: InstallationIndex
    clients: StripeClients
    vault: Vault | None = None
    #: The process's client for third-party calls (jobs/http.py): timeouts, retries, User-Agent.
    http: httpx.AsyncClient | None = None
    replica: str | None = None

    def replica_name(self, worker: object) -> str:
        """`replica`, or a name unique to `worker` in this process when there is none."""
        return self.replica or f"{socket.gethostname()}:{id(worker):x}"


class _Whose:
    """Not a dataclass, so these are no fields: each context declares them among its own."""

    account_id: str | None
    mode: str


@dataclass(kw_only=True)
class AccountTools(_Whose):
    """The base of the run contexts: the tools (keyword fields, after the subclass's own) and
    what they give. The subclass declares `account_id` and `mode`; an event's `account_id` is
    None when the event is about the platform account, which has no `stripe` or `credentials`.
    """

    storage: Storage = field(repr=False)
    clients: StripeClients = field(repr=False)
    vault: Vault | None = field(default=None, repr=False)
    #: The process's client for third-party calls (jobs/http.py): timeouts, retries, User-Agent.
    http: httpx.AsyncClient | None = field(default=None, repr=False)
    #: The credential values this context handed out (its error text leaves them out); an
    #: event's handlers share one set.
    revealed: set[str] = field(default_factory=set, repr=False)

    def _account(self) -> str:
        if not self.account_id:
            raise RuntimeError("this event is about the platform account; it has no account")
        return self.account_id

    @cached_property
    def stripe(self) -> stripe.StripeClient:
        """A client bound to this account (`Stripe-Account`) with the mode's platform key."""
        return self.clients.for_account(self._account(), self.mode)

    @cached_property
    def credentials(self) -> AccountCredentials:
        """`await ctx.credentials.get(name)`: this account's credential in this mode."""
        return AccountCredentials(self.vault, self._account(), self.mode,
                                  revealed=self.revealed)

    @property
    def livemode(self) -> bool:
        return self.mode == Mode.LIVE

    async def db(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a synchronous database function off the event loop."""
        return await self.storage.run(fn, *args, **kwargs)
