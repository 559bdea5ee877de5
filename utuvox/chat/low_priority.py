"""Worker threads at the lowest CPU priority, for work that is slow on purpose (password hashing).

``trio.to_thread`` threads run at the event loop's priority, so on a busy core a burst of argon2 hashes
takes the CPU from the loop for tens of milliseconds and every room's latency jumps. Here the hashing
threads are niced to 19 (on Linux, per thread): the kernel runs them only when the loop does not want
the core, and logins, which are slow anyway, absorb the wait instead of everyone's messages.
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


class LowPriorityThreads:
    def __init__(self, threads: int, name: str) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...], trio.lowlevel.TrioToken,
                                            Callable[[outcome.Outcome[Any]], None]]] = queue.SimpleQueue()
        self._count = threads
        self._name = name
        self._started = False
        self._lock = threading.Lock()

    def _start(self) -> None:
        with self._lock:
            if self._started:
                return
            for i in range(self._count):
                threading.Thread(target=self._work, name=f"{self._name}-{i}", daemon=True).start()
            self._started = True

    def _work(self) -> None:
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        while True:
            fn, args, token, deliver = self._jobs.get()
            result = outcome.capture(fn, *args)
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(deliver, result)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on one of the threads and return its result. If the caller is cancelled,
        the job still finishes (a hash cannot be interrupted) and its result is dropped."""
        if not self._started:
            self._start()
        done = trio.Event()
        box: list[outcome.Outcome[T]] = []

        def deliver(result: outcome.Outcome[T]) -> None:
            box.append(result)
            done.set()

        self._jobs.put((fn, args, trio.lowlevel.current_trio_token(), deliver))
        await done.wait()
        return box[0].unwrap()
