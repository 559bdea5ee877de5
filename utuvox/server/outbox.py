"""Each session's outgoing side: a bounded queue, written out in batches, and the connection's lifecycle.

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

A connection ends in one of two ways, and only through the outbox: :meth:`Outbox.finish` (say goodbye,
send what is queued within a deadline, then close) or :meth:`Outbox.abort` (send nothing more, close
now). Where an outbox stands is one :class:`State`; ``_NEXT`` lists every move it may make, and
:meth:`Outbox._to` is the only place that makes one. The session's tasks run inside
:attr:`Outbox.lifetime`, so ending the connection is cancelling that scope or giving it a deadline.
"""

from __future__ import annotations

import enum
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
# Seconds any other goodbye (quit, kick, shutdown, a timeout) has to drain to a peer that does not read:
# long enough for a full queue on a slow link, short enough that a stalled peer does not hold a
# descriptor for ever.
FINISH_GRACE = 5.0


class State(enum.Enum):
    """Where an outbox stands. Frames are taken only in ``OPEN`` and ``BACKED_UP``."""

    OPEN = "open"  # the flusher writes what is queued, one pass per turn of the loop
    BACKED_UP = "backed up"  # the socket took less than it was given (or is TLS): the writer task sends
    DRAINING = "draining"  # finish(): nothing more is taken; the writer sends the rest, then the session ends
    ABORTED = "aborted"  # abort(): nothing more is sent; the session's tasks are cancelled
    CLOSED = "closed"  # the connection is closed (or being closed): its descriptor is never touched again


_OPEN, _BACKED_UP, _DRAINING, _ABORTED, _CLOSED = State
# Every move an outbox may make. A backed-up outbox goes back to OPEN once its writer has caught up; the
# other moves only go forward.
_NEXT: dict[State, frozenset[State]] = {
    _OPEN: frozenset({_BACKED_UP, _DRAINING, _ABORTED, _CLOSED}),
    _BACKED_UP: frozenset({_OPEN, _DRAINING, _ABORTED, _CLOSED}),
    _DRAINING: frozenset({_ABORTED, _CLOSED}),
    _ABORTED: frozenset({_CLOSED}),
    _CLOSED: frozenset(),
}


class Counters:
    """Server-wide figures of the outboxes, for ``stats``."""

    cut_off = 0  # connections cut off for falling behind


