"""Group commit: writes that arrive together share one transaction and one trip to a thread.

    group = GroupCommit(run_batch, window=0.001, max_batch=256)
    result = await group.submit(item)   # returns once the batch holding `item` committed

`run_batch(items)` is awaited with a list of items and must return one outcome per item, in
order: a result, or an exception for that item alone (raising fails the whole batch: every
item of it gets that exception). The contract for the caller:

- `submit` returns (or raises) only after the batch holding its item has finished, so a caller
  that answers "stored" after `submit` returned never answers for an uncommitted write;
- at most one batch is in flight; items submitted meanwhile wait and form the next batch, so
  under load batches grow by themselves, and when idle an item waits at most `window` seconds
  for company before its batch starts;
- a caller cancelled while waiting does not stop its batch (its item may still be written; its
  outcome is dropped).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

I = TypeVar("I")  # noqa: E741 (an item)
R = TypeVar("R")  # a result


class GroupCommit(Generic[I, R]):
    """Batches `submit(item)` calls into `run_batch(items)` calls; see the module docstring."""

    def __init__(self, run_batch: Callable[[list[I]], Awaitable[list[R | BaseException]]],
                 window: float = 0.001, max_batch: int = 256) -> None:
        self.run_batch = run_batch
        self.window = window
        self.max_batch = max_batch
        self._queue: list[tuple[I, asyncio.Future[R]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self.batches = 0  # how many batches ran (tests and benchmarks read it)
        self.items = 0  # how many items they held
        self._running = 0  # items in the batch under way

    @property
    def waiting(self) -> int:
        """Items submitted and not yet answered: queued, or in the batch under way."""
        return len(self._queue) + self._running

    async def submit(self, item: I) -> R:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._queue.append((item, future))
        if self._flusher is None:
            self._flusher = loop.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        try:
            if self.window > 0:
                await asyncio.sleep(self.window)  # let the items arriving together join
            while self._queue:
                batch = self._queue[:self.max_batch]
                del self._queue[:self.max_batch]
                await self._run(batch)
        finally:
            self._flusher = None

    async def _run(self, batch: list[tuple[I, asyncio.Future[R]]]) -> None:
        self.batches += 1
        self.items += len(batch)
        outcomes: list[R | BaseException]
        self._running = len(batch)
        try:
            outcomes = await self.run_batch([item for item, _ in batch])
            if len(outcomes) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} returned {len(outcomes)} outcomes")
        except Exception as exc:
            outcomes = [exc] * len(batch)
        except BaseException as exc:  # cancelled (shutdown): nobody is told "stored"
            self._running = 0
            for _, future in batch:
                if not future.done():
                    future.set_exception(RuntimeError(f"the batch was interrupted: {exc!r}"))
            raise
        self._running = 0
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if future.done():  # its caller was cancelled
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
