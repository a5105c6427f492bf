"""The shapes of the Stripe ids the service accepts from callers, in one place.

Each is a compiled pattern to `fullmatch` against a string from a request:

    ACCOUNT_ID  acct_...   (signed bodies, install callbacks)
    USER_ID     usr_...    (signed bodies, install callbacks)
    EVENT_ID    evt_...    (webhook events; Stripe's event ids may hold `_`)
"""

from __future__ import annotations

import re

ACCOUNT_ID = re.compile(r"acct_[A-Za-z0-9]{1,250}")
USER_ID = re.compile(r"usr_[A-Za-z0-9]{1,250}")
EVENT_ID = re.compile(r"evt_[A-Za-z0-9_]{1,250}")
