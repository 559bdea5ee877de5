"""Worker threads at the lowest CPU priority, for work that is slow on purpose (password hashing).

``trio.to_thread`` threads run at the event loop's priority, so on a busy core a burst of argon2 hashes
takes the CPU from the loop for tens of milliseconds and every room's latency jumps. Here the hashing
threads are niced to 19 (on Linux, per thread): the kernel runs them only when the loop does not want
the core, and logins, which are slow anyway, absorb the wait instead of everyone's messages.

They are dedicated threads rather than ``trio.to_thread`` with a limiter because a nice value cannot be
taken back: an unprivileged thread may raise its own but never lower it again, so a niced thread handed
back to trio's shared cache would later run the store's and the file transfers' work at the lowest
priority too. They belong to :meth:`LowPriorityThreads.run`, a task in the server's nursery that starts
them and, when cancelled, stops them and waits until they have exited.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import outcome
import trio

T = TypeVar("T")

_Job = tuple[Callable[..., Any], tuple[Any, ...], trio.lowlevel.TrioToken, Callable[[outcome.Outcome[Any]], None]]


class LowPriorityThreads:
    def __init__(self, threads: int, name: str) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()  # None: a thread is to exit
        self._count = max(1, threads)
        self._name = name
        self.running = False  # the threads are up and take jobs
        # Without the threads (before run, after it, or in a test that builds the chat layer alone) jobs
        # go to trio's own worker threads, at normal priority and as many at once as there would be threads.
        self._fallback = trio.CapacityLimiter(self._count)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the threads; when cancelled, let each finish its job in hand and wait until all have exited."""
        # Daemon threads only so that a process that dies without unwinding this task is not kept alive
        # by them; in every orderly exit they are joined below.
        threads = [threading.Thread(target=self._work, name=f"{self._name}-{i}", daemon=True)
                   for i in range(self._count)]
        for thread in threads:
            thread.start()
        self.running = True
        try:
            task_status.started()
            await trio.sleep_forever()
        finally:
            self.running = False
            for _ in threads:
                self._jobs.put(None)  # after the jobs queued already: those are finished first

            def join() -> None:
                for thread in threads:
                    thread.join()

            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(join)  # the wait for a hash in hand stays off the loop

    def _work(self) -> None:
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        while (job := self._jobs.get()) is not None:
            fn, args, token, deliver = job
            result = outcome.capture(fn, *args)
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(deliver, result)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on one of the threads and return its result. If the caller is cancelled,
        the job still finishes (a hash cannot be interrupted) and its result is dropped."""
        if not self.running:
            return await trio.to_thread.run_sync(fn, *args, limiter=self._fallback)
        done = trio.Event()
        box: list[outcome.Outcome[T]] = []

        def deliver(result: outcome.Outcome[T]) -> None:
            box.append(result)
            done.set()

        self._jobs.put((fn, args, trio.lowlevel.current_trio_token(), deliver))
        await done.wait()
        return box[0].unwrap()
