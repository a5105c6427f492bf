"""Issue 17: webhook ingest by group commit.

`GroupCommit` (models/group_commit.py) on its own; `store_events` (one transaction per batch,
duplicates exactly once, a bad event failing alone) on SQLite and PostgreSQL; webhooks through
the real server; a real server process killed with SIGKILL while it acknowledges webhooks, after
which every acknowledged event is in the database; and `SQLITE_SYNCHRONOUS`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import peewee as pw
import pytest
from conftest import (
    ROOT,
    WH_LIVE,
    base_env,
    event,
    free_port,
    running,
    sign,
    start_server,
    wait_for,
)

from models.db import Storage, _write_lock, open_database, write_transaction
from models.events import NewEvent, WebhookEvent, store_event, store_events
from models.group_commit import GroupCommit
from models.migrate import migrate
from service.config import Config, ConfigError

# ---- GroupCommit ---------------------------------------------------------------------------------


class Recorder:
    """A batch function that records its batches (it runs in the writer thread); it doubles
    each item, fails on negative ones, and holds each batch until `gate` is set when one is
    given."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.batches: list[list[int]] = []
        self.gate = gate
        self.threads: set[str] = set()

    def __call__(self, items: list[int]) -> list[int | BaseException]:
        self.threads.add(threading.current_thread().name)
        self.batches.append(list(items))
        if self.gate is not None:
            assert self.gate.wait(20), "the test never opened the gate"
        if 999 in items:
            raise RuntimeError("the whole batch failed")
        return [ValueError(f"bad {i}") if i < 0 else 2 * i for i in items]


@contextlib.contextmanager
def writer() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(1, thread_name_prefix="test-writer")
    try:
        yield pool
    finally:
        pool.shutdown(wait=True)


@contextlib.asynccontextmanager
async def held(**kw: Any) -> AsyncIterator[tuple[GroupCommit[int, int], Recorder,
                                                 threading.Event, asyncio.Future[int]]]:
    """A group whose first batch, item 0, is under way in the writer thread (it was written at
    once) and held there until the gate is set: what is submitted meanwhile waits behind it."""
    gate = threading.Event()
    recorder = Recorder(gate)
    with writer() as pool:
        group: GroupCommit[int, int] = GroupCommit(recorder, pool, **kw)
        first = asyncio.ensure_future(group.submit(0))
        await started(recorder, 1)
        try:
            yield group, recorder, gate, first
        finally:
            gate.set()


async def started(recorder: Recorder, batches: int) -> None:
    """Wait until the writer has started this many batches."""
    await wait_for(lambda: asyncio.sleep(0, len(recorder.batches) >= batches), 10,
                   f"{batches} batches started")


@pytest.mark.gen_test
async def test_items_that_arrive_during_a_batch_share_the_next_one():
    async with held() as (group, recorder, gate, first):
        rest = [asyncio.ensure_future(group.submit(i)) for i in range(1, 20)]
        await asyncio.sleep(0)
        assert group.waiting == 20
        gate.set()
        assert await asyncio.gather(first, *rest) == [2 * i for i in range(20)]
    assert recorder.batches == [[0], list(range(1, 20))]
    assert (group.batches, group.items, group.waiting) == (2, 20, 0)
    assert recorder.threads == {"test-writer_0"}


@pytest.mark.gen_test
async def test_a_window_lets_items_arriving_together_join_the_first_batch():
    recorder = Recorder()
    with writer() as pool:
        group: GroupCommit[int, int] = GroupCommit(recorder, pool, window=0.5)
        assert await asyncio.gather(*(group.submit(i) for i in range(5))) == [0, 2, 4, 6, 8]
    assert recorder.batches == [[0, 1, 2, 3, 4]]


