"""The admin key: made at random on first run, kept in ``admin_key.txt`` (mode 0600), or with a database
URL in the database (one key for the whole cluster); compared in constant time, never logged. A key
shorter than ``MIN_LENGTH`` is refused, in the file as in ``change_admin_key``: whoever guesses it becomes
an admin."""

from __future__ import annotations

import hmac
import logging
import os
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

log = logging.getLogger("utuvox.server")
MIN_LENGTH = 16


class AdminKeyError(ValueError):
    """The admin key file holds a key too short to keep."""


class AdminKey:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._key = ""
        self.created = False  # whether load_or_create made the key (the one time it is shown)
        self.where = str(path)  # where it is kept, for the log

    async def load(self) -> str:
        return await trio.to_thread.run_sync(self.load_or_create)

    def load_or_create(self) -> str:
        """Read the key, or make one on first run. Synchronous: called once at startup."""
        if self.path.exists():
            mode = self.path.stat().st_mode & 0o777
            if mode & 0o077:
                log.warning("%s can be read by other users of this machine (mode %o); chmod 600 it", self.path, mode)
            self._key = self.path.read_text(encoding="utf-8").strip()
            if self._key and len(self._key) < MIN_LENGTH:
                raise AdminKeyError(f"the admin key in {self.path} is shorter than {MIN_LENGTH} characters; "
                                    "put a longer one there, or delete the file to have one made")
        if not self._key:
            self._key = secrets.token_urlsafe(24)
            self._write(self._key)
            self.created = True
        return self._key

    def _write(self, key: str) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(key + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        os.chmod(self.path, 0o600)

    def matches(self, candidate: str) -> bool:
        return bool(self._key) and hmac.compare_digest(candidate.encode(), self._key.encode())

    async def change(self, new_key: str) -> None:
        await trio.to_thread.run_sync(self._write, new_key)
        self._key = new_key


ADMIN_KEY_SETTING = "admin_key"


class StoredAdminKey(AdminKey):
    """The key in the database: ``setting(name, default)`` reads it (storing ``default`` if there is none
    yet: the first node to start makes the key, and is the one that shows it), ``set_setting(name, value)``
    changes it."""

    def __init__(self, setting: Callable[[str, str], Awaitable[tuple[str, bool]]],
                 set_setting: Callable[[str, str], Awaitable[None]]) -> None:
        super().__init__(Path("-"))
        self.where = "the database"
        self._setting = setting
        self._set_setting = set_setting

    async def load(self) -> str:
        key, made = await self._setting(ADMIN_KEY_SETTING, secrets.token_urlsafe(24))
        self._key = key
        self.created = self.created or made
        return self._key

    async def change(self, new_key: str) -> None:
        await self._set_setting(ADMIN_KEY_SETTING, new_key)
        self._key = new_key
