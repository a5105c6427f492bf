"""Leases: how a claim on a row (a webhook event, a job run, a task) outlives only its holder.

A process that claims a row writes `lease_until = now + lease` on it and, while the work runs,
renews every lease it holds in one UPDATE every `lease / 3` seconds (`LeaseKeeper`). When the
process dies (kill -9, power loss), nobody renews: the lease runs out at most `lease` seconds
later and anyone may take the row over (`expired(...)`). A short lease (`LEASE_SECONDS`) is what
makes a crash cost seconds, not minutes; renewing is what keeps long work from being taken over
while its holder is alive.

The helpers are table-agnostic: a model passes its own lease column (and holder column, if it
has one) so webhook events (`models/events.py`), job runs (`models/jobs.py`) and tasks share one
definition of "held" and "expired". A finished row has its lease set to NULL, so an index on the
lease column finds the expired ones without reading finished rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Hashable, Iterable
from typing import Any, Generic, TypeVar

import peewee as pw

from models.db import Storage

log = logging.getLogger("app.leases")

#: Seconds a claim stays valid without renewal. A crashed holder's work is taken over at most
#: this long after the crash (plus the taker's poll delay).
LEASE_SECONDS = 5.0


def renew_interval(lease: float = LEASE_SECONDS) -> float:
    """How often a holder renews: three renewals fit in one lease, so one slow write (a busy
    database) does not let the lease lapse."""
    return lease / 3.0


def expired(lease_column: pw.Field, t: float) -> pw.Expression:
    """Rows whose lease ran out at time `t` (a NULL lease is not held, but not expired either:
    finished rows carry NULL)."""
    return lease_column.is_null(False) & (lease_column < t)


def held(lease_column: pw.Field, t: float) -> pw.Expression:
    """Rows whose lease is still running at time `t`."""
    return lease_column.is_null(False) & (lease_column >= t)


def _renewal(model: type[pw.Model], lease_column: pw.Field, ids: list[Hashable],
             until: float, holder_column: pw.Field | None, holder: str | None,
             still: pw.Expression | None) -> pw.ModelUpdate:
    cond = model._meta.primary_key.in_(ids) & lease_column.is_null(False)
    if holder_column is not None:
        cond &= holder_column == holder
    if still is not None:
        cond &= still
    return model.update({lease_column: until}).where(cond)


def renew_rows(model: type[pw.Model], lease_column: pw.Field, ids: Iterable[Hashable],
               until: float, holder_column: pw.Field | None = None,
               holder: str | None = None, still: pw.Expression | None = None) -> int:
    """Runs in a database thread: push the lease of `ids` to `until`, in one UPDATE.

    Only rows still held (lease not NULL), still held by `holder` when a holder column is given,
    and matching `still` (e.g. "status is processing") are renewed: a row that someone took over
    after our lease lapsed stays theirs. Returns how many rows were renewed.
    """
    ids = list(ids)
    if not ids:
        return 0
    return _renewal(model, lease_column, ids, until, holder_column, holder, still).execute()


def renew_rows_returning(model: type[pw.Model], lease_column: pw.Field,
                         ids: Iterable[Hashable], until: float,
                         holder_column: pw.Field | None = None, holder: str | None = None,
                         still: pw.Expression | None = None) -> set[Any]:
    """`renew_rows`, but returns the ids it renewed (`UPDATE ... RETURNING`, PostgreSQL and
    SQLite >= 3.35): the ones missing are no longer ours (finished, cancelled, deleted, taken
    over), which `LeaseKeeper(on_lost=...)` reports."""
    ids = list(ids)
    if not ids:
        return set()
    pk = model._meta.primary_key
    query = _renewal(model, lease_column, ids, until, holder_column, holder, still)
    return {row[0] for row in query.returning(pk).tuples().execute()}


K = TypeVar("K", bound=Hashable)
#: `renew(ids, until)`: push the lease of these rows to `until`; returns how many it renewed,
#: or which (a set), so that the keeper can tell its owner which rows it lost.
Renew = Callable[[list[K], float], "int | set[K]"]
#: `on_lost(ids)`: these held rows were not renewed: they are no longer this holder's.
Lost = Callable[[set[K]], None]
#: `renewal(ids)`, on the event loop right before a renewal of `ids`: what the database thread
#: then runs with the new `until`, holding (immutable) whatever else of the holder's state the
#: renewal needs, taken now, so that the thread reads nothing the loop changes meanwhile.
Renewal = Callable[[list[K]], Callable[[float], "int | set[K]"]]


class LeaseKeeper(Generic[K]):
    """Renews, while this process runs, the leases of the rows it holds.

        keeper = LeaseKeeper(storage, renew=lambda ids, until: renew_rows(...))
        keeper.hold(row_id)        # right after the claim
        ...                        # the work; the lease is renewed every `lease / 3` s
        keeper.release(row_id)     # when the outcome is recorded

    One background task, started on the first `hold` and ending when nothing is held, renews
    every held row in one database call per interval (`renew(ids, until)` runs in a database
    thread). `clock` gives the time the database rows are compared with (`models.base.now`).
    When `renew` returns the set of ids it renewed, `on_lost` hears of the held ids it did not
    renew (still held when the answer came back), at most one interval after the row changed.
    A holder whose renewal needs more of its state than the ids gives `renewal` instead of
    `renew`.
    """

    def __init__(self, storage: Storage, renew: Renew[K] | None = None, *,
                 clock: Callable[[], float], lease: float = LEASE_SECONDS,
                 name: str = "lease", on_lost: Lost[K] | None = None,
                 renewal: Renewal[K] | None = None) -> None:
        if renewal is None:
            if renew is None:
                raise ValueError("give renew or renewal")
            plain = renew

            def renewal(ids: list[K]) -> Callable[[float], int | set[K]]:
                return functools.partial(plain, ids)

        self.storage = storage
        self.renewal: Renewal[K] = renewal
        self.on_lost = on_lost
        self.clock = clock
        self.lease = lease
        self.name = name
        self._held: set[K] = set()
        self._task: asyncio.Task[None] | None = None

    @property
    def held(self) -> frozenset[K]:
        return frozenset(self._held)

    def until(self) -> float:
        """The lease a claim made now should carry."""
        return self.clock() + self.lease

    def hold(self, row_id: K) -> None:
        self._held.add(row_id)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._renew_forever())

    def release(self, row_id: K) -> None:
        self._held.discard(row_id)

    async def _renew_forever(self) -> None:
        while self._held:
            await asyncio.sleep(renew_interval(self.lease))
            ids = list(self._held)
            if not ids:
                break
            try:
                renewed = await self.storage.run(self.renewal(ids), self.until())
            except Exception as exc:  # the database may be down: try again next interval
                log.warning("%s renewal failed: %s", self.name, type(exc).__name__)
                continue
            if isinstance(renewed, set) and self.on_lost is not None:
                lost = {i for i in ids if i not in renewed and i in self._held}
                if lost:
                    self.on_lost(lost)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
