"""The one exponential backoff formula, for every retry in the project.

Used by webhook event retries (`models/events.py`), job attempts (`jobs/runner.py`) and 429
retries of Stripe calls (`jobs/stripe_api.py`). It lives in `models/` because `jobs/` may
import `models/` and not the other way round; it touches no database.

The retry numbered `retry` (0 for the first retry) has a ceiling of `first * factor ** retry`
seconds, at most `cap`; the jitter policy then draws the delay below that ceiling (see `Jitter`;
the names are those of the AWS Architecture Blog's "Exponential Backoff And Jitter"). Jitter
keeps many clients that failed together from retrying together.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from enum import StrEnum


class Jitter(StrEnum):
    FULL = "full"  # uniform in [0, ceiling]: spreads retries most; a retry may come at once
    EQUAL = "equal"  # uniform in [ceiling / 2, ceiling]: always waits at least half


def backoff_delay(retry: int, *, first: float, factor: float = 2.0, cap: float = math.inf,
                  jitter: Jitter, uniform: Callable[[float, float], float] = random.uniform
                  ) -> float:
    """Seconds to wait before retry number `retry` (0-based): capped exponential with jitter.

    ceiling = min(cap, first * factor ** retry); FULL draws from [0, ceiling], EQUAL from
    [ceiling / 2, ceiling]. `uniform` is the draw (tests pass a fixed one to see the bounds).
    """
    try:
        ceiling = min(cap, first * factor ** retry)
    except OverflowError:
        ceiling = cap
    if jitter is Jitter.FULL:
        return uniform(0.0, ceiling)
    return uniform(0.5, 1.0) * ceiling
