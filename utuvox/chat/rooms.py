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
    key: str = field(init=False)  # the name in lower case: how rooms are found and followed
    recent: deque[Wire] = field(init=False)  # the newest events, as they went out
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
        self.key = self.name.lower()  # a room keeps its name: read on every event, made once
        self.recent = deque(maxlen=self.recent_max)
        self.known = max(self.known, self.delivered)

    def merge_loaded(self, wires: list[Wire]) -> None:
        """Fold events read from the store into the cache: anything published while they were being
        read is already in it, so keep one of each sequence number, in order."""
        by_seq = {w.seq: w for w in wires}
        by_seq.update((w.seq, w) for w in self.recent)
        self.recent = deque((by_seq[s] for s in sorted(by_seq)), maxlen=self.recent_max)
        self.loaded = True

    def latest(self, count: int) -> list[RoomEventUnion]:
        """The newest ``count`` events in memory, oldest first."""
        recent = self.recent
        return [w.event for w in list(recent)[max(0, len(recent) - count):]] if count > 0 else []  # type: ignore[misc]

    def page(self, before: int | None, limit: int) -> list[RoomEventUnion] | None:
        """A page from memory, or ``None`` if memory does not hold all of it."""
        if not self.loaded:
            return None
        wires = list(self.recent)
        if before is not None:
            wires = [w for w in wires if w.seq < before]
        if len(wires) >= limit:
            return [w.event for w in wires[-limit:]]  # type: ignore[misc]
        # Memory holds fewer than asked: that is the whole answer only if nothing older exists.
        if not self.recent or self.recent[0].seq == 1 or len(self.recent) < (self.recent.maxlen or 0):
            return [w.event for w in wires]  # type: ignore[misc]
        return None
