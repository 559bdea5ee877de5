"""argon2id password hashing, always on a worker thread: a hash takes tens of milliseconds on purpose,
and the event loop must never wait for it."""

from __future__ import annotations

import trio
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from .config import ChatConfig


class Passwords:
    def __init__(self, config: ChatConfig) -> None:
        self._hasher = PasswordHasher(
            time_cost=config.argon2_time_cost,
            memory_cost=config.argon2_memory_kib,
            parallelism=config.argon2_parallelism,
        )
        self._limiter = trio.CapacityLimiter(config.hash_threads)
        # Verifying against this when a user does not exist makes "no such user" cost as much as
        # "wrong password", so response times do not reveal which usernames exist.
        self._dummy = self._hasher.hash("not a real password")

    async def hash(self, password: str) -> str:
        return await trio.to_thread.run_sync(self._hasher.hash, password, limiter=self._limiter)

    async def verify(self, stored_hash: str | None, password: str) -> bool:
        def check() -> bool:
            try:
                return self._hasher.verify(stored_hash or self._dummy, password) and stored_hash is not None
            except (VerifyMismatchError, VerificationError, InvalidHashError):
                return False

        return await trio.to_thread.run_sync(check, limiter=self._limiter)

    def needs_rehash(self, stored_hash: str) -> bool:
        try:
            return self._hasher.check_needs_rehash(stored_hash)
        except InvalidHashError:
            return True
