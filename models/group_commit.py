"""Group commit: writes that arrive together share one transaction, made by one writer thread.

    group = GroupCommit(run_batch, writer, window=0.0, max_batch=256)
    result = await group.submit(item)   # returns once the batch holding `item` committed

`run_batch(items)` is a plain function, called in the `writer` executor (one thread) with a
list of items; it must return one outcome per item, in order: a result, or an exception for
that item alone (raising fails the whole batch: every item of it gets that exception). The
contract for the caller:

- `submit` returns (or raises) only after the batch holding its item has finished, so a caller
  that answers "stored" after `submit` returned never answers for an uncommitted write;
- the writer starts on the first item at once and runs one batch at a time, taking everything
  queued (up to `max_batch`) each time, while the event loop goes on accepting more: under load
  batches grow by themselves, out of what arrived during the batch before, and committing
  overlaps with the loop's own work; when idle, an item is written at once (after `window`
  seconds, waited in the writer thread, when one is given);
- a caller cancelled while waiting does not stop its batch (its item may still be written; its
  outcome is dropped);
- once the writer executor is shut down, `submit` raises `RuntimeError`, and so do the
  callers whose items were still queued when the shutdown cancelled the writer's turn.

Why the batches are taken in the writer thread, not by a task on the loop: when 32 webhooks
arrive at once, the loop handles all of them in one turn, and a task (or a timer) that starts
the batch runs only after that turn; then the loop waits for the commit with nothing to do, and
the callers wait for both, one after the other. Here the first batch is committing while the
loop still parses and verifies the rest. Measured in docs/performance.md.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, Generic, TypeVar

I = TypeVar("I")  # noqa: E741 (an item)
R = TypeVar("R")  # a result


class GroupCommit(Generic[I, R]):
    """Batches `submit(item)` calls into `run_batch(items)` calls in a writer thread; see the
    module docstring."""

    def __init__(self, run_batch: Callable[[list[I]], list[R | BaseException]],
                 writer: Executor, window: float = 0.0, max_batch: int = 256) -> None:
        self.run_batch = run_batch
        self.writer = writer
        self.window = window
        self.max_batch = max_batch
        self._queue: list[tuple[I, asyncio.Future[R]]] = []
        self._lock = threading.Lock()  # the queue and `_draining`, shared with the writer
        self._draining = False  # a drain is submitted to the writer and has not returned
        self.batches = 0  # how many batches started (tests and benchmarks read it)
        self.items = 0  # how many items they held
        self._running = 0  # items in the batch under way

    @property
    def waiting(self) -> int:
        """Items submitted and not yet answered: queued, or in the batch under way."""
        return len(self._queue) + self._running

    async def submit(self, item: I) -> R:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        with self._lock:
            self._queue.append((item, future))
            start = not self._draining
            self._draining = True
        if start:
            try:
                job = self.writer.submit(self._drain)
            except RuntimeError:  # the writer is shut down: nothing will be written
                self._abandon()
            else:
                job.add_done_callback(self._ended)
        return await future

    def _ended(self, job: Future[None]) -> None:
        """A drain cancelled before it ran (the writer was shut down meanwhile), or one that
        failed (a bug), leaves nobody to write what is queued: those items fail, and the next
        `submit` starts a drain again."""
        if job.cancelled() or job.exception() is not None:
            self._abandon()

    def _abandon(self) -> None:
        """The writer will not run: every queued item fails (from any thread)."""
        with self._lock:
            failed, self._queue = self._queue, []
            self._draining = False
        outcomes: list[R | BaseException] = [RuntimeError("the writer is stopped")] * len(failed)
        _hand_back(failed, outcomes)

    def _drain(self) -> None:
        """In the writer thread: run batches until the queue is empty."""
        if self.window > 0:
            time.sleep(self.window)  # let the items arriving together join
        while True:
            with self._lock:  # counted in `waiting` all along: queued, then running
                batch = self._queue[:self.max_batch]
                del self._queue[:self.max_batch]
                if not batch:
                    self._draining = False
                    return
                self.batches += 1
                self.items += len(batch)
                self._running = len(batch)
            outcomes: list[R | BaseException]
            try:
                outcomes = self.run_batch([item for item, _ in batch])
                if len(outcomes) != len(batch):
                    raise RuntimeError(f"a batch of {len(batch)} returned {len(outcomes)} "
                                       "outcomes")
            except Exception as exc:
                outcomes = [exc] * len(batch)
            except BaseException as exc:  # the thread is being torn down: nobody is told stored
                outcomes = [RuntimeError(f"the batch was interrupted: {exc!r}")] * len(batch)
            finally:
                self._running = 0
            _hand_back(batch, outcomes)


def _hand_back(batch: list[tuple[I, asyncio.Future[R]]],
               outcomes: list[R | BaseException]) -> None:
    """From any thread: settle each caller's future on its own event loop."""
    by_loop: dict[asyncio.AbstractEventLoop, tuple[list[Any], list[Any]]] = {}
    for waiting, outcome in zip(batch, outcomes, strict=True):
        items, results = by_loop.setdefault(waiting[1].get_loop(), ([], []))
        items.append(waiting)
        results.append(outcome)
    for loop, (items, results) in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle, items, results)
        except RuntimeError:  # that loop is closed: nobody there is waiting any more
            pass


def _settle(batch: list[tuple[I, asyncio.Future[R]]],
            outcomes: list[R | BaseException]) -> None:
    """On the loop: hand each caller its outcome."""
    for (_, future), outcome in zip(batch, outcomes, strict=True):
        if future.done():  # its caller was cancelled
            continue
        if isinstance(outcome, StopIteration):  # a future refuses to raise StopIteration
            future.set_exception(RuntimeError(f"the batch raised {outcome!r}"))
        elif isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
