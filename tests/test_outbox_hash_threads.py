"""The password hashing threads belong to a task: started by it, joined when it is cancelled, niced
to the lowest priority; without the task (a chat layer built alone) hashing still works, on trio's
worker threads. In process, no server."""

from __future__ import annotations

import os
import threading

import trio

from utuvox.chat.config import ChatConfig
from utuvox.chat.passwords import Passwords

FAST = ChatConfig(argon2_memory_kib=1024, argon2_time_cost=1)


def hashing_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("argon2-")]


async def test_the_threads_live_as_long_as_their_task_and_run_niced() -> None:
    passwords = Passwords(FAST)
    assert hashing_threads() == []  # making the chat layer starts no thread and hashes nothing
    async with trio.open_nursery() as nursery:
        await nursery.start(passwords.run)
        assert len(hashing_threads()) == FAST.hash_threads

        def niceness() -> int:
            return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

        assert await passwords._threads.call(niceness) == 19
        stored = await passwords.hash("correct horse")
        assert await passwords.verify(stored, "correct horse")
        assert not await passwords.verify(stored, "wrong")
        assert not await passwords.verify(None, "anything")  # no such user: checked against the stand-in
        nursery.cancel_scope.cancel()
    assert hashing_threads() == []  # joined, not left behind


async def test_without_its_task_hashing_runs_on_trio_threads() -> None:
    passwords = Passwords(FAST)
    stored = await passwords.hash("pw")
    assert await passwords.verify(stored, "pw")
    assert not await passwords.verify(None, "pw")
    assert hashing_threads() == []
