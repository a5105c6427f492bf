"""What jobs and tasks share in their `ctx`: the account's tools and idempotency keys.

`AccountTools` is a mixin for the context dataclasses of `jobs/runner.py` (`JobContext`) and
`jobs/tasks.py` (`TaskContext`): given their `account_id`, `mode`, `storage`, `clients` and
`vault`, it gives `ctx.stripe` (bound to the account), `ctx.credentials`, `ctx.livemode` and
`ctx.db(fn, ...)`. `idempotency_key(*parts)` is the one way both derive Stripe idempotency keys.
"""

from __future__ import annotations

import hashlib
import json
from functools import cached_property
from typing import Any

import stripe

from jobs.credentials import AccountCredentials, Vault
from jobs.stripe_api import StripeClients
from models.db import Storage
from models.enums import Mode


def idempotency_key(*parts: object) -> str:
    """A Stripe idempotency key (at most 255 characters) determined by `parts` alone: job fires
    and tasks derive theirs here."""
    digest = hashlib.sha256(json.dumps(parts, separators=(",", ":")).encode()).hexdigest()
    return f"{parts[0]}_{digest[:48]}"


class AccountTools:
    """Methods only (no dataclass fields): the context classes declare the attributes."""

    account_id: str
    mode: str
    storage: Storage
    clients: StripeClients
    vault: Vault | None

    @cached_property
    def stripe(self) -> stripe.StripeClient:
        """A client bound to this account (`Stripe-Account`) with the mode's platform key."""
        return self.clients.for_account(self.account_id, self.mode)

    @cached_property
    def credentials(self) -> AccountCredentials:
        """`await ctx.credentials.get(name)`: this account's credential in this mode."""
        return AccountCredentials(self.vault, self.account_id, self.mode)

    @property
    def livemode(self) -> bool:
        return self.mode == Mode.LIVE

    async def db(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a synchronous database function off the event loop."""
        return await self.storage.run(fn, *args, **kwargs)
