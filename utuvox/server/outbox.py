"""Each session's outgoing side: a bounded queue, written out in batches.

Events arrive as :class:`Wire` objects already encoded once for everybody; an outbox only picks the
bytes for its codec. The queue is bounded in bytes (and in frames): what is queued plus what the writer
is still putting on the wire, shared events counted at their encoded size for this codec. A member that
goes over is cut off at once: its queue is dropped, a ``bye`` (code ``slow_consumer``) goes after the
frame being written, and the connection is closed within ``CUTOFF_GRACE`` seconds whether or not the
bye got out, so it never slows the room and never holds more than the cap. Bulk replies the session
asked for itself wait for room instead: :meth:`Outbox.reserve` before building a history page or
reading a file block, :meth:`Outbox.send_paced` for each download chunk.

Writing is done by the :class:`Flusher`, not by a task per session: whatever was queued during one
turn of the event loop (a whole group commit's worth of deliveries) is written by one task in one
pass, with one non-blocking ``write`` per connection. Waking a writer task per member per message
costs more than the write itself; a room of 50 would pay it 50 times per message. Only when the
kernel's buffer is full (or the transport cannot be written to directly: TLS) does the session's own
writer task take over and wait for the socket.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Literal

import trio

from utuvox.chat.session import Session
from utuvox.chat.wire import Wire
from utuvox.protocol import Code, Event, Reply, Request, json_codec, text_codec
from utuvox.protocol.core import Goodbye

from .connection import Connection

log = logging.getLogger("utuvox.server")

Codec = Literal["json", "text", "irc"]
CUTOFF_GRACE = 2.0  # seconds a connection cut off for falling behind has to take its goodbye


class Counters:
    """Server-wide figures of the outboxes, for ``stats``."""

    cut_off = 0  # connections cut off for falling behind


class Flusher:
    """Writes out every outbox that got data since it last ran. One per server."""

    def __init__(self) -> None:
        self._dirty: list[Outbox] = []
        self._wake = trio.lowlevel.ParkingLot()

    def mark(self, outbox: Outbox) -> None:
        if not self._dirty:
            self._wake.unpark()
        self._dirty.append(outbox)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            if not self._dirty:
                await self._wake.park()
            dirty, self._dirty = self._dirty, []
            for outbox in dirty:
                try:
                    outbox.flush()
                except Exception:
                    # One connection's bug must not stop the writes of every other one.
                    log.exception("flushing connection %s failed", outbox.conn.address)
                    outbox.cut_off = "internal error"
                    if outbox.scope is not None:
                        outbox.scope.cancel()
            # Let the tasks that were woken meanwhile run before the next pass, so it gathers more.
            await trio.lowlevel.checkpoint()


class _Framed:
    """Bytes to send as they are, already framed by the connection."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def framed(self, frame: object) -> bytes:
        return self.data


