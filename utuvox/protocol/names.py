"""Names of users and rooms: what is allowed, and the key that makes them unique regardless of case.

Names are ASCII letters, digits, ``_``, ``-`` and ``.``, starting with a letter or digit, 1 to 32
characters. Keeping names ASCII means no Unicode confusables (an "admin" spelt with a Cyrillic "a") and no
control characters or escapes can ever appear where a name is printed.

New user names (registering, adding a user) may not be one of the :data:`RESERVED` words: the words the
server's own text-mode lines start with, and the names of the server itself; new rooms may not take the
few names that would read as the server's bracketed lines (:data:`RESERVED_ROOMS`). A text-mode line
``[ts] Error: ...`` or ``[ts] [private] ...`` is then always the server's: a user's line is
``[ts] name: text`` (or ``[ts] [room] name: text``) and no user or room can be called ``Error``.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, StringConstraints

NAME_MAX = 32
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,31}$"
_NAME_RE = re.compile(NAME_PATTERN)


RESERVED = frozenset({
    # the server itself, and those who speak for it
    "server", "admin", "admins", "administrator", "system", "utuvox", "operator", "console", "notice",
    # the first word of the server's text-mode lines ("Error: ...", "User bob joined...", "Uptime: ...")
    "error", "disconnected", "goodbye", "pong", "welcome", "registration", "login", "room", "rooms", "chat",
    "user", "users", "username", "you", "your", "available", "no", "online", "password", "private",
    "announcement", "uptime", "connections", "connected", "messages", "message", "sent", "session", "sessions",
    "tailing", "stopped", "file", "files", "upload", "download", "help", "warning", "info",
})


# A room's name shows as ``[room] bob: text``: it must not read as the server's ``[private]``,
# ``[ANNOUNCEMENT]`` or ``[admin]`` lines.
RESERVED_ROOMS = frozenset({"private", "announcement", "admin", "server", "system", "utuvox"})


def is_reserved(name: str) -> bool:
    return name.lower() in RESERVED


def is_valid_name(name: str) -> bool:
    return bool(_NAME_RE.match(name)) and not name.endswith("\n")


def name_key(name: str) -> str:
    """The case-folded form under which a name is unique (``Bob`` and ``bob`` are one user)."""
    return name.lower()


def _check_name(value: str) -> str:
    if not is_valid_name(value):
        raise ValueError(
            "names are 1 to 32 characters: letters, digits, '_', '-' and '.', starting with a letter or digit"
        )
    return value


def _check_new_name(value: str) -> str:
    if is_reserved(value):
        raise ValueError(f"'{value}' is reserved for the server; pick another name")
    return value


Name = Annotated[str, AfterValidator(_check_name)]
def _check_new_room(value: str) -> str:
    if value.lower() in RESERVED_ROOMS:
        raise ValueError(f"'{value}' is reserved for the server; pick another name")
    return value


NewName = Annotated[str, AfterValidator(_check_name), AfterValidator(_check_new_name)]  # not a reserved word
NewRoomName = Annotated[str, AfterValidator(_check_name), AfterValidator(_check_new_room)]
Password = Annotated[str, StringConstraints(min_length=1, max_length=1024)]
