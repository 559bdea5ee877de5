"""An IRC connection's outbox: events come as shared :class:`Wire` objects and are rendered once per
set of capabilities; what differs per reader (its own messages, private messages naming it) is
rendered here."""

from __future__ import annotations

from typing import cast

from utuvox.chat.wire import Wire
from utuvox.protocol import Event, Reply, Request
from utuvox.protocol import core as p
from utuvox.protocol.irc import render
from utuvox.protocol.irc.lines import format_line

from .. import websocket as ws
from ..outbox import Outbox, _Framed


def irc_frame_text(line: bytes) -> bytes:
    return ws.frame(ws.TEXT, line)


def irc_frame_binary(line: bytes) -> bytes:
    return ws.frame(ws.BINARY, line)


class IrcOutbox(Outbox):
    flags = 0  # the reader's rendering capabilities (render.SERVER_TIME...)
    echo = False  # echo-message: a sender sees its own messages
    nick = "*"
    # The labels of messages in flight (labeled-response), by request; and the sender's own copy of
    # the last one published, which its acknowledgement turns into the echo.
    labels: dict[int, str]
    _own: dict[tuple[str, int], Wire] | None = None  # own messages published, awaiting their acknowledgement
    own_private: Wire | None = None
    _quits: dict[str, None] | None = None  # who was last seen quitting, so that a QUIT shows once

    def deliver(self, wire: Wire) -> None:
        if wire.origin is self.session:
            kind = wire.kind
            if kind == "message":
                if self._own is None:
                    self._own = {}
                self._own[(wire.room or "", wire.seq)] = wire
                return
            if kind == "msg":
                self.own_private = wire  # the IRC state echoes it, labeled, if asked to
                return
            if kind == "topic":
                return  # the IRC state answers its own TOPIC
        # The bytes are counted at the event's JSON size, known already: the IRC line is rendered later,
        # once per set of capabilities, and is about as long (the tags of server-time and msgid against the
        # JSON's field names).
        Outbox.deliver(self, wire)

    def acknowledge(self, request: Request, room: str, seq: int) -> None:
        label = self.labels.pop(id(request), None) if self.labels else None
        own = self._own.pop((room, seq), None) if self._own else None
        tags = {"label": label} if label is not None else None
        if self.echo and own is not None:
            self._put(render.event_line(own.event, self.flags, self._source(), extra=tags).encode())
        elif label is not None:
            self._put(format_line("ACK", source=render.SERVER_NAME, tags=tags).encode())

    def _source(self) -> str:
        session = self.session
        nick = session.nick if session is not None and session.nick else self.nick
        return render.prefix(nick, session.ident if session is not None else None)

    def send_line(self, line: str) -> None:
        self._put(line.encode("utf-8", errors="replace"))

    def _goodbye(self, bye: p.Goodbye) -> bytes:
        return format_line("ERROR", f"Closing link: {bye.reason}").encode()

    def send(self, frame: Reply | Event, request: Request | None = None) -> None:
        if isinstance(frame, p.Goodbye):
            self._put(self._goodbye(frame))
        elif isinstance(frame, p.Error):
            self._put(format_line("NOTICE", self.nick, f"Error: {frame.message}", source=render.SERVER_NAME).encode())
        elif isinstance(frame, Event):
            self._put(self._render(frame))
        # Other replies are answered by the IRC state itself, as numerics.

    def _render(self, event: Event) -> bytes:
        if isinstance(event, p.PrivateMessage):
            mine = self.session is not None and self.session.user is not None and \
                event.user.lower() == self.session.user.key
            return render.event(event, self.flags, to=event.to if mine else self.nick)
        return render.event(event, self.flags, to=self.nick)

    def _take(self) -> bytes:
        queue, self._queue = self._queue, []
        self._queued_bytes = 0
        flags = self.flags
        wire = Wire
        # The common case in one pass: room messages rendered already for these capabilities. The rest
        # (None here) are rendered below, in place.
        out: list[bytes | None] = [item.irc_data if item.__class__ is wire and item.irc_flags == flags
                                   else None for item in queue]
        ready: set[int] = set()  # positions in out of frames ready to send as they are
        if None in out:
            for i, data in enumerate(out):
                if data is None:
                    item = queue[i]
                    if item.__class__ is wire:
                        out[i] = self._render_wire(item)
                    elif item.__class__ is bytes:
                        out[i] = item
                    else:  # a WebSocket control frame (pong, close), framed already
                        ready.add(i)
                        out[i] = cast(_Framed, item).data
        if self._space:
            self._space.unpark_all()
        chunks = cast(list[bytes], out)
        frame = self.conn.frame
        if frame is not None:  # IRC over WebSocket: a message per line, without its CR LF
            framed: list[bytes] = []
            for i, chunk in enumerate(chunks):
                if i in ready:
                    framed.append(chunk)
                else:
                    framed.extend(frame(line) for line in chunk.split(b"\r\n") if line)
            chunks = framed
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _render_wire(self, item: Wire) -> bytes:
        """An event's line(s) for this reader; b"" for what it does not show."""
        flags = self.flags
        if item.kind == "message":
            return item.irc(flags)
        event = item.event
        cls = event.__class__
        if cls in (p.PrivateMessage, p.RoomDeleted, p.Notice):
            if cls is p.RoomDeleted:
                part = format_line("PART", render.channel(event.room), "Room deleted",  # type: ignore[attr-defined]
                                   source=self._source()).encode()
                return part + self._render(event)
            return self._render(event)
        if cls is p.LeaveEvent and event.quit:  # type: ignore[attr-defined]
            # One QUIT per person, however many rooms this reader shares with them.
            quits = self._quits if self._quits is not None else {}
            self._quits = quits
            who = event.nick or event.user  # type: ignore[attr-defined]
            if who in quits:
                return b""
            quits[who] = None
            if len(quits) > 64:
                del quits[next(iter(quits))]
            return item.irc(flags)
        if cls is p.JoinEvent and self._quits:
            self._quits.pop(event.nick or event.user, None)  # type: ignore[attr-defined]
        return item.irc(flags)
