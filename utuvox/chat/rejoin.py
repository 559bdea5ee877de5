"""Server restarts are not people leaving and coming back.

When the server stops, its members do not leave their rooms: no leave is stored for them (a SIGKILL
stores none either). Who was in a room at the last stop is read back from the room's history: a user
whose newest join or leave from before this start is a join. When such a user's session comes back
(a client reconnecting and rejoining) within ``rejoin_grace`` seconds of the start, the join is silent:
nothing is stored, nothing is shown. Whoever has not come back by then gets the leave they never had,
stored once the grace is over, so history still says who left.

A person who leaves while the server runs (``/leave``, closing the client) is recorded as before.
"""

from __future__ import annotations

from collections.abc import Iterable

import trio

from utuvox.protocol import core as p

from .clock import Clock
from .rooms import Room


class Rejoins:
    def __init__(self, grace: float, clock: Clock | None = None) -> None:
        self.grace = grace
        self.clock = clock or Clock()
        self._deadline: float | None = None
        # Per room id: the first sequence number of this run. Events below it happened before the start.
        self._first_seq: dict[int, int] = {}

    def started(self, rooms: Iterable[Room]) -> None:
        self._deadline = self.clock.now() + self.grace
        self._first_seq = {room.id: room.delivered + 1 for room in rooms}

    @property
    def open(self) -> bool:
        return self._deadline is not None and self.clock.now() < self._deadline

    async def wait_closed(self) -> None:
        if self._deadline is not None:
            await trio.sleep_until(self._deadline)  # the clock's now() is trio's: the deadline is in its time

    def forget(self) -> None:
        """After the absentees' leaves are stored: every join from now on is an ordinary one."""
        self._deadline = None
        self._first_seq = {}

    def _last_stop_members(self, room: Room) -> dict[str, str]:
        """Users (key -> name) in ``room`` when the server last stopped, from its loaded recent events."""
        first = self._first_seq.get(room.id)
        if first is None:
            return {}
        latest: dict[str, bool] = {}
        names: dict[str, str] = {}
        for wire in room.recent:
            if wire.kind != "join" and wire.kind != "leave":
                continue  # (a message's model is not made for this)
            event = wire.event
            if isinstance(event, p.JoinEvent | p.LeaveEvent):
                key = event.user.lower()
                names[key] = event.user
                # An event of this run also ends the claim: whoever left or joined since is back to normal.
                latest[key] = isinstance(event, p.JoinEvent) and event.seq < first
        return {key: names[key] for key, present in latest.items() if present}

    def is_resume(self, room: Room, user_key: str) -> bool:
        """Whether a join of ``user_key`` to ``room`` (loaded) now is a session coming back after a restart."""
        return self.open and user_key in self._last_stop_members(room)

    def absentees(self, room: Room) -> list[str]:
        """Names of those who were in ``room`` (loaded) at the last stop and have not been back since."""
        return sorted(self._last_stop_members(room).values())
