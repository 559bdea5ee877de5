"""Group commit, whatever the engine: writers queue an operation and (usually) wait; a single committer
task takes everything queued, runs it in one transaction on its writer thread, and wakes the waiters.
While that transaction runs, new operations pile up for the next one, so under load a commit carries
hundreds of rows and the per-message cost of durability falls to almost nothing.

An engine subclasses :class:`GroupCommit` and supplies ``_commit_sync`` (one transaction for a batch,
an outcome per operation, one failing operation not undoing its neighbours) and ``_can_write``. The
transaction runs on a thread that the committer task starts and, when it ends, waits for, so no thread
outlives the task that started it; an engine with nothing to wait for (memory) overrides
``_commit_batch`` to stay on the loop. A batch is taken as soon as the previous one is done: there is no
tick to wait for.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import trio

from .interface import CommitCallback, StoredEvent, StoreError
from .writer_thread import WriterThread

log = logging.getLogger("utuvox.store")

C = TypeVar("C")  # the engine's connection
T = TypeVar("T")
Outcome = tuple[Any, BaseException | None]


@dataclass(slots=True)
class Pending(Generic[C]):
    op: Callable[[C], Any] | None  # None for a history row: see ``row``
    on_done: Callable[[Any, BaseException | None], None]
    # For a history row: the row itself, so consecutive rows go in with one statement.
    row: tuple[Any, ...] | None = None


@dataclass
class _Waiter:
    done: trio.Event = field(default_factory=trio.Event)
    result: Any = None
    error: BaseException | None = None

    def __call__(self, result: Any, error: BaseException | None) -> None:
        self.result, self.error = result, error
        self.done.set()


class GroupCommit(Generic[C]):
    def __init__(self, *, max_pending: int, max_batch: int) -> None:
        self._pending: deque[Pending[C]] = deque()
        self._max_pending = max_pending
        # A batch's events are published together when it commits; capping it caps the burst any one
        # member's queue receives at once.
        self._max_batch = max_batch
        self._wake = trio.lowlevel.ParkingLot()
        self._space = trio.lowlevel.ParkingLot()
        self._writes = trio.CapacityLimiter(1)
        self._thread = WriterThread(f"{type(self).__name__}-writer")
        self._closed = False
        self.commits = 0  # transactions committed, for statistics
        self.committed_ops = 0

    # --- what an engine supplies ----------------------------------------------------------------

    def _commit_sync(self, batch: list[Pending[C]]) -> list[Outcome]:
        raise NotImplementedError

    @property
    def _can_write(self) -> bool:
        raise NotImplementedError

    def _inline(self, batch: list[Pending[C]]) -> bool:
        """Whether this batch may be committed on the event loop itself rather than on the writer thread
        (an engine whose small commits cost less than the hop to a thread and back; see sqlite.py)."""
        return False

    def _inline_took(self, seconds: float) -> None:
        """How long a commit made on the event loop took (an engine may stop making them if it was long)."""

    def _commit_inline(self, batch: list[Pending[C]]) -> list[Outcome] | None:
        """The batch committed on the event loop, or None if that would mean waiting (then the writer
        thread commits it)."""
        return self._commit_sync(batch)

    def _commit_here(self, batch: list[Pending[C]]) -> list[Outcome] | None:
        """The batch committed right here on the event loop, if the engine says it is small enough and
        nothing else holds the connection; else None (and :meth:`_commit_batch` commits it)."""
        if not self._thread.running or not self._inline(batch):
            return None
        limiter = self._writes  # shared with opening and closing the engine's connection
        try:
            limiter.acquire_nowait()
        except trio.WouldBlock:
            return None
        try:
            start = time.perf_counter()
            outcomes = self._commit_inline(batch)
            self._inline_took(time.perf_counter() - start)
            return outcomes
        finally:
            limiter.release()

    async def _commit_batch(self, batch: list[Pending[C]]) -> list[Outcome]:
        """One transaction on the writer thread: the committer's own (see writer_thread.py) while the
        committer runs, else (a close after it ended) a worker thread this call awaits."""
        limiter = self._writes
        try:
            limiter.acquire_nowait()  # free but for those: no trip through the scheduler
        except trio.WouldBlock:
            await limiter.acquire()
        try:
            if self._thread.running:
                return await self._thread.run(self._commit_sync, batch)
            return await trio.to_thread.run_sync(self._commit_sync, batch)
        finally:
            limiter.release()

    async def _commit_shielded(self, batch: list[Pending[C]]) -> list[Outcome]:
        # Shielded: once taken from the queue, a batch is committed and its writers told, even if the
        # committer is being cancelled (else they would wait forever).
        with trio.CancelScope(shield=True):
            return await self._commit_batch(batch)
        raise AssertionError("a shielded scope cannot end early")

    def _committed(self) -> None:
        """Runs in the event loop after each batch's callbacks (for an engine that tells others)."""

    # --- the committer --------------------------------------------------------------------------

    async def _commit_forever(self) -> None:
        # An engine that commits on the event loop (memory) has no use for a thread.
        threaded = type(self)._commit_batch is GroupCommit._commit_batch
        async with self._thread.started() if threaded else contextlib.nullcontext():
            try:
                while True:
                    if not self._pending:
                        await self._wake.park()
                    else:
                        # A commit made on the event loop did not yield: let the others run (and queue
                        # more for the next batch) before it.
                        await trio.lowlevel.checkpoint()
                    await self._commit_once()
            finally:
                # On cancellation (shutdown), whatever was queued is still committed: it may have been
                # promised to a client already.
                with trio.CancelScope(shield=True):
                    while self._pending and self._can_write:
                        await self._commit_once()
                # From now on nobody would commit a queued write: refuse new ones instead of letting
                # their writers wait forever.
                self._closed = True

    async def _commit_once(self) -> None:
        pending = self._pending
        batch = [pending.popleft() for _ in range(min(len(pending), self._max_batch))]
        if self._space:
            self._space.unpark_all()
        if not batch:
            return
        outcomes = self._commit_here(batch)  # (no await: nothing to shield)
        if outcomes is None:
            outcomes = await self._commit_shielded(batch)
        self.commits += 1
        self.committed_ops += len(batch)
        for item, (result, error) in zip(batch, outcomes, strict=True):
            try:
                item.on_done(0 if result is None and item.row is not None else result, error)
            except Exception:
                # A failing callback must not stop the committer: every later writer would hang.
                log.exception("commit callback failed")
        self._committed()

    async def _drain(self) -> bool:
        """Commit what is queued, then refuse new writes; False if that was done before (``close``
        is safe to call twice)."""
        if self._closed:
            return False
        while self._pending and self._can_write:
            await self._commit_once()
        self._closed = True
        return True

    # --- queueing -------------------------------------------------------------------------------

    def submit_event(self, event: StoredEvent, on_commit: CommitCallback) -> None:
        """Queue a room event as a history row (numbered inside the commit: its ``seq`` is ignored)."""
        self.submit(None, on_commit, event)  # (a failed row's callback is given 0, see _commit_once)

    def submit(self, op: Callable[[C], Any] | None, on_done: Callable[[Any, BaseException | None], None],
               row: tuple[Any, ...] | None = None) -> None:
        if self._closed:
            on_done(None if row is None else 0, StoreError("the store is closed"))
            return
        self._pending.append(Pending(op, on_done, row))
        if len(self._pending) == 1:
            self._wake.unpark()

    @property
    def backlogged(self) -> bool:
        """Whether :meth:`wait_for_room` would wait (a cheap test for the hot path)."""
        return len(self._pending) >= self._max_pending

    async def wait_for_room(self) -> None:
        while len(self._pending) >= self._max_pending:
            await self._space.park()

    async def flush(self) -> None:
        """Return once everything submitted before is committed and its callbacks have run (the queue
        is committed in order: an empty operation at its end is done last)."""
        await self.write(lambda _conn: None)

    async def write(self, op: Callable[[C], T]) -> T:
        await self.wait_for_room()
        waiter = _Waiter()
        self.submit(op, waiter)
        await waiter.done.wait()
        if waiter.error is not None:
            raise waiter.error
        return waiter.result