@pytest.mark.gen_test
async def test_no_answer_before_the_batch_finished_and_the_next_batch_waits_for_it():
    async with held() as (group, recorder, gate, first):
        later = [asyncio.ensure_future(group.submit(i)) for i in range(1, 4)]
        for _ in range(20):
            await asyncio.sleep(0.001)
        assert not first.done() and not any(f.done() for f in later)  # not committed yet
        assert recorder.batches == [[0]]  # one batch at a time; the others queue behind it
        gate.set()
        assert await asyncio.gather(first, *later) == [0, 2, 4, 6]
    assert recorder.batches == [[0], [1, 2, 3]]


async def one_batch(items: tuple[int, ...]) -> tuple[list[Any], Recorder, GroupCommit[int, int]]:
    """The outcomes of `items` submitted while a first batch (item 0) is held: one batch."""
    async with held() as (group, recorder, gate, first):
        waiting = [asyncio.ensure_future(group.submit(i)) for i in items]
        await asyncio.sleep(0)
        gate.set()
        assert await first == 0
        outcomes = await asyncio.gather(*waiting, return_exceptions=True)
        assert await group.submit(5) == 10  # and the group carries on
    assert recorder.batches == [[0], list(items), [5]]
    return outcomes, recorder, group


@pytest.mark.gen_test
async def test_a_failed_item_fails_alone_and_a_failed_batch_fails_all_of_it():
    outcomes, _, _ = await one_batch((1, -1, 2))
    assert outcomes[0] == 2 and outcomes[2] == 4
    assert isinstance(outcomes[1], ValueError) and str(outcomes[1]) == "bad -1"
    outcomes, _, _ = await one_batch((1, 999))
    assert [str(o) for o in outcomes] == ["the whole batch failed"] * 2
    assert all(isinstance(o, RuntimeError) for o in outcomes)


