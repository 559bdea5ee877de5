"""Room messages encoded without building their model first.

Every room message a server takes in becomes one ``message`` event, stored and sent to every member as
the same JSON line. Building the :class:`~utuvox.protocol.core.MessageEvent` model and encoding it costs
more than the rest of the message's way through the chat layer; writing the line directly from values
that were validated already (the request's text and tags, the session's names) costs a quarter of that.
The line is byte for byte what the model would encode (tests/test_event_lines.py holds the two together),
and the model is made from it later, only where a reader needs one (IRC, text mode, a join's history).
"""

from __future__ import annotations

import json
import time
from json.encoder import encode_basestring  # json.dumps's own quoting (in C)
from typing import Any

# Strings as pydantic writes them: quoted and escaped the same way (non-ASCII left as UTF-8).
quote: Any = encode_basestring
_TAGS = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False)


class _Clock:
    """The time of an event in whole microseconds, and its ISO 8601 form as pydantic writes a UTC
    datetime (``...T09:13:49.521526Z``, no fraction when it is zero). The date and time of day change
    once a second, so they are formatted once a second."""

    __slots__ = ("prefix", "second")

    def __init__(self) -> None:
        self.second = -1
        self.prefix = ""

    def stamp(self, micros: int) -> str:
        second, fraction = divmod(micros, 1_000_000)
        if second != self.second:
            self.prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self.second = second
        # (str() of a seven-digit number, not a format spec: a third cheaper, and this runs per message)
        return f"{self.prefix}.{str(1_000_000 + fraction)[1:]}Z" if fraction else self.prefix + "Z"


_clock = _Clock()
stamp = _clock.stamp


def now_micros() -> int:
    """The current time in whole microseconds since the epoch (an event's ``ts``)."""
    return time.time_ns() // 1000


def message(micros: int, room: str, user: str, text: str, face: dict[str, Any], action: bool | None = None,
            notice: bool | None = None, tags: dict[str, str] | None = None) -> bytes:
    """The JSON line (newline included) of a room message event numbered 0 (the store numbers it in
    place), in the model's field order, fields that are ``None`` left out. ``face`` holds the sender's
    ``nick``, ``guest`` and ``bot`` where set (see ``Session.face``); the arguments are positional
    because keywords cost more than the rest of the call."""
    line = f'{{"type":"message","ts":"{stamp(micros)}","room":{quote(room)},"seq":0,"user":{quote(user)}'
    if face:
        nick, guest, bot = face.get("nick"), face.get("guest"), face.get("bot")
        if nick is not None:
            line += ',"nick":' + quote(nick)
        if guest is not None:
            line += ',"guest":true' if guest else ',"guest":false'
        if bot is not None:
            line += ',"bot":true' if bot else ',"bot":false'
    line += ',"text":' + quote(text)
    if action is not None:
        line += ',"action":true' if action else ',"action":false'
    if notice is not None:
        line += ',"notice":true' if notice else ',"notice":false'
    if tags is not None:
        line += ',"tags":' + _TAGS.encode(tags)
    return (line + "}\n").encode()
