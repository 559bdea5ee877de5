"""An event ready to go out: encoded once per codec, then the same bytes go to every member.

A room message's wire starts from its JSON line alone (see :mod:`utuvox.protocol.event_lines`): its
model is made from those bytes the first time a reader needs it (IRC, text mode, a join's history) and
kept, so a room of JSON clients never pays for one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from utuvox.protocol import Event, json_codec, text_render
from utuvox.protocol.irc import render as irc_render
from utuvox.protocol.schema import SERVER_BY_TYPE

_EVENT_MODELS: dict[str, type[Event]] = {kind: m for kind, m in SERVER_BY_TYPE.items() if issubclass(m, Event)}


class Origin(Protocol):
    """The session whose request made an event, as far as rendering it for others goes."""

    @property
    def nick(self) -> str | None: ...

    @property
    def ident(self) -> str | None: ...

    @property
    def realname(self) -> str | None: ...


class Wire:
    __slots__ = ("_event", "_framed", "_irc", "_text_here", "_text_there", "irc_data", "irc_flags", "json", "kind",
                 "origin", "room", "seq")

    def __init__(self, event: Event, origin: Origin | None = None) -> None:
        self._event: Event | None = event
        self.kind: str = event.type
        self.seq: int = getattr(event, "seq", 0)
        # The session whose request made the event: IRC shows a sender its own message only when it
        # asked for echo-message, and names the sender as that session does (nick!ident@host).
        self.origin = origin
        self._irc: dict[int, bytes] | None = None
        self.irc_flags = -1
        self.irc_data = b""
        self.room: str | None = getattr(event, "room", None)
        self.json: bytes = json_codec.encode(event)  # one line, newline included
        self._text_here: bytes | None = None
        self._text_there: bytes | None = None
        self._framed: tuple[Callable[[bytes], bytes], bytes] | None = None

    @classmethod
    def encoded(cls, event: Event, json: bytes, origin: Origin | None = None) -> Wire:
        """A wire for ``event`` whose JSON line is already made (numbered by the store, or read from it)."""
        return cls._made(event, event.type, getattr(event, "room", None), getattr(event, "seq", 0), json, origin)

    @classmethod
    def line(cls, kind: str, room: str, seq: int, json: bytes, origin: Origin | None = None) -> Wire:
        """A wire for the room event whose JSON line (of today's schema) is ``json``: its model is made
        from the line when first asked for."""
        return cls._made(None, kind, room, seq, json, origin)

    @classmethod
    def _made(cls, event: Event | None, kind: str, room: str | None, seq: int, json: bytes,
              origin: Origin | None) -> Wire:
        wire = cls.__new__(cls)
        wire._event = event
        wire.kind = kind
        wire.seq = seq
        wire.origin = origin
        wire._irc = None
        wire.irc_flags = -1
        wire.irc_data = b""
        wire.room = room
        wire.json = json
        wire._text_here = wire._text_there = None
        wire._framed = None
        return wire

    def kept(self) -> Wire:
        """This wire as a room's memory of recent events keeps it: without the session that made it,
        which would otherwise stay in memory as long as the event does."""
        if self.origin is None:
            return self
        return self._made(self._event, self.kind, self.room, self.seq, self.json, None)

    @property
    def event(self) -> Event:
        """The event's model (made from the JSON line the first time, for a wire made by :meth:`line`)."""
        event = self._event
        if event is None:
            # The line is of today's schema and its type is known: its model validates it directly
            # (the union would parse it into a tree first).
            event = self._event = _EVENT_MODELS[self.kind].model_validate_json(self.json)
        return event

    def framed(self, frame: Callable[[bytes], bytes]) -> bytes:
        """The JSON line as a transport frames it (a WebSocket text frame), made once per event."""
        cached = self._framed
        if cached is None or cached[0] is not frame:
            cached = self._framed = (frame, frame(self.json))
        return cached[1]

    def irc(self, flags: int) -> bytes:
        """The IRC line(s) for a reader whose capabilities come to ``flags`` (see protocol.irc.render),
        made once per distinct set of capabilities."""
        cache = self._irc
        if cache is None:
            cache = self._irc = {}
        data = cache.get(flags)
        if data is None:
            origin = self.origin
            source = realname = None
            if origin is not None and origin.nick is not None:
                source = irc_render.prefix(origin.nick, origin.ident)
                realname = origin.realname
            data = cache[flags] = irc_render.event(self.event, flags, source, realname=realname)
            if self.irc_flags < 0 and self.kind == "message":
                # The first rendering of a room message, kept where an IRC outbox takes it in one
                # comprehension (readers mostly share one set of capabilities).
                self.irc_flags, self.irc_data = flags, data
        return data

    def text(self, current_room: str | None) -> bytes:
        """The text-mode line. Room messages render two ways: in the reader's current room, or
        prefixed with the room's name; each form is rendered at most once per event."""
        here = self.kind != "message" or self.room == current_room
        if here:
            if self._text_here is None:
                self._text_here = text_render.render(self.event, current_room=self.room).encode()
            return self._text_here
        if self._text_there is None:
            self._text_there = text_render.render(self.event, current_room=None).encode()
        return self._text_there
