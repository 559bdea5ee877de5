"""argon2id password hashing, always on a worker thread: a hash takes tens of milliseconds on purpose,
and the event loop must never wait for it. The threads run at the lowest priority (see low_priority) and
belong to :meth:`Passwords.run`, which the server runs in its nursery.

Hashing is shared fairly between addresses: the hashing threads take turns round robin over the
addresses that have hashes waiting, so a thousand registrations queued from one address delay another
address's login by a hash or two, not by a thousand.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import TypeVar

import trio
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from .config import ChatConfig
from .limits import address_key
from .low_priority import LowPriorityThreads

T = TypeVar("T")


class FairTurns:
    """``slots`` turns at once, given round robin over the keys that wait, first come first served within
    a key."""

    def __init__(self, slots: int) -> None:
        self.free = slots
        self.waiting: OrderedDict[str, deque[trio.Event]] = OrderedDict()

    async def acquire(self, key: str) -> None:
        if self.free and not self.waiting:
            self.free -= 1
            return
        turn = trio.Event()
        self.waiting.setdefault(key, deque()).append(turn)
        try:
            await turn.wait()
        except BaseException:
            if turn.is_set():
                self.release()  # handed a turn just as it was cancelled: pass it on
            else:
                queue = self.waiting[key]
                queue.remove(turn)
                if not queue:
                    del self.waiting[key]
            raise

    def release(self) -> None:
        if not self.waiting:
            self.free += 1
            return
        key, queue = next(iter(self.waiting.items()))
        turn = queue.popleft()
        if queue:
            self.waiting.move_to_end(key)  # this key had its turn: the others come first
        else:
            del self.waiting[key]
        turn.set()  # the turn passes on directly


class Passwords:
    def __init__(self, config: ChatConfig) -> None:
        self._hasher = PasswordHasher(
            time_cost=config.argon2_time_cost,
            memory_cost=config.argon2_memory_kib,
            parallelism=config.argon2_parallelism,
        )
        self._threads = LowPriorityThreads(config.hash_threads, "argon2")
        self._turns = FairTurns(config.hash_threads)
        # Verifying against this when a user does not exist makes "no such user" cost as much as
        # "wrong password", so response times do not reveal which usernames exist. Made on a hashing
        # thread (see _dummy_hash), never on the event loop.
        self._dummy: str | None = None
        self._dummy_lock = threading.Lock()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The hashing threads' lifetime: they start here and are joined when this task is cancelled."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self._threads.run)
            nursery.start_soon(self._threads.call, self._dummy_hash)  # ready before the first unknown name
            task_status.started()

    def _dummy_hash(self) -> str:
        """The hash that stands in for a missing account's (called on a hashing thread)."""
        with self._dummy_lock:
            if self._dummy is None:
                self._dummy = self._hasher.hash("not a real password")
            return self._dummy

    async def _run(self, who: str, fn: Callable[..., T], *args: object) -> T:
        await self._turns.acquire(address_key(who))
        try:
            return await self._threads.call(fn, *args)
        finally:
            self._turns.release()

    async def hash(self, password: str, *, who: str = "") -> str:
        """The hash of ``password``; ``who`` is the address asking (hashes are shared fairly between them)."""
        return await self._run(who, self._hasher.hash, password)

    async def verify(self, stored_hash: str | None, password: str, *, who: str = "") -> bool:
        def check() -> bool:
            try:
                return self._hasher.verify(stored_hash or self._dummy_hash(), password) and stored_hash is not None
            except (VerifyMismatchError, VerificationError, InvalidHashError):
                return False

        return await self._run(who, check)

    def needs_rehash(self, stored_hash: str) -> bool:
        try:
            return self._hasher.check_needs_rehash(stored_hash)
        except InvalidHashError:
            return True