class Flusher:
    """Writes out every outbox that got data since it last ran, and counts the outboxes not closed yet
    (shutdown waits for the last one). One per server."""

    def __init__(self) -> None:
        self._dirty: list[Outbox] = []
        self._wake = trio.lowlevel.ParkingLot()
        self.live = 0  # outboxes made and not closed yet
        self._all_closed = trio.lowlevel.ParkingLot()

    def mark(self, outbox: Outbox) -> None:
        if not self._dirty:
            self._wake.unpark()
        self._dirty.append(outbox)

    def _closed(self) -> None:
        self.live -= 1
        if not self.live:
            self._all_closed.unpark_all()

    async def wait_all_closed(self) -> None:
        """Return once every outbox made with this flusher is closed."""
        while self.live:
            await self._all_closed.park()

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
                    outbox.abort("internal error")
            # Outboxes marked during the pass: let the tasks that were woken meanwhile run before the next
            # pass, so it gathers more. Otherwise parking is the yield, and a lone message's delivery costs
            # the flusher one step rather than two.
            if self._dirty:
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
        self._backlog = b""  # what a direct write could not send; the writer task sends it first
        self._ready = trio.lowlevel.ParkingLot()
        self._space = trio.lowlevel.ParkingLot()
        self.state = _OPEN
        # Whether frames are refused: the state is past BACKED_UP. Kept as a plain attribute because
        # every delivery reads it.
        self.closing = False
        self.reason: str | None = None  # why the connection was cut short (for the log), if it was
        # The scope the session's tasks run in (see run_session): finish gives it a deadline, abort and a
        # drained writer cancel it.
        self.lifetime = trio.CancelScope()
        self.bytes_sent = 0
        flusher.live += 1

    # --- the lifecycle --------------------------------------------------------------------------

    def _to(self, state: State) -> None:
        """Make a move of the state machine (one listed in ``_NEXT``)."""
        if state not in _NEXT[self.state]:
            raise RuntimeError(f"outbox of {self.conn.address}: no move from {self.state.name} to {state.name}")
        self.state = state
        self.closing = state is not _OPEN and state is not _BACKED_UP
        if state is _BACKED_UP or state is _DRAINING:
            self._ready.unpark()  # the writer task takes over
        if self.closing:
            self._space.unpark_all()  # nobody waits for room in a queue that takes nothing more
        if state is _CLOSED:
            self.flusher._closed()

    def finish(self, reason: str | None = None, code: str | None = None, *, within: float = FINISH_GRACE) -> None:
        """End the connection politely: queue a goodbye (``reason`` and ``code``, if given), take nothing
        more, let the writer send what is queued, then close; after ``within`` seconds the connection is
        closed whether or not everything got out. Does nothing once the connection is ending already."""
        if self.closing:
            return
        if reason is not None:
            self.send(Goodbye(reason=reason) if code is None else Goodbye(reason=reason, code=code))
            if self.closing:  # the goodbye did not fit: the outbox was cut off instead
                return
        self._drain(within)

    def close(self, reason: str, code: str) -> None:
        """Say goodbye and close once what is queued is sent (the chat layer's name for :meth:`finish`)."""
        self.finish(reason, code)

    def abort(self, reason: str | None = None) -> None:
        """End the connection now: drop what is queued, send nothing more, cancel the session's tasks.
        For a peer that is gone or a connection that cannot go on (a goodbye would never arrive)."""
        if self.state is _ABORTED or self.state is _CLOSED:
            return
        self.reason = self.reason or reason
        self._queue = []
        self._queued_bytes = 0
        self._to(_ABORTED)
        self.lifetime.cancel()

    def closed(self) -> None:
        """The connection is about to be closed: never touch its file descriptor again (its number may
        be reused at once)."""
        if self.state is not _CLOSED:
            self._queue = []
            self._queued_bytes = 0
            self._to(_CLOSED)

    def _drain(self, within: float) -> None:
        self._to(_DRAINING)
        self.lifetime.deadline = min(self.lifetime.deadline, trio.current_time() + within)

    # --- queueing (never blocks) ----------------------------------------------------------------

    def _put(self, item: bytes | Wire | _Framed) -> None:
        if self.closing:
            return
        self._put_sized(item, len(item) if item.__class__ is bytes else self._size(item))  # type: ignore[arg-type]

    def _put_sized(self, item: bytes | Wire | _Framed, size: int) -> None:
        """Queue ``item``, counted as ``size`` bytes against the cap (the outbox is open)."""
        queue = self._queue
        queued = self._queued_bytes + size
        if len(queue) >= self.limit or queued + self._inflight > self.max_bytes:
            self._overflow(size)
            return
        queue.append(item)
        self._queued_bytes = queued
        if not self._marked and self.state is _OPEN:
            self._marked = True
            self.flusher.mark(self)

    def deliver(self, wire: Wire) -> None:
        # _put, unrolled: this runs once per member per event, the hottest line of a busy server.
        if self.closing:
            return
        queue = self._queue
        # (IRC lines are rendered later, per set of capabilities: counted at the JSON's size, about theirs.)
        size = len(wire.text(self._current_room())) if self.codec == "text" else len(wire.json)
        queued = self._queued_bytes + size
        if len(queue) >= self.limit or queued + self._inflight > self.max_bytes:
            self._overflow(size)
            return
        queue.append(wire)
        self._queued_bytes = queued
        if not self._marked and self.state is _OPEN:
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
            return len(item.data)
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

    def _overflow(self, size: int) -> None:
        who = self.session.user.name if self.session and self.session.user else "anonymous"
        log.warning("cutting off slow client %s at %s: %d frames, %d bytes pending, %d more", who, self.conn.address,
                    len(self._queue), self.pending_bytes, size)
        Counters.cut_off += 1
        self.reason = "slow consumer"
        # What was queued is dropped now; the goodbye goes after the frame being written (a frame cut in
        # the middle would be garbage), and the connection is closed after a short grace either way.
        bye = self._goodbye(Goodbye(reason=f"You fell too far behind in reading: more than {self.max_bytes} bytes "
                                           "were waiting for you.", code=Code.SLOW_CONSUMER))
        self._queue = [bye]
        self._queued_bytes = len(bye)
        self._drain(CUTOFF_GRACE)

    # --- encoding -------------------------------------------------------------------------------

    def _current_room(self) -> str | None:
        return self.session.current_room if self.session else None

    def _goodbye(self, bye: Goodbye) -> bytes:
        """A goodbye as bytes, for a queue that no longer goes through :meth:`send`."""
        return self._encode(bye, None)

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
        if self._space:  # (unparking nobody costs a microsecond, once per flush of every connection)
            self._space.unpark_all()
        return frames[0] if len(frames) == 1 else b"".join(frames)

    # --- writing --------------------------------------------------------------------------------

    def flush(self) -> None:
        """Called by the flusher: write what is queued now, without waiting. What the socket does not
        take at once goes to the writer task."""
        self._marked = False
        if self.state is not _OPEN or not self._queue:
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
            self.abort()  # the peer is gone; the reader will see it too
            return
        self.bytes_sent += sent
        if sent < len(data):
            self._hand_to_writer(data[sent:])

    def _hand_to_writer(self, backlog: bytes) -> None:
        self._backlog = backlog
        self._inflight = len(backlog)
        self._to(_BACKED_UP)

    def _sent(self) -> None:
        self._inflight = 0
        if self._space:
            self._space.unpark_all()

    async def run(self) -> None:
        """The session's writer task: sends what the flusher could not, and drains the queue once the
        outbox is finishing; then ends the session (cancels :attr:`lifetime`)."""
        try:
            while True:
                state = self.state
                if state is _OPEN:
                    await self._ready.park()
                    continue
                if state is not _BACKED_UP and state is not _DRAINING:
                    return
                if self._backlog:
                    backlog, self._backlog = self._backlog, b""
                    await self.conn.send_raw(backlog)
                    self.bytes_sent += len(backlog)
                    del backlog
                    self._sent()
                while self._queue and (self.state is _BACKED_UP or self.state is _DRAINING):
                    data = self._take()
                    self._inflight = len(data)
                    await self.conn.send_raw(data)
                    self.bytes_sent += len(data)
                    del data
                    self._sent()
                if self.state is not _BACKED_UP:
                    return  # drained (or ended meanwhile)
                self._to(_OPEN)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self.abort()  # the peer is gone
        finally:
            self.lifetime.cancel()
