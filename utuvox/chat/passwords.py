"""argon2id password hashing, always on a worker thread: a hash takes tens of milliseconds on purpose,
and the event loop must never wait for it. The threads run at the lowest priority (see low_priority)."""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from .config import ChatConfig
from .low_priority import LowPriorityThreads


class Passwords:
    def __init__(self, config: ChatConfig) -> None:
        self._hasher = PasswordHasher(
            time_cost=config.argon2_time_cost,
            memory_cost=config.argon2_memory_kib,
            parallelism=config.argon2_parallelism,
        )
        self._threads = LowPriorityThreads(config.hash_threads, "argon2")
        # Verifying against this when a user does not exist makes "no such user" cost as much as
        # "wrong password", so response times do not reveal which usernames exist.
        self._dummy = self._hasher.hash("not a real password")

    async def hash(self, password: str) -> str:
        return await self._threads.run(self._hasher.hash, password)

    async def verify(self, stored_hash: str | None, password: str) -> bool:
        def check() -> bool:
            try:
                return self._hasher.verify(stored_hash or self._dummy, password) and stored_hash is not None
            except (VerifyMismatchError, VerificationError, InvalidHashError):
                return False

        return await self._threads.run(check)

    def needs_rehash(self, stored_hash: str) -> bool:
        try:
            return self._hasher.check_needs_rehash(stored_hash)
        except InvalidHashError:
            return True