@pytest.mark.gen_test
async def test_max_batch_splits_a_crowd_and_a_cancelled_caller_does_not_hurt_the_others():
    async with held(max_batch=4) as (group, recorder, gate, first):
        tasks = [asyncio.ensure_future(group.submit(i)) for i in range(1, 11)]
        await asyncio.sleep(0)
        tasks[1].cancel()
        gate.set()
        done = await asyncio.gather(first, *tasks, return_exceptions=True)
    assert isinstance(done[2], asyncio.CancelledError)
    assert [d for i, d in enumerate(done) if i != 2] == [2 * i for i in range(11) if i != 2]
    assert recorder.batches == [[0], [1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]  # item 2 written


@pytest.mark.gen_test
async def test_items_whose_writer_is_shut_down_before_it_ran_fail():
    busy = threading.Event()
    with writer() as pool:
        pool.submit(busy.wait, 20)  # the one writer thread is busy: the drain waits its turn
        group: GroupCommit[int, int] = GroupCommit(Recorder(), pool)
        items = [asyncio.ensure_future(group.submit(i)) for i in range(3)]
        await asyncio.sleep(0)
        pool.shutdown(wait=False, cancel_futures=True)  # as Storage.close does
        busy.set()
        outcomes = await asyncio.wait_for(asyncio.gather(*items, return_exceptions=True), 10)
    assert [str(o) for o in outcomes] == ["the writer is stopped"] * 3
    assert group.waiting == 0


@pytest.mark.gen_test
async def test_each_caller_is_answered_on_its_own_event_loop():
    """Items from two event loops in one batch: each future is settled on its own loop (a
    callback from the other loop's thread would neither be safe nor wake it)."""
    async with held() as (group, recorder, gate, first):
        mine = asyncio.ensure_future(group.submit(1))  # this loop's item first in the batch
        await asyncio.sleep(0)
        other: list[Any] = []

        def other_loop() -> None:
            async def two() -> list[int]:
                return list(await asyncio.gather(group.submit(2), group.submit(3)))

            other.append(asyncio.run(two()))

        thread = threading.Thread(target=other_loop, daemon=True)
        thread.start()
        await wait_for(lambda: asyncio.sleep(0, group.waiting == 4), 10, "the other loop's items")
        gate.set()
        assert await asyncio.gather(first, mine) == [0, 2]
        thread.join(10)
    assert other == [[4, 6]], "the other loop was never told"
    assert recorder.batches == [[0], [1, 2, 3]]


@pytest.mark.gen_test
async def test_a_batch_outcome_a_future_cannot_hold_fails_as_runtime_error():
    with writer() as pool:
        group: GroupCommit[int, int] = GroupCommit(lambda items: [StopIteration()], pool)
        with pytest.raises(RuntimeError, match="StopIteration"):
            await group.submit(1)
        assert group.waiting == 0


@pytest.mark.gen_test
async def test_a_stopped_writer_refuses_new_items():
    with writer() as pool:
        group: GroupCommit[int, int] = GroupCommit(Recorder(), pool)
        assert await group.submit(1) == 2
    with pytest.raises(RuntimeError, match="the writer is stopped"):
        await group.submit(2)
    assert group.waiting == 0


# ---- store_events on SQLite and PostgreSQL -------------------------------------------------------


def new(event_id: str, payload: str | None = "{}") -> NewEvent:
    return NewEvent(event_id, "customer.created", "acct_1", True, 1, payload)  # type: ignore[arg-type]


def stored_ids() -> list[str]:
    return sorted(e.id for e in WebhookEvent.select(WebhookEvent.id))


def test_duplicates_within_and_across_batches_are_stored_once(db_url):
    migrate(open_database(db_url))
    assert store_events([new("evt_a"), new("evt_b"), new("evt_a")]) == [True, True, False]
    assert store_events([new("evt_b"), new("evt_c"), new("evt_c")]) == [False, True, False]
    assert not store_event("evt_c", "customer.created", "acct_1", True, 1, "{}")
    assert stored_ids() == ["evt_a", "evt_b", "evt_c"]
    row = WebhookEvent.get_by_id("evt_a")
    assert (row.status, row.attempts, row.livemode, row.payload) == ("pending", 0, True, "{}")
    assert row.next_attempt_at == row.received_at and row.processed_at is None


def test_an_event_nothing_handles_is_stored_processed(db_url):
    migrate(open_database(db_url))
    assert store_events([new("evt_a")._replace(needs_processing=False)]) == [True]
    row = WebhookEvent.get_by_id("evt_a")
    assert row.status == "processed" and row.processed_at == row.received_at
    assert row.next_attempt_at is None


def test_a_bad_event_in_a_batch_fails_alone(db_url):
    migrate(open_database(db_url))
    outcomes = store_events([new("evt_1"), new("evt_bad", payload=None), new("evt_2"),
                             new("evt_1")])
    assert outcomes[0] is True and outcomes[2] is True and outcomes[3] is False
    assert isinstance(outcomes[1], pw.IntegrityError)  # NOT NULL: not taken for a duplicate
    assert stored_ids() == ["evt_1", "evt_2"]
    with pytest.raises(pw.IntegrityError):  # nothing stored: the error itself
        store_events([new("evt_bad", payload=None), new("evt_bad2", payload=None)])
    with pytest.raises(pw.IntegrityError):
        store_events([new("evt_bad", payload=None)])
    assert stored_ids() == ["evt_1", "evt_2"]


def test_a_locked_database_fails_the_whole_batch_at_once(tmp_path):
    """A batch that fails for the database's reason (locked past the busy timeout) is refused
    as a whole in one try; trying each event again alone would wait out the timeout once per
    event while every other webhook queued behind it."""
    path = tmp_path / "locked.db"
    db = open_database(f"sqlite:///{path}")
    migrate(db)
    db.execute_sql("PRAGMA busy_timeout = 100")
    begins: list[str] = []
    db.connection().set_trace_callback(
        lambda sql: begins.append(sql) if sql.startswith("BEGIN") else None)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holds SQLite's write lock
    try:
        with pytest.raises(pw.OperationalError, match="locked"):
            store_events([new(f"evt_{i}") for i in range(20)])
        assert len(begins) == 1, begins
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert store_events([new("evt_0"), new("evt_1")]) == [True, True]
    assert stored_ids() == ["evt_0", "evt_1"]


def test_claim_without_returning_on_sqlite_before_3_35(tmp_path, monkeypatch):
    """Debian bullseye's SQLite (3.34) has no `UPDATE ... RETURNING`: the claim takes two
    statements in one write transaction there, with the same answers."""
    from models.events import claim_event

    migrate(open_database(f"sqlite:///{tmp_path}/old.db"))
    store_events([new("evt_a")])
    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 34, 1))
    claimed = claim_event("evt_a", holder="r1", lease=30)
    assert claimed is not None and claimed.id == "evt_a"
    assert (claimed.status, claimed.attempts, claimed.claimed_by) == ("processing", 1, "r1")
    assert claim_event("evt_a", holder="r2", lease=30) is None  # held: not claimed twice
    assert claim_event("evt_missing", holder="r2") is None