class Outbox:
    def __init__(self, conn: Connection, codec: Codec, limit: int, flusher: Flusher, *,
                 max_bytes: int = 8 * 1024 * 1024, paced_bytes: int = 1024 * 1024) -> None:
        self.conn = conn
        self.codec = codec
        self.limit = limit  # frames
        self.max_bytes = max_bytes  # bytes queued and being written, at most
        self.flusher = flusher
        # send_paced waits while this many bytes are queued (or half the frame limit): bulk frames are
        # large (a download chunk is ~60 KB), so a frame count alone would let megabytes pile up.
        self.paced_bytes = min(paced_bytes, max_bytes // 2)
        self._queued_bytes = 0  # encoded size of everything queued (shared events at this codec's size)
        self._inflight = 0  # bytes taken from the queue that the socket has not accepted yet
        self.session: Session | None = None
        # A list, not a deque: it is only appended to and taken whole, and an empty deque costs 600 bytes
        # per connection against a list's 56 (10,000 idle connections are a goal).
        self._queue: list[bytes | Wire | _Framed] = []
        self._marked = False  # waiting in the flusher's list
        self._writing = False  # the writer task owns the socket until the queue is empty
        self._backlog = b""  # what a direct write could not send; the writer task sends it first
        self._ready = trio.lowlevel.ParkingLot()
        self._space = trio.lowlevel.ParkingLot()
        self.closing = False
        self.detached = False
        self.cut_off: str | None = None
        self.scope: trio.CancelScope | None = None
        self.bytes_sent = 0

    # --- queueing (never blocks) ----------------------------------------------------------------

    def _put(self, item: bytes | Wire | _Framed) -> None:
        if self.closing:
            return
        queue = self._queue
        size = len(item) if item.__class__ is bytes else self._size(item)  # type: ignore[arg-type]
        queued = self._queued_bytes + size
        if len(queue) >= self.limit or queued + self._inflight > self.max_bytes:
            self._overflow(size)
            return
        queue.append(item)
        self._queued_bytes = queued
        if not self._marked and not self._writing:
            self._marked = True
            self.flusher.mark(self)

    def deliver(self, wire: Wire) -> None:
        # _put, unrolled: this runs once per member per event, the hottest line of a busy server.
        if self.closing:
            return
        queue = self._queue
        size = len(wire.json) if self.codec == "json" else len(wire.text(self._current_room()))
        queued = self._queued_bytes + size
        if len(queue) >= self.limit or queued + self._inflight > self.max_bytes:
            self._overflow(size)
            return
        queue.append(wire)
        self._queued_bytes = queued
        if not self._marked and not self._writing:
            self._marked = True
            self.flusher.mark(self)

    def send_framed(self, data: bytes) -> bool:
        """Queue bytes that are already a frame of the transport (a WebSocket pong or close); False if
        the outbox takes nothing more (it is closing)."""
        if self.closing:
            return False
        self._put(_Framed(data))
        return True

    def send(self, frame: Reply | Event, request: Request | None = None) -> None:
        data = self._encode(frame, request)
        if data:
            self._put(data)

    def acknowledge(self, request: Request, room: str, seq: int) -> None:
        if self.codec == "text":
            return  # text mode shows the message itself, which comes back as an event
        rid = request.id
        if rid is None:
            self._put(b'{"type":"ok","room":"%s","seq":%d}\n' % (room.encode(), seq))
        else:
            # json.dumps quotes a string id exactly as pydantic would; room names are plain ASCII.
            re = str(rid).encode() if rid.__class__ is int else json.dumps(rid).encode()
            self._put(b'{"type":"ok","re":%s,"room":"%s","seq":%d}\n' % (re, room.encode(), seq))

    def _size(self, item: Wire | _Framed) -> int:
        if item.__class__ is _Framed:
            return len(item.data)  # type: ignore[union-attr]
        return len(item.json) if self.codec == "json" else len(item.text(self._current_room()))  # type: ignore

    @property
    def pending_bytes(self) -> int:
        """Bytes this connection holds for its peer: queued, and taken but not yet accepted by the socket."""
        return self._queued_bytes + self._inflight

    async def send_paced(self, frame: Reply | Event) -> None:
        while (len(self._queue) >= self.limit // 2 or self.pending_bytes >= self.paced_bytes) and not self.closing:
            await self._space.park()
        self.send(frame)

    async def reserve(self, nbytes: int) -> None:
        """Wait until ``nbytes`` more fit under the byte cap (at once if nothing is pending): called before
        building a large reply the session asked for, so that asking faster than one reads makes one
        wait instead of piling replies up."""
        while self.pending_bytes and self.pending_bytes + nbytes > self.max_bytes and not self.closing:
            await self._space.park()

    def close(self, reason: str, code: str) -> None:
        """Queue a goodbye, then close once everything before it is sent."""
        if self.closing:
            return
        self.send(Goodbye(reason=reason, code=code))
        self.finish()

    def finish(self) -> None:
        """Accept nothing more; the writer task returns once everything queued is sent."""
        self.closing = True
        self._writing = True
        self._ready.unpark()

    def detach(self) -> None:
        """The connection is about to be closed: never touch its file descriptor again."""
        self.detached = True
        self.closing = True
        self._queue.clear()

    def _overflow(self, size: int) -> None:
        who = self.session.user.name if self.session and self.session.user else "anonymous"
        log.warning("cutting off slow client %s at %s: %d frames, %d bytes pending, %d more", who, self.conn.address,
                    len(self._queue), self.pending_bytes, size)
        Counters.cut_off += 1
        self.cut_off = "slow consumer"
        # What was queued is dropped now; the goodbye goes after the frame being written (a frame cut in
        # the middle would be garbage), and the connection is closed after a short grace either way.
        bye = self._encode(Goodbye(reason=f"You fell too far behind in reading: more than {self.max_bytes} bytes "
                                          "were waiting for you.", code=Code.SLOW_CONSUMER), None)
        self._queue = [bye]
        self._queued_bytes = len(bye)
        self.closing = True
        self._writing = True
        self._ready.unpark()
        self._space.unpark_all()
        if self.scope is not None:
            self.scope.deadline = min(self.scope.deadline, trio.current_time() + CUTOFF_GRACE)

    # --- encoding -------------------------------------------------------------------------------

    def _current_room(self) -> str | None:
        return self.session.current_room if self.session else None

    def _encode(self, frame: Reply | Event, request: Request | None) -> bytes:
        if self.codec == "json":
            return json_codec.encode(frame)
        return text_codec.render(frame, request=request, current_room=self._current_room()).encode()

    def _take(self) -> bytes:
        """Everything queued, as the bytes to put on the wire."""
        queue, self._queue = self._queue, []
        self._queued_bytes = 0
        frame = self.conn.frame
        if frame is not None:  # a WebSocket: JSON only, each event framed once for everybody
            frames = [frame(item) if item.__class__ is bytes else item.framed(frame) for item in queue]  # type: ignore
        elif self.codec == "json":
            frames = [item if item.__class__ is bytes else item.json for item in queue]  # type: ignore[union-attr]
        else:
            room = self._current_room()
            frames = [item if item.__class__ is bytes else item.text(room) for item in queue]  # type: ignore[union-attr]
        self._space.unpark_all()
        return frames[0] if len(frames) == 1 else b"".join(frames)

    # --- writing --------------------------------------------------------------------------------

    def flush(self) -> None:
        """Called by the flusher: write what is queued now, without waiting. What the socket does not
        take at once goes to the writer task."""
        self._marked = False
        if self._writing or self.detached or not self._queue:
            return
        fd = self.conn.direct_fd()
        if fd is None:
            self._hand_to_writer(b"")
            return
        data = self._take()
        try:
            sent = os.write(fd, data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.closing = True  # the peer is gone; the reader will see it too
            if self.scope is not None:
                self.scope.cancel()
            return
        self.bytes_sent += sent
        if sent < len(data):
            self._hand_to_writer(data[sent:])

    def _hand_to_writer(self, backlog: bytes) -> None:
        self._backlog = backlog
        self._inflight = len(backlog)
        self._writing = True
        self._ready.unpark()

    def _sent(self) -> None:
        self._inflight = 0
        self._space.unpark_all()

    async def run(self) -> None:
        """The session's writer task: sends when the flusher could not, until closed. Returns after a
        goodbye has been flushed (the caller then closes)."""
        while True:
            if not self._writing:
                await self._ready.park()
                continue
            try:
                if self._backlog:
                    backlog, self._backlog = self._backlog, b""
                    await self.conn.send_raw(backlog)
                    self.bytes_sent += len(backlog)
                    del backlog
                    self._sent()
                while self._queue and not self.detached:
                    data = self._take()
                    self._inflight = len(data)
                    await self.conn.send_raw(data)
                    self.bytes_sent += len(data)
                    del data
                    self._sent()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                self.closing = True
                return
            if self.closing:
                return
            self._writing = False
