"""Being told, cheaply and at once, that another process changed an installation.

A server keeps its installations in memory (`models/installation_index.py`); a change another
process commits (a replica, a worker, `run.py jobs pause`, `run.py installs uninstall`) reaches
it when it re-reads them (`InstallationIndex.refresh`). `ChangeWatch.wait(timeout)` returns as
soon as such a change may have been committed, or after `timeout` seconds (the poll,
`REPLICA_POLL_SECONDS`, stays the floor):

- SQLite: `PRAGMA data_version` on a connection of the watch's own changes whenever another
  connection, of any process, commits to the file. Reading it costs a few microseconds and no
  disk write; the watch reads it every `SQLITE_CHECK_SECONDS` (0.5 s) in a database thread.
  Any commit changes it (this process's own webhooks too), so a busy server re-reads the
  installations changed in the last seconds at most twice a second: an indexed range query.
- PostgreSQL: every change through the door sends `NOTIFY app_installation` after it commits
  (`notify_change`, called by the index: one statement per installation change, none per
  request); the watch holds one connection of its own that `LISTEN`s, read by the event loop
  when the socket has something (`add_reader`: no thread, no polling). When that connection
  fails (a restart, a pooler that does not pass notifications), the watch falls back to the
  poll and listens again after the next one.
- anything else (an in-memory SQLite): the poll alone.

Nothing here runs per request; `close()` ends the watch's connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import time
from typing import Any

import peewee as pw

from models.db import Storage, database, is_sqlite

log = logging.getLogger("app.installations")

#: The channel installation changes are announced on (PostgreSQL).
CHANNEL = "app_installation"

#: How often the SQLite watch reads `PRAGMA data_version`.
SQLITE_CHECK_SECONDS = 0.5


def notify_change(db: pw.Database | pw.DatabaseProxy = database) -> None:
    """Announce a committed installation change to the other processes' watches (PostgreSQL:
    `NOTIFY`; SQLite's watch needs nothing). Call it after the change's transaction, in a
    database thread."""
    real = getattr(db, "obj", None) or db
    if isinstance(real, pw.PostgresqlDatabase):
        try:
            real.execute_sql(f"NOTIFY {CHANNEL}")
        except Exception as exc:  # the change stands: the others learn of it by their poll
            log.debug("NOTIFY %s failed: %s", CHANNEL, type(exc).__name__)


class ChangeWatch:
    """The poll alone: `wait(timeout)` sleeps `timeout` seconds. `of(storage)` gives the watch
    the database allows."""

    @staticmethod
    def of(storage: Storage) -> ChangeWatch:
        real = getattr(storage.db, "obj", None) or storage.db
        if is_sqlite(real) and real.database not in ("", ":memory:") \
                and "mode=memory" not in str(real.database):
            return SqliteWatch(storage, str(real.database))
        if isinstance(real, pw.PostgresqlDatabase):
            return PostgresWatch(storage, real)
        return ChangeWatch()

    async def wait(self, timeout: float) -> bool:
        """Return True as soon as another process may have committed a change, or False after
        `timeout` seconds."""
        await asyncio.sleep(timeout)
        return False

    def close(self) -> None:
        pass


class SqliteWatch(ChangeWatch):
    def __init__(self, storage: Storage, path: str) -> None:
        self.storage, self.path = storage, path
        self._conn: sqlite3.Connection | None = None
        self._version: int | None = None
        #: Held while a database thread reads on the connection and while `close` closes it:
        #: closing an SQLite connection another thread is using crashes the process (seen: a
        #: segmentation fault when a shutdown closed the watch during a read).
        self._lock = threading.Lock()
        self._closed = False

    def _read(self) -> int:
        """`PRAGMA data_version` on the watch's own connection (opened on first use; used by
        one database thread at a time, since `wait` awaits each read)."""
        with self._lock:
            if self._closed:  # a read that started after the watch ended opens nothing
                raise sqlite3.ProgrammingError("the watch is closed")
            if self._conn is None:
                self._conn = sqlite3.connect(self.path, timeout=10, check_same_thread=False,
                                             isolation_level=None)
            return int(self._conn.execute("PRAGMA data_version").fetchone()[0])

    async def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(SQLITE_CHECK_SECONDS, left))
            try:
                version = await self.storage.run(self._read)
            except Exception as exc:  # the file is busy or gone: the poll decides
                log.debug("data_version not read: %s", type(exc).__name__)
                self._drop()  # opened again by the next read
                continue
            if version != self._version:  # the first read, too: what changed since loading
                self._version = version
                return True
        return False

    def _drop(self) -> None:
        with self._lock:  # after a read under way (a PRAGMA takes microseconds)
            conn, self._conn, self._version = self._conn, None, None
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()

    def close(self) -> None:
        self._closed = True
        self._drop()


class PostgresWatch(ChangeWatch):
    def __init__(self, storage: Storage, db: pw.PostgresqlDatabase) -> None:
        self.storage, self.db = storage, db
        self._conn: Any = None
        self._changed = asyncio.Event()

    def _listen(self) -> Any:
        """A connection of the watch's own, listening (in a database thread)."""
        conn = self.db._connect()  # a new connection with the database's own parameters
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f"LISTEN {CHANNEL}")
        return conn

    def _readable(self) -> None:
        """The listening socket has data: take the notifications (never blocks)."""
        if self._conn is None:
            return
        try:
            self._conn.poll()
        except Exception as exc:  # the connection is gone: back to the poll
            log.debug("installation LISTEN connection lost: %s", type(exc).__name__)
            self.close()
            self._changed.set()  # read once now: changes may have been missed
            return
        if self._conn.notifies:
            self._conn.notifies.clear()
            self._changed.set()

    async def wait(self, timeout: float) -> bool:
        if self._conn is None:
            try:
                self._conn = await self.storage.run(self._listen)
                asyncio.get_running_loop().add_reader(self._conn.fileno(), self._readable)
                self._changed.set()  # read once now: changes made before listening
            except Exception as exc:
                log.debug("installation LISTEN not possible: %s", type(exc).__name__)
                self.close()
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            return False
        self._changed.clear()
        return True

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(conn.fileno())
        with contextlib.suppress(Exception):
            conn.close()