@pytest.mark.gen_test(timeout=30)
async def test_storage_group_commits_in_few_transactions_exactly_once(tmp_path):
    db = open_database(f"sqlite:///{tmp_path}/app.db")
    migrate(db)
    storage = Storage(db, workers=2)
    try:
        group = storage.grouped(store_events)
        assert storage.grouped(store_events) is group  # one per batch function
        ids = [f"evt_{i % 30}" for i in range(60)]  # each id twice
        outcomes = await asyncio.gather(*(group.submit(new(i)) for i in ids))
        assert sum(outcomes) == 30
        assert {i for i, stored in zip(ids, outcomes, strict=True) if stored} == set(ids[:30])
        assert group.items == 60 and group.batches < 60
        assert await storage.run(lambda: len(stored_ids())) == 30
    finally:
        storage.close()


@pytest.mark.gen_test(timeout=30)
async def test_the_backlog_counts_each_waiting_webhook_of_a_group_commit(tmp_path):
    """`db_calls_pending` (Storage.backlog) counts every item queued or in the batch under way,
    not one per batch: a burst of webhooks does not look idle."""
    storage = Storage(open_database(f"sqlite:///{tmp_path}/backlog.db"), workers=1)
    release = threading.Event()

    def slow_batch(items: list[int]) -> list[int | BaseException]:
        release.wait(20)
        return list(items)

    try:
        group = storage.grouped(slow_batch)
        first = [asyncio.ensure_future(group.submit(i)) for i in range(3)]
        await wait_for(lambda: asyncio.sleep(0, group.batches == 1), 10, "first batch")
        more = [asyncio.ensure_future(group.submit(i)) for i in range(3, 8)]
        await asyncio.sleep(0)
        assert storage.backlog == 8 and group.waiting == 8
        release.set()
        assert await asyncio.gather(*first, *more) == list(range(8))
        assert storage.backlog == 0
    finally:
        release.set()
        storage.close()


def test_writers_of_one_process_queue_on_a_lock_and_may_nest(tmp_path):
    db = open_database(f"sqlite:///{tmp_path}/app.db")
    migrate(db)
    with write_transaction(), write_transaction():  # re-entrant: a nested one is a savepoint
        store_event("evt_outer", "x.y", None, False, 1, "{}")
    assert stored_ids() == ["evt_outer"]
    taken: list[bool] = []

    def try_lock() -> None:  # what another writer thread of this process would find
        lock = _write_lock(db)
        taken.append(lock.acquire(blocking=False))
        if taken[-1]:
            lock.release()

    with write_transaction():
        thread = threading.Thread(target=try_lock)
        thread.start()
        thread.join(10)
    thread = threading.Thread(target=try_lock)
    thread.start()
    thread.join(10)
    assert taken == [False, True]  # held for the length of the transaction, then let go


