"""Organizations: the `Stripe-Context` an installation's calls use, and where it comes from.

Since API version 2025-04-30.basil an event carries `context`: the account that generated it,
as the `Stripe-Context` header names it (docs.stripe.com/context): an account id, or a path of
ids from the key's owner (`acct_platform/acct_connected`), or an organization's. Stripe's
changelog says that events sent to a Connect endpoint in an organization must be handled with
that `context` and the `Stripe-Context` header, which supersedes `Stripe-Account`.

The choices, where the docs are silent (each loses nothing and crosses no accounts):
- **Stored as received.** A well-formed `context` (`CONTEXT`) is kept with its event
  (`webhook_event.context`); a malformed one is dropped with a log line, never the event.
- **Taken by the installation only from a signed event about that installation**: the event's
  `account` and mode (the verifying secret's) name the row; an event without `account` (the
  platform's own) sets nothing.
- **Never another account's.** A context whose last id is an account other than the event's
  `account` names someone else: it is ignored (logged), and the installation keeps what it had.
- **Nothing changes for plain accounts.** A context that is just the event's `account` says
  nothing `Stripe-Account` does not: the installation keeps no context (null), and its calls go
  out exactly as before. An event without `context` (an older API version) changes nothing.
- **Newest wins.** The installation keeps the context of the newest event (`created`) that
  says one: a change is recorded with its event's `created` (`installation.context_at`), and an
  event older than that changes nothing; since an event that repeats the current context is
  not processed at all (no write for the common case), an event about to change the context
  first reads the stored events newer than itself (`models.events.newer_contexts`), and the
  newest of them whose context applies decides. So events that arrive out of order cannot
  undo a newer one.

A call for an installation with a context sends `Stripe-Context` and no `Stripe-Account`
(`jobs/stripe_api.py`); without one, `Stripe-Account` as before, never both.
"""

from __future__ import annotations

import re
from typing import NamedTuple

#: A context: an account or organization id, then up to three account ids, `/`-separated;
#: ids are letters and digits after their prefix. At most 255 characters (the columns').
CONTEXT = re.compile(r"(?:acct|org)_[A-Za-z0-9]{1,60}(?:/acct_[A-Za-z0-9]{1,60}){0,3}")


def event_context(value: object) -> str | None:
    """An event's `context` if it is a well-formed one (`CONTEXT`), else None."""
    if isinstance(value, str) and len(value) <= 255 and CONTEXT.fullmatch(value):
        return value
    return None


class AccountContext(NamedTuple):
    """What an event's context means for the installation of its account: `applies` False when
    the context names another account (ignored); else `context`, None for "no context"."""

    applies: bool
    context: str | None


def account_context(context: str, account_id: str) -> AccountContext:
    """The rule of the module docstring for a well-formed `context` of an event about
    `account_id`."""
    if context == account_id:
        return AccountContext(True, None)
    last = context.rsplit("/", 1)[-1]
    if last.startswith("acct_") and last != account_id:
        return AccountContext(False, None)
    return AccountContext(True, context)
