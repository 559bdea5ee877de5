"""The thread a store's commits run on: one thread for the committer task's whole life, fed one job at a
time, which wakes the task straight from the thread when the job is done.

``trio.to_thread.run_sync`` does more per call than a commit of one message needs: a checkpoint, the
limiter, a copy of the context, naming the thread (two system calls) and a pass through a second task
switch before the committer runs again; on a lone message that was about as much time as the commit
itself. Here a job is a queue put, and its end is one ``run_sync_soon`` that reschedules the waiting
task. The committer task starts the thread and waits for it to end when it ends itself, so no thread
outlives the task that owns it.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import outcome
import trio

T = TypeVar("T")


class WriterThread:
    """One thread running jobs in the order given; :meth:`run` is called by one task at a time."""

    def __init__(self, name: str, *, nice: int = 0) -> None:
        self._name = name
        # Raised on the thread when it starts (Linux sets it per thread): work that can wait (a checkpoint)
        # then takes the core only when the event loop does not want it.
        self._nice = nice
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._token: trio.lowlevel.TrioToken | None = None

    @property
    def running(self) -> bool:
        return self._token is not None

    @asynccontextmanager
    async def started(self) -> AsyncIterator[WriterThread]:
        """Run the thread while the block runs; on the way out, wait for it to finish its jobs and end."""
        thread = threading.Thread(target=self._work, name=self._name, daemon=True)
        thread.start()
        self._token = trio.lowlevel.current_trio_token()
        try:
            yield self
        finally:
            self._token = None
            self._jobs.put(None)
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(thread.join)

    def _work(self) -> None:
        if self._nice:
            with contextlib.suppress(OSError, AttributeError):
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self._nice)
        while (job := self._jobs.get()) is not None:
            job()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the thread; its result or its exception here. The job is not interrupted:
        a cancelled caller still waits for its end (a transaction is finished, not abandoned)."""
        token = self._token
        assert token is not None, "the writer thread is not running"
        task = trio.lowlevel.current_task()

        def job() -> None:
            result = outcome.capture(fn, *args)
            with contextlib.suppress(trio.RunFinishedError):  # the event loop is gone: nobody waits
                token.run_sync_soon(trio.lowlevel.reschedule, task, result)

        self._jobs.put(job)
        value: T = await trio.lowlevel.wait_task_rescheduled(lambda _raise_cancel: trio.lowlevel.Abort.FAILED)
        return value