# ---- through the server --------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=60)
async def test_concurrent_webhooks_with_redeliveries_are_answered_exactly_once(tmp_path):
    async with running(base_env(tmp_path, SQLITE_SYNCHRONOUS="full")) as app:
        assert app.backend.config.sqlite_synchronous == "full"
        mode = await app.backend.storage.run(
            lambda: app.backend.storage.db.execute_sql("PRAGMA synchronous").fetchone()[0])
        assert mode == 2  # FULL
        events = [event("invoice.paid", f"acct_{i}", event_id=f"evt_c{i}") for i in range(25)]
        answers = await asyncio.gather(*(app.webhook(e) for e in events + events[:10]))
        assert [a.status_code for a in answers] == [200] * 35
        firsts = [a.json()["duplicate"] for a in answers[:25]]
        seconds = [a.json()["duplicate"] for a in answers[25:]]
        # of each id's two deliveries exactly one is the new one
        assert all(a != b for a, b in zip(firsts[:10], seconds, strict=True))
        assert not any(firsts[10:])
        rows = await app.backend.storage.run(lambda: sorted(stored_ids()))
        assert rows == sorted(e["id"] for e in events)


# ---- kill -9 right after the acknowledgements ----------------------------------------------------


@pytest.mark.parametrize("synchronous", ["normal", "full"])
def test_kill_9_while_acknowledging_loses_no_acknowledged_event(tmp_path, synchronous):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRIPE_")}
    env.update(base_env(tmp_path, PORT=str(port), SCHEDULER="off", LOG_LEVEL="warning",
                        SQLITE_SYNCHRONOUS=synchronous))
    bodies = [json.dumps(event("invoice.paid", f"acct_{i % 7}", event_id=f"evt_k{i:05d}"))
              for i in range(3000)]
    acknowledged: list[str] = []
    killed = threading.Event()
    proc = start_server(["run.py"], env, port)

    async def load() -> None:
        queue = list(reversed(bodies))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=20) as c:
            async def sender() -> None:
                while queue and not killed.is_set():
                    body = queue.pop()
                    try:
                        r = await c.post("/webhooks", content=body.encode(),
                                         headers={"Stripe-Signature": sign(body, WH_LIVE)})
                    except httpx.TransportError:
                        return  # the server is gone
                    if r.status_code == 200 and r.json() == {"received": True,
                                                             "duplicate": False}:
                        acknowledged.append(json.loads(body)["id"])
                        if len(acknowledged) == 300:  # kill while others are in flight
                            proc.send_signal(signal.SIGKILL)
                            killed.set()
            await asyncio.gather(*(sender() for _ in range(24)))

    try:
        asyncio.run(load())
    finally:
        proc.kill()
        proc.wait(10)
    assert killed.is_set() and len(acknowledged) >= 300
    with sqlite3.connect(f"{tmp_path}/app.db") as conn:
        stored = {row[0] for row in conn.execute("SELECT id FROM webhook_event")}
    missing = set(acknowledged) - stored
    assert not missing, f"{len(missing)} acknowledged events were lost"


# ---- SQLITE_SYNCHRONOUS --------------------------------------------------------------------------


def test_sqlite_synchronous_is_normal_by_default_and_full_on_request(tmp_path):
    assert Config.from_env({}).sqlite_synchronous == "normal"
    assert Config.from_env({"SQLITE_SYNCHRONOUS": "FULL"}).sqlite_synchronous == "full"
    for value, number in (("normal", 1), ("full", 2)):
        db = open_database(f"sqlite:///{tmp_path}/{value}.db", value)
        assert db.execute_sql("PRAGMA synchronous").fetchone()[0] == number
        db.close()


@pytest.mark.parametrize("value", ["off", "extra", "1"])
def test_a_bad_sqlite_synchronous_is_a_clear_startup_error(tmp_path, value):
    with pytest.raises(ConfigError, match=f"^SQLITE_SYNCHRONOUS: must be one of normal, full, "
                                          f"got '{value}'$"):
        Config.from_env({"SQLITE_SYNCHRONOUS": value})
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRIPE_")}
    env.update(base_env(tmp_path, SQLITE_SYNCHRONOUS=value))
    done = subprocess.run([sys.executable, "run.py"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == ("configuration error: SQLITE_SYNCHRONOUS: must be one of "
                                   f"normal, full, got '{value}'")
    with pytest.raises(ValueError, match="synchronous"):
        open_database(f"sqlite:///{tmp_path}/x.db", value)
