"""Whether the database takes writes, learned from the outcome of real writes.

A database can answer queries and refuse every write: a read-only file or file system, a full
disk, a PostgreSQL replica or `default_transaction_read_only`. `Storage` tells its
`WriteHealth` about every refused write (`refuses_writes(exc)`) and, while writes are known to
fail, about every call after which the database had accepted a write (SQLite: the connection's
`total_changes` grew; PostgreSQL: the WAL insert position moved); `/healthz` reads `state()`.
No health check writes. While the database is known to be read-only, `probe_due()` allows one
cheap probe (`Storage.probe_write`) per `probe_interval`, so that a database made writable
again while nothing wrote is seen at once. A full disk is not probed (a write that changes
nothing may still fit where a real one does not): the next real write tells, and Stripe's
webhook retries and the job scheduler keep writing.
"""

from __future__ import annotations

import threading
import time
from typing import Any

#: Lower-case fragments of the messages SQLite and PostgreSQL give when they refuse a write:
#: first those that say the database is read-only (a probe can tell when that ends), then
#: the others.
_READ_ONLY = (
    "readonly database",                # SQLite: read-only file, folder or mount
    "read-only transaction",            # PostgreSQL: replica, default_transaction_read_only
    "database is read-only",            # Storage.probe_write on PostgreSQL
)
_REFUSALS = _READ_ONLY + (
    "disk is full",                     # SQLite: SQLITE_FULL (disk, or max_page_count)
    "no space left on device",          # PostgreSQL (and anything writing a file)
    "could not extend file",            # PostgreSQL: a table or index cannot grow
    "disk i/o error",                   # SQLite: the write itself failed
)

PROBE_INTERVAL = 30.0


def refuses_writes(exc: BaseException) -> bool:
    """Whether `exc` says the database refused to write (rather than a bug or an outage)."""
    text = str(exc).lower()
    return any(fragment in text for fragment in _REFUSALS)


class WriteHealth:
    """The last word on writes: refused (with why and since when) or accepted. Thread-safe:
    database threads report, the event loop reads."""

    def __init__(self, probe_interval: float = PROBE_INTERVAL) -> None:
        self.probe_interval = probe_interval
        self._lock = threading.Lock()
        self._error: str | None = None
        self._since: float | None = None
        self._probe = False  # whether a probe can tell that the refusal has ended
        self._last_probe = 0.0

    def failed(self, exc: BaseException) -> None:
        text = (str(exc).strip().splitlines() or [""])[0][:200]
        with self._lock:
            if self._error is None:
                self._since = time.time()
            self._error = f"{type(exc).__name__}: {text}"
            self._probe = any(fragment in text.lower() for fragment in _READ_ONLY)
            self._last_probe = time.monotonic()  # the failure was as good as a probe

    def succeeded(self) -> None:
        with self._lock:
            self._error, self._since, self._probe = None, None, False

    @property
    def writable(self) -> bool:
        return self._error is None

    def probe_due(self) -> bool:
        """True at most once per `probe_interval` after the last refusal or probe, and only
        while the database is known to be read-only."""
        with self._lock:
            now = time.monotonic()
            if not self._probe or now - self._last_probe < self.probe_interval:
                return False
            self._last_probe = now
            return True

    def state(self) -> dict[str, Any]:
        with self._lock:
            if self._error is None:
                return {"writable": True}
            return {"writable": False, "write_error": self._error,
                    "refusing_writes_since": self._since}
