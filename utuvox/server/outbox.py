"""Each session's writer: a bounded queue drained by one task that sends everything queued in one write.

Events arrive as :class:`Wire` objects already encoded once for everybody; this side only picks the
bytes for its codec. A member whose queue fills up is cut off with a reason, so it never slows the
room; bulk transfers the session asked for itself use :meth:`send_paced` and wait instead.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Literal

import trio

from utuvox.chat.session import Session
from utuvox.chat.wire import Wire
from utuvox.protocol import Event, Reply, Request, json_codec, text_codec
from utuvox.protocol.core import Goodbye

from .connection import Connection

log = logging.getLogger("utuvox.server")

Codec = Literal["json", "text"]


class Outbox:
    def __init__(self, conn: Connection, codec: Codec, limit: int, *, paced_bytes: int = 1024 * 1024) -> None:
        self.conn = conn
        self.codec = codec
        self.limit = limit
        # send_paced waits while this many bytes are queued (or half the frame limit): bulk frames are
        # large (a download chunk is ~60 KB), so a frame count alone would let megabytes pile up.
        self.paced_bytes = paced_bytes
        self._queued_bytes = 0  # bytes of the encoded frames queued (shared events not counted)
        self.session: Session | None = None
        self._queue: deque[bytes | Wire] = deque()
        self._ready = trio.lowlevel.ParkingLot()
        self._space = trio.lowlevel.ParkingLot()
        self.closing = False
        self.cut_off: str | None = None
        self.scope: trio.CancelScope | None = None
        self.bytes_sent = 0

    # --- queueing (never blocks) ----------------------------------------------------------------

    def _put(self, item: bytes | Wire) -> None:
        if self.closing:
            return
        if len(self._queue) >= self.limit:
            self._overflow()
            return
        self._queue.append(item)
        if isinstance(item, bytes):
            self._queued_bytes += len(item)
        if len(self._queue) == 1:
            self._ready.unpark()

    def deliver(self, wire: Wire) -> None:
        self._put(wire)

    def send(self, frame: Reply | Event, request: Request | None = None) -> None:
        data = self._encode(frame, request)
        if data:
            self._put(data)

    async def send_paced(self, frame: Reply | Event) -> None:
        while (len(self._queue) >= self.limit // 2 or self._queued_bytes >= self.paced_bytes) and not self.closing:
            await self._space.park()
        self.send(frame)

    def close(self, reason: str, code: str) -> None:
        """Queue a goodbye, then close once everything before it is sent."""
        if self.closing:
            return
        self.send(Goodbye(reason=reason, code=code))
        self.closing = True
        self._ready.unpark()

    def finish(self) -> None:
        """Accept nothing more; the writer returns once the queue is empty."""
        self.closing = True
        self._ready.unpark()

    def _overflow(self) -> None:
        who = self.session.user.name if self.session and self.session.user else "anonymous"
        log.warning("cutting off slow client %s at %s: %d frames queued", who, self.conn.address, len(self._queue))
        self.cut_off = "slow consumer"
        self.closing = True
        self._queue.clear()
        self._queued_bytes = 0
        if self.scope is not None:
            self.scope.cancel()

    # --- encoding -------------------------------------------------------------------------------

    def _current_room(self) -> str | None:
        return self.session.current_room if self.session else None

    def _encode(self, frame: Reply | Event, request: Request | None) -> bytes:
        if self.codec == "json":
            return json_codec.encode(frame)
        return text_codec.render(frame, request=request, current_room=self._current_room()).encode()

    def _bytes(self, item: bytes | Wire) -> bytes:
        if isinstance(item, bytes):
            return item
        return item.json if self.codec == "json" else item.text(self._current_room())

    # --- the writer task ------------------------------------------------------------------------

    async def run(self) -> None:
        """Send until closed. Returns after a goodbye has been flushed (the caller then closes)."""
        while True:
            if not self._queue:
                if self.closing:
                    return
                await self._ready.park()
                continue
            items = self._queue
            self._queue = deque()
            self._queued_bytes = 0
            self._space.unpark_all()
            frames = [self._bytes(item) for item in items]
            try:
                await self.conn.send_batch(frames)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                self.closing = True
                return
            self.bytes_sent += sum(map(len, frames))
