"""What the other nodes of a cluster hold, as the chat layer sees it: their sessions (presence) and a way
to tell them things (bans, kicks, private messages...).

One process alone is :class:`SingleNode`: nobody elsewhere, nothing to tell. ``utuvox.cluster`` gives
the real one, fed by a broker. The chat layer calls these methods unconditionally, so the single-node
path has no branches of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from .session import Session


@dataclass(frozen=True, slots=True)
class RemoteSession:
    """A session on another node, as its node last told (the fields of ``who``)."""

    node: str
    id: int
    user: str | None
    is_admin: bool
    is_bot: bool
    transport: str
    address: str
    rooms: tuple[str, ...]
    connected_at: str
    operator: str | None = None
    nick: str | None = None  # on IRC: the nick, where the session has one

    def holds_nick(self, key: str) -> bool:
        """Whether this session is on IRC as ``key`` (lower case). (A guest's name is its nick; an account's
        name is the account's wherever it is used, which the store says.)"""
        return self.nick is not None and self.nick.lower() == key

    @property
    def user_key(self) -> str | None:
        return self.user.lower() if self.user else None


# Called with what another node said; may return an awaitable, which then runs in the background.
Handler = Callable[[dict[str, Any]], Any]


class Elsewhere(Protocol):
    node: str  # this node's name

    def nodes(self) -> list[str]:
        """Every live node's name, this one's included."""

    def sessions(self) -> list[RemoteSession]:
        """Every live session on the other nodes."""

    def sessions_of(self, user_key: str) -> list[RemoteSession]: ...

    def in_room(self, room_key: str, user_key: str) -> bool:
        """Whether the user has a session in the room on another node."""

    def room_members(self, room_key: str) -> list[RemoteSession]: ...

    def changed(self, session: Session) -> None:
        """A local session signed in, joined or left a room."""

    def gone(self, session: Session) -> None:
        """A local session ended."""

    def tell(self, kind: str, **fields: Any) -> None:
        """Send ``fields`` to every other node, where the handler registered for ``kind`` gets them."""

    def on(self, kind: str, handler: Handler) -> None:
        """Call ``handler(fields)`` for what other nodes tell of ``kind``."""


class SingleNode:
    """No other node: the default."""

    def __init__(self, node: str = "") -> None:
        self.node = node

    def nodes(self) -> list[str]:
        return [self.node] if self.node else []

    def sessions(self) -> list[RemoteSession]:
        return []

    def sessions_of(self, user_key: str) -> list[RemoteSession]:
        return []

    def in_room(self, room_key: str, user_key: str) -> bool:
        return False

    def room_members(self, room_key: str) -> list[RemoteSession]:
        return []

    def changed(self, session: Session) -> None:
        pass

    def gone(self, session: Session) -> None:
        pass

    def tell(self, kind: str, **fields: Any) -> None:
        pass

    def on(self, kind: str, handler: Handler) -> None:
        pass
