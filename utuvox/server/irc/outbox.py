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
from ..outbox import Outbox, State, _Framed

_OPEN = State.OPEN


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
            cls = wire.event.__class__
            if cls is p.MessageEvent:
                if self._own is None:
                    self._own = {}
                self._own[(wire.room or "", wire.event.seq)] = wire  # type: ignore[attr-defined]
                return
            if cls is p.PrivateMessage:
                self.own_private = wire  # the IRC state echoes it, labeled, if asked to
                return
            if cls is p.TopicEvent:
                return  # the IRC state answers its own TOPIC
        # The bytes are counted at the event's JSON size, known already: the IRC line is rendered later,
        # once per set of capabilities, and is about as long (the tags of server-time and msgid against the
        # JSON's field names).
        if not self.closing:
            self._put_sized(wire, len(wire.json))

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
        out: list[bytes] = []
        ready: set[int] = set()  # positions in out of frames ready to send as they are
        message = p.MessageEvent
        for item in queue:
            cls = item.__class__
            if cls is Wire:
                event = item.event  # type: ignore[union-attr]
                if event.__class__ is message:  # the common case: a room message, rendered once per flags
                    cache = item._irc  # type: ignore[union-attr]
                    data = cache.get(flags) if cache is not None else None
                    out.append(data if data is not None else item.irc(flags))  # type: ignore[union-attr]
                elif event.__class__ in (p.PrivateMessage, p.RoomDeleted, p.Notice):
                    if event.__class__ is p.RoomDeleted:
                        out.append(format_line("PART", render.channel(event.room), "Room deleted",
                                               source=self._source()).encode())
                    out.append(self._render(event))
                elif event.__class__ is p.LeaveEvent and event.quit:
                    # One QUIT per person, however many rooms this reader shares with them.
                    quits = self._quits if self._quits is not None else {}
                    self._quits = quits
                    who = event.nick or event.user
                    if who in quits:
                        continue
                    quits[who] = None
                    if len(quits) > 64:
                        del quits[next(iter(quits))]
                    out.append(item.irc(flags))  # type: ignore[union-attr]
                else:
                    if event.__class__ is p.JoinEvent and self._quits:
                        self._quits.pop(event.nick or event.user, None)
                    out.append(item.irc(flags))  # type: ignore[union-attr]
            elif cls is bytes:
                out.append(item)  # type: ignore[arg-type]
            else:  # a WebSocket control frame (pong, close), framed already
                ready.add(len(out))
                out.append(cast(_Framed, item).data)
        self._space.unpark_all()
        frame = self.conn.frame
        if frame is not None:  # IRC over WebSocket: a message per line, without its CR LF
            framed: list[bytes] = []
            for i, chunk in enumerate(out):
                if i in ready:
                    framed.append(chunk)
                else:
                    framed.extend(frame(line) for line in chunk.split(b"\r\n") if line)
            out = framed
        return out[0] if len(out) == 1 else b"".join(out)
