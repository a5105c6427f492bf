"""The one way a run's error becomes text: bounded, and with its secrets taken out.

    error = error_text(exc, ctx.revealed)      # stored, shown to the account, logged

A job run's, an event's, a task's or an install sync's error is stored, shown to every user of
the account (the task's status, the status page) and logged. Whatever it says, `error_text`:

- is `traceback.format_exception_only`'s `Type: message` (or the message alone, with
  `message_only`), after `prefix`;
- has every value in `secrets` (the credential values the run's context handed out: it saw
  them, so its error may hold them) replaced by `[redacted]`, and every known key shape too:
  Stripe secret and restricted keys (`sk_live_...`, `sk_test_...`, `rk_live_...`,
  `rk_test_...`), webhook secrets (`whsec_...`), app secrets (`absec_...`) and the token of a
  `Bearer` header;
- is at most `limit` characters, cut after redaction, so no part of a secret is left at the cut.
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Iterable

#: Characters of error text kept (the database column and the log line are bounded by it).
ERROR_LIMIT = 2000
#: What stands where a secret was.
REDACTED = "[redacted]"
#: A secret shorter than this is not looked for (it would blank out ordinary words).
MIN_SECRET = 4
#: Characters past `limit` read before redaction: more than any credential value holds.
_MARGIN = 16384

#: Known key shapes: the prefix (kept, it says which kind of key it was) and the secret part.
_KEY_SHAPES = re.compile(
    r"(?<![A-Za-z0-9])((?:sk|rk)_(?:live|test)_|whsec_|absec_)[A-Za-z0-9_+/=]+"
    r"|(?<![A-Za-z0-9])(Bearer\s+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE)


def _keep_prefix(match: re.Match[str]) -> str:
    return (match.group(1) or match.group(2)) + REDACTED


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with each of `secrets` (longest first) and every known key shape replaced."""
    for secret in sorted({s for s in secrets if len(s) >= MIN_SECRET}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return _KEY_SHAPES.sub(_keep_prefix, text)


def error_text(exc: BaseException, secrets: Iterable[str] = (), *, limit: int = ERROR_LIMIT,
               prefix: str = "", message_only: bool = False) -> str:
    """The error as stored, shown and logged: see the module docstring."""
    if message_only:
        text = str(exc)
    else:
        text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    # Bounded before the work (a message may be megabytes); a credential value is at most
    # 4 KB, so a secret the redaction misses at this cut begins past `limit`, and goes below.
    text = redact(prefix + text[:limit + _MARGIN], secrets)
    return text[:limit]
