"""Fan-out: who is subscribed to which room, and delivering an event to all of them.

The chat layer talks to this interface only, so that several server processes can later share rooms
through Redis or NATS pub/sub behind the same three calls. ``LocalBus`` is the in-process one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Protocol

from utuvox.protocol import Code

from .session import Session
from .wire import Wire

log = logging.getLogger("utuvox.bus")


class Bus(Protocol):
    def subscribe(self, room_key: str, session: Session) -> None: ...
    def unsubscribe(self, room_key: str, session: Session) -> None: ...
    def publish(self, room_key: str, wire: Wire) -> None: ...
    def members(self, room_key: str) -> Iterable[Session]: ...
    def drop_room(self, room_key: str) -> list[Session]: ...


class LocalBus:
    def __init__(self) -> None:
        # Each member's bound ``deliver``, kept so that publishing is one call per member with no lookups;
        # dicts keep insertion order and make removal O(1).
        self._rooms: dict[str, dict[Session, Callable[[Wire], None]]] = {}
        self.deliveries = 0

    def subscribe(self, room_key: str, session: Session) -> None:
        self._rooms.setdefault(room_key, {})[session] = session.peer.deliver

    def unsubscribe(self, room_key: str, session: Session) -> None:
        members = self._rooms.get(room_key)
        if members is not None:
            members.pop(session, None)
            if not members:
                del self._rooms[room_key]

    def publish(self, room_key: str, wire: Wire) -> None:
        members = self._rooms.get(room_key)
        if not members:
            return
        # A delivery may close a slow member, which unsubscribes it: iterate over a snapshot.
        targets = tuple(members.values())
        self.deliveries += len(targets)
        # The loop stays bare (a try per member, or counting where it is, costs a fifth more). If a
        # delivery raises, ``deliver`` is the one that did, and the loop goes on from the next member.
        remaining = iter(targets)
        while True:
            try:
                for deliver in remaining:
                    deliver(wire)
                return
            except Exception:
                # One member's failure must not cost the others the event; the member, who missed it,
                # is let go rather than left with a gap in what it saw.
                for session, bound in tuple(members.items()):
                    if bound == deliver:
                        log.exception("delivering to session %d failed; closing it", session.id)
                        session.peer.close("The server could not deliver an event to you.", Code.INTERNAL)

    def members(self, room_key: str) -> Iterable[Session]:
        return tuple(self._rooms.get(room_key, ()))

    def drop_room(self, room_key: str) -> list[Session]:
        return list(self._rooms.pop(room_key, {}))
