"""What the client remembers about its rooms so that a reconnect loses nothing and repeats nothing.

Every room event carries the room's sequence number. The tracker keeps, per room, the highest number
handed to the application (the *high-water mark*): anything at or below it is a duplicate. While a room
is *catching up* (just rejoined after a reconnect, or joined with ``since=``), live events for it are
held back, the gap is fetched from history, and then both are released in order, each once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from utuvox.protocol import Reply, Request
from utuvox.protocol.core import History, HistoryPage, Joined

# The largest page the server serves; fewer round trips when a long gap is filled.
PAGE = 500


def room_key(name: str) -> str:
    return name.lower()


def event_seq(frame: Any) -> tuple[str, int] | None:
    """``(room key, seq)`` of a room event, ``None`` for anything else (private messages, replies...)."""
    room = getattr(frame, "room", None)
    seq = getattr(frame, "seq", None)
    if isinstance(room, str) and isinstance(seq, int) and not isinstance(frame, Reply):
        return room_key(room), seq
    return None


class RoomTracker:
    def __init__(self) -> None:
        self.rooms: list[str] = []  # in the order joined; the last is the current room, as on the server
        self.seen: dict[str, int] = {}
        self._held: dict[str, list[Any]] = {}

    @property
    def current(self) -> str | None:
        return self.rooms[-1] if self.rooms else None

    def entered(self, room: str) -> None:
        key = room_key(room)
        self.rooms = [r for r in self.rooms if room_key(r) != key]
        self.rooms.append(room)

    def joined(self, reply: Joined) -> None:
        """A join the application made: live events start after what the reply's history shows."""
        self.entered(reply.room)
        if reply.history:
            key = room_key(reply.room)
            self.seen[key] = max(self.seen.get(key, 0), reply.history[-1].seq)

    def left(self, room: str) -> None:
        key = room_key(room)
        self.rooms = [r for r in self.rooms if room_key(r) != key]
        self._held.pop(key, None)

    def admit(self, frame: Any) -> bool:
        """Whether to hand ``frame`` to the application now (it may be a duplicate, or held back)."""
        where = event_seq(frame)
        if where is None:
            return True
        key, seq = where
        held = self._held.get(key)
        if held is not None:
            held.append(frame)
            return False
        if seq <= self.seen.get(key, 0):
            return False
        self.seen[key] = seq
        return True

    def hold_all(self) -> None:
        """A new connection: every room catches up before its live events are let through."""
        self._held = {room_key(r): [] for r in self.rooms}

    def hold(self, room: str, after: int | None = None) -> None:
        key = room_key(room)
        self._held[key] = []
        if after is not None:
            self.seen[key] = after

    def is_held(self, room: str) -> bool:
        return room_key(room) in self._held

    def release(self, room: str, missed: list[Any]) -> list[Any]:
        """End the catch-up of ``room``: the events to hand over, oldest first, each once."""
        key = room_key(room)
        held = self._held.pop(key, [])
        out = []
        high = self.seen.get(key, 0)
        for event in sorted([*missed, *held], key=lambda e: e.seq):
            if event.seq > high:
                high = event.seq
                out.append(event)
        self.seen[key] = high
        return out


async def fetch_after(call: Callable[[Request], Awaitable[Reply]], joined: Joined, after: int) -> list[Any]:
    """The room's events with ``seq > after``, oldest first: what the join reply shows, plus older pages
    of history if the gap reaches further back than that."""
    events = [e for e in joined.history if e.seq > after]
    lowest = joined.history[0].seq if joined.history else joined.last_seq + 1
    while lowest > after + 1:
        page = await call(History(room=joined.room, before=lowest, limit=PAGE))
        if not isinstance(page, HistoryPage) or not page.events:
            break
        events = [e for e in page.events if e.seq > after] + events
        lowest = page.events[0].seq
        if not page.more:
            break
    return events
