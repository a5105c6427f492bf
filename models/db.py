"""Database setup from `DATABASE_URL`, and `Storage`, the way async code reaches the database.

Peewee is synchronous and keeps one connection per thread. Handlers and jobs run on the event
loop, so every query goes through `Storage.run(fn)`, which runs `fn` in a small bounded pool of
threads, each with its own connection. The loop never blocks on the database, and a transaction
(`db.atomic()`) always lives entirely inside one `fn`, never across an `await`.

Many small writes that arrive together (webhook events) go through `Storage.grouped(fn)`
instead: a `GroupCommit` (`models/group_commit.py`) whose writer thread (its own connection)
hands what has queued to `fn` as one list, so that they share one transaction, while the loop
goes on.

`SQLITE_SYNCHRONOUS` (`open_database(url, synchronous=...)`): with WAL, `normal` (the default)
makes a commit survive a crash of the process but not of the machine (a power cut may lose the
last commits); `full` syncs the WAL at every commit, so a commit survives a power cut too.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar, cast

import peewee as pw
from playhouse.db_url import connect

from models.group_commit import GroupCommit
from models.writability import WriteHealth, refuses_writes

#: The one piece of module-level state: models bind to this proxy, `open_database` fills it.
database = pw.DatabaseProxy()

T = TypeVar("T")
I = TypeVar("I")  # noqa: E741 (an item of a group commit)

SQLITE_PRAGMAS = {
    "journal_mode": "wal",
    "busy_timeout": 10000,
    "foreign_keys": 1,
    "synchronous": "normal",
}

#: The values `synchronous` may take (`SQLITE_SYNCHRONOUS`), see the module docstring.
SQLITE_SYNCHRONOUS = ("normal", "full")

#: A group commit's writer takes at most this many items per batch, and does not wait for
#: company when idle: under load, a batch gathers what arrived while the one before committed
#: (a window of 0.3 ms measured slower; models/group_commit.py).
GROUP_WINDOW = 0.0
GROUP_MAX = 256

#: Errors that mean "the database is not available" (503), as opposed to a bug (500).
UNAVAILABLE = (pw.OperationalError, pw.InterfaceError)


def open_database(url: str, synchronous: str = "normal") -> pw.Database:
    """Connect the model proxy to `url`. A SQLite file and its folder are created if missing,
    this user's only (`create_private`); `synchronous` is SQLite's (one of
    `SQLITE_SYNCHRONOUS`), ignored by PostgreSQL."""
    if synchronous not in SQLITE_SYNCHRONOUS:
        raise ValueError(f"synchronous must be one of {SQLITE_SYNCHRONOUS}, got {synchronous!r}")
    pragmas = {**SQLITE_PRAGMAS, "synchronous": synchronous}
    if url.startswith("sqlite:///") and ":memory:" not in url:
        create_private(url[len("sqlite:///"):].split("?", 1)[0])
        db = connect(url, pragmas=pragmas, timeout=10, check_same_thread=False)
    elif url.startswith("sqlite"):
        db = connect(url, pragmas=pragmas)
    else:
        db = connect(url, connect_timeout=5)
    database.initialize(db)
    return db


#: The modes of a SQLite file and of the folder made for it: this user's only. The file holds
#: event payloads, task inputs and encrypted credentials; SQLite gives its `-wal` and `-shm`
#: files the main file's mode.
PRIVATE_FILE, PRIVATE_FOLDER = 0o600, 0o700


def create_private(path: str) -> None:
    """Create the SQLite file `path` (empty, which SQLite reads as an empty database) with mode
    `PRIVATE_FILE`, and its missing folders with `PRIVATE_FOLDER`, whatever the umask; an
    existing file or folder keeps its mode. A failure is a `pw.OperationalError`, reported
    like any other unreachable database."""
    folder = os.path.dirname(path)
    try:
        if folder and not os.path.isdir(folder):
            os.makedirs(folder, mode=PRIVATE_FOLDER, exist_ok=True)
            os.chmod(folder, PRIVATE_FOLDER)  # `makedirs` leaves the mode to the umask
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, PRIVATE_FILE)
    except FileExistsError:
        return
    except OSError as exc:
        what = f"the folder {folder}" if folder and not os.path.isdir(folder) else path
        raise pw.OperationalError(f"cannot create {what}: {exc.strerror}") from None
    os.fchmod(fd, PRIVATE_FILE)
    os.close(fd)


def is_sqlite(db: pw.Database | pw.DatabaseProxy) -> bool:
    return isinstance(getattr(db, "obj", None) or db, pw.SqliteDatabase)


@contextlib.contextmanager
def write_transaction(db: pw.Database | pw.DatabaseProxy = database) -> Iterator[None]:
    """A transaction that will write: on SQLite it takes the write lock up front (IMMEDIATE), so
    two writers wait for each other instead of failing on a lock upgrade. Writers of one
    process queue on a lock of their own first, handed over the moment it is let go; SQLite's
    busy timeout, which polls with sleeps of up to 100 ms, is left to writers of other processes.
    """
    real = getattr(db, "obj", None) or db
    if not isinstance(real, pw.SqliteDatabase):
        with db.atomic():
            yield
        return
    with _write_lock(real):
        txn = real.atomic("IMMEDIATE")
        txn.__enter__()
        try:
            yield
        except BaseException as exc:
            # SQLite rolls back by itself on some errors (a full disk): peewee's rollback then
            # fails with "no transaction is active", which must not hide the error that counts.
            with contextlib.suppress(pw.OperationalError):
                txn.__exit__(type(exc), exc, exc.__traceback__)
            raise
        try:
            txn.__exit__(None, None, None)
        except pw.OperationalError as exc:  # the commit failed, and so did the rollback
            if "no transaction is active" in str(exc) and isinstance(exc.__context__, Exception):
                raise exc.__context__ from None
            raise


def _write_lock(db: pw.Database) -> threading.RLock:
    """This process's writer lock of `db` (re-entrant: a write transaction may nest one)."""
    lock: threading.RLock | None = getattr(db, "_app_write_lock", None)
    if lock is None:
        with _LOCKS_LOCK:
            lock = getattr(db, "_app_write_lock", None)
            if lock is None:
                lock = threading.RLock()
                db._app_write_lock = lock
    return lock


