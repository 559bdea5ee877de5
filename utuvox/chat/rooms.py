"""A room's live state: how far its events have been delivered here, and its most recent events, kept in
memory so that a join (last 50) and the first pages of history never touch the disk.

The store numbers events (inside the commit); a room only follows: ``delivered`` is the last sequence
number handed to this node's members, and events committed out of that order wait in ``waiting``."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from utuvox.protocol.core import RoomEventUnion

from .wire import Wire

Delivered = Callable[[int, BaseException | None], None]


@dataclass(eq=False)
class Room:
    id: int
    name: str
    delivered: int  # the last sequence number published to this node's members
    recent_max: int
    recent: deque[RoomEventUnion] = field(init=False)
    loaded: bool = False  # whether `recent` holds everything up to the newest event
    load_lock: trio.Lock = field(default_factory=trio.Lock)
    deleted: bool = False
    # Events committed here beyond a gap, by seq, with whom to tell once they are published.
    waiting: dict[int, tuple[Wire, Delivered]] = field(default_factory=dict)
    known: int = 0  # the highest sequence number known to be committed (by any node)
    created_by: str | None = None  # the key of the user who created it (rooms per user are capped)
    topic: str | None = None
    topic_by: str | None = None
    topic_ts: float | None = None

    def __post_init__(self) -> None:
        self.recent = deque(maxlen=self.recent_max)
        self.known = max(self.known, self.delivered)

    @property
    def key(self) -> str:
        return self.name.lower()

    def remember(self, event: RoomEventUnion) -> None:
        self.recent.append(event)

    def merge_loaded(self, events: list[RoomEventUnion]) -> None:
        """Fold events read from the store into the cache: anything published while they were being
        read is already in it, so keep one of each sequence number, in order."""
        by_seq = {e.seq: e for e in events}
        by_seq.update((e.seq, e) for e in self.recent)
        self.recent = deque((by_seq[s] for s in sorted(by_seq)), maxlen=self.recent_max)
        self.loaded = True

    def page(self, before: int | None, limit: int) -> list[RoomEventUnion] | None:
        """A page from memory, or ``None`` if memory does not hold all of it."""
        if not self.loaded:
            return None
        events = list(self.recent)
        if before is not None:
            events = [e for e in events if e.seq < before]
        if len(events) >= limit:
            return events[-limit:]
        # Memory holds fewer than asked: that is the whole answer only if nothing older exists.
        if not self.recent or self.recent[0].seq == 1 or len(self.recent) < (self.recent.maxlen or 0):
            return events
        return None
