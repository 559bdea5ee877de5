"""Delivery in sequence order: each room's committed events reach this node's members once, in seq order.

The store numbers events inside the commit, so on one node (SQLite, or PostgreSQL alone) commit
callbacks arrive in seq order and every event goes straight out. With several nodes writing one room,
this node's own commits leave gaps where other nodes' events belong; those events are read from the
store (the truth), never taken from the broker, which only rings the doorbell: "room R has reached seq
N". A local event beyond a gap waits in ``room.waiting`` until the gap is filled, and its sender's ``ok``
waits with it, so a session still reads its own writes (its ``ok`` never overtakes its echo).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from utuvox.protocol import Event
from utuvox.protocol.stored import CURRENT_VERSION, load_event
from utuvox.store import Store, StoredEvent, StoreError

from .rooms import Delivered, Room
from .wire import Wire

log = logging.getLogger("utuvox.delivery")

FETCH_ROWS = 1000  # events read from the store per catch-up query
RETRY_DELAY = 0.5  # seconds before a failed catch-up query is tried again


def stored_wire(stored: StoredEvent) -> Wire:
    """The wire of an event read back from the store (its body is the JSON members get, unless it is of an
    older schema version: then it is encoded again)."""
    event = load_event(stored.version, stored.body)
    if not isinstance(event, Event):
        raise ValueError(f"stored row {stored.seq} is not an event")
    if stored.version != CURRENT_VERSION:
        return Wire(event)
    return Wire.encoded(event, stored.body.encode() + b"\n")


class InOrder:
    """Publishes committed room events in seq order; fills gaps from the store in :meth:`run`."""

    def __init__(self, store: Store, publish: Callable[[Room, Wire], None],
                 wanted: Callable[[Room], bool] = lambda _room: True) -> None:
        self.store = store
        self.publish = publish
        # Whether anybody here would get the room's events; if not, they are not read at all (see _skip).
        self.wanted = wanted
        self.skipped = 0
        self._behind: dict[int, Room] = {}  # rooms with events committed but not delivered here, by id
        self._wake = trio.lowlevel.ParkingLot()
        self.fetches = 0  # catch-up queries, for statistics

    def committed(self, room: Room, seq: int, wire: Wire, on_done: Delivered) -> None:
        """This node committed ``wire`` as ``seq``: publish it now if it is next, else once the gap is filled."""
        if seq == room.delivered + 1 and not room.waiting:
            room.delivered = seq
            if seq > room.known:
                room.known = seq
            self._out(room, wire, on_done)
        elif seq <= room.delivered:
            on_done(seq, None)  # already read back from the store and published
        else:
            room.waiting[seq] = (wire, on_done)
            self._advance(room)

    def heard(self, room: Room, last_seq: int) -> None:
        """Another node says ``room`` has committed events up to ``last_seq``."""
        if last_seq > room.known:
            room.known = last_seq
        if room.known > room.delivered and not self._skip(room):
            self._fall_behind(room)

    def _skip(self, room: Room) -> bool:
        """Nobody here is in the room and nothing of this node waits in it: rather than reading events
        nobody would get, forget the recent ones; the next join reads them from the store."""
        if room.waiting or room.load_lock.locked() or self.wanted(room):
            return False  # (a room being loaded for a join must go on from where the load read to)
        room.delivered = room.known
        room.loaded = False
        room.recent.clear()
        self.skipped += 1
        return True

    def forget(self, room: Room) -> None:
        """The room is gone: whoever waits on one of its events is told so."""
        self._behind.pop(room.id, None)
        waiting, room.waiting = room.waiting, {}
        for seq, (_wire, on_done) in sorted(waiting.items()):
            on_done(seq, StoreError(f"room {room.name} was deleted"))

    def _out(self, room: Room, wire: Wire, on_done: Delivered | None = None) -> None:
        """Publish the room's next event, then tell whoever waits on it. The event is committed whatever
        happens here: a failure to publish is logged and its sender still gets its answer, rather than a
        committed message going unacknowledged and its session waiting for it for ever."""
        try:
            self.publish(room, wire)
        except Exception:
            log.exception("room %s: publishing event %d failed", room.name, room.delivered)
        if on_done is not None:
            try:
                on_done(room.delivered, None)
            except Exception:
                log.exception("room %s: answering the sender of event %d failed", room.name, room.delivered)

    def _advance(self, room: Room) -> None:
        waiting = room.waiting
        while (item := waiting.pop(room.delivered + 1, None)) is not None:
            room.delivered += 1
            wire, on_done = item
            self._out(room, wire, on_done)
        if waiting:
            room.known = max(room.known, max(waiting))
        if room.known > room.delivered:
            self._fall_behind(room)

    def _fall_behind(self, room: Room) -> None:
        if room.id not in self._behind:
            self._behind[room.id] = room
            self._wake.unpark()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Catch up on rooms that fell behind, one query at a time (runs in the server's nursery)."""
        task_status.started()
        while True:
            if not self._behind:
                await self._wake.park()
                continue
            room_id = next(iter(self._behind))
            room = self._behind.pop(room_id)
            if room.deleted:
                self.forget(room)
                continue
            if self._skip(room):
                continue
            try:
                rows = await self.store.events_after(room.id, room.delivered, FETCH_ROWS)
            except StoreError as exc:
                log.warning("could not catch up on room %s: %s", room.name, exc)
                self._behind[room.id] = room
                await trio.sleep(RETRY_DELAY)
                continue
            self.fetches += 1
            if not rows and not room.waiting:
                room.known = room.delivered  # the store is the truth: nothing more is committed
                continue
            self._catch_up(room, rows)
            if not rows:
                await trio.sleep(RETRY_DELAY)  # a local event waits beyond a gap no reader sees yet

    def _catch_up(self, room: Room, rows: list[StoredEvent]) -> None:
        for row in rows:
            if room.deleted:
                return
            if row.seq <= room.delivered:
                continue  # published meanwhile by a local commit
            if row.seq != room.delivered + 1:
                break  # the store answers a gap-free prefix; anything else waits for the next query
            item = room.waiting.pop(row.seq, None)
            room.delivered = row.seq
            if item is not None:
                self._out(room, *item)
            else:
                try:
                    wire = stored_wire(row)
                except ValueError:
                    log.error("room %s: stored event %d cannot be read; skipped", room.name, row.seq)
                    continue
                self._out(room, wire)
        self._advance(room)