_LOCKS_LOCK = threading.Lock()


class Storage:
    """The database plus the bounded thread pool that keeps the event loop from blocking on it.

    `await storage.run(fn, *args)` runs `fn` in a database thread. A connection that failed
    (server gone, network cut) is dropped so that the next call reconnects. `writes` learns
    from every call whether the database takes writes (models/writability.py).
    `await storage.grouped(fn).submit(item)` group-commits: see the module docstring.
    """

    def __init__(self, db: pw.Database, workers: int = 4) -> None:
        self.db = db
        self.workers = workers
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="db")
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="db-writer")
        self._groups: dict[Callable[..., Any], GroupCommit[Any, Any]] = {}
        self._connections: set[Any] = set()
        self._lock = threading.Lock()
        self.pending = 0
        self.writes = WriteHealth()
        self._sqlite = is_sqlite(db)

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        self.pending += 1
        try:
            return await loop.run_in_executor(
                self._executor, functools.partial(self._call, fn, args, kwargs)
            )
        finally:
            self.pending -= 1

    @property
    def backlog(self) -> int:
        """Database work waiting or under way: `run` calls, and each item of the group commits
        (every webhook queued or in the batch under way)."""
        return self.pending + sum(group.waiting for group in self._groups.values())

    def grouped(self, fn: Callable[[list[I]], list[T | BaseException]]) -> GroupCommit[I, T]:
        """The group commit of the batch function `fn` (made on first use): `fn(items)` runs in
        the writer thread and returns one result or exception per item, in order. Every group
        shares that one thread, and a group holds it until its queue is empty (there is one
        group today, `store_events`)."""
        group = self._groups.get(fn)
        if group is None:
            def run_batch(items: list[I]) -> list[T | BaseException]:
                # counted by item in `backlog` (GroupCommit.waiting), not in `pending`
                return self._call(fn, (items,), {})

            group = self._groups[fn] = GroupCommit(run_batch, self._writer, GROUP_WINDOW,
                                                   GROUP_MAX)
        return cast(GroupCommit[I, T], group)

    def _call(self, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
        if self.db.is_closed():
            self.db.connect()
            with self._lock:
                self._connections.add(self.db.connection())
        watch = not self.writes.writable  # is this the call that shows writes work again?
        mark = self._write_mark() if watch else None
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            if refuses_writes(exc):
                self.writes.failed(exc)
            if isinstance(exc, UNAVAILABLE):
                self._drop_connection()
            raise
        if watch and mark is not None and self._write_mark() not in (None, mark):
            self.writes.succeeded()
        return result

    def _write_mark(self) -> object:
        """Something that changes when this database accepts a write (None: unknown)."""
        if self.db.is_closed():  # `fn` closed it: a new connection would prove nothing
            return None
        try:
            if self._sqlite:
                return self.db.connection().total_changes
            return self.db.execute_sql("SELECT pg_current_wal_insert_lsn()").fetchone()[0]
        except Exception:  # a closed connection, a replica in recovery
            return None

    def _drop_connection(self) -> None:
        with contextlib.suppress(Exception):
            conn = self.db.connection()
            with self._lock:
                self._connections.discard(conn)
        with contextlib.suppress(Exception):
            self.db.close()

    async def ping(self) -> None:
        """Raise unless the database answers a trivial query."""
        await self.run(lambda: self.db.execute_sql("SELECT 1").fetchone())

    async def probe_write(self) -> None:
        """One cheap write that changes nothing (SQLite: `user_version` set to itself;
        PostgreSQL: whether the session may write), reported to `writes`; raises when refused."""
        def probe() -> None:
            if self._sqlite:
                version = self.db.execute_sql("PRAGMA user_version").fetchone()[0]
                self.db.execute_sql(f"PRAGMA user_version = {int(version)}")
            else:
                read_only = self.db.execute_sql("SHOW transaction_read_only").fetchone()[0]
                if read_only != "off":
                    raise pw.OperationalError("the database is read-only "
                                              "(transaction_read_only is on)")
            self.writes.succeeded()

        await self.run(probe)

    def close(self) -> None:
        """Stop the pool and close every connection its threads opened."""
        self._writer.shutdown(wait=True, cancel_futures=True)
        self._executor.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            conns, self._connections = list(self._connections), set()
        for conn in conns:
            with contextlib.suppress(Exception):
                conn.close()
        with contextlib.suppress(Exception):
            self.db.close()
