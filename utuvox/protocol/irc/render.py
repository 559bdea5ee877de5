"""How the protocol's events look on IRC: one line each, with the IRCv3 tags a reader asked for.

A line depends on the reader only through its capabilities, summed up as ``flags``; so an event is
rendered once per distinct set of them (see :meth:`utuvox.chat.wire.Wire.irc`), not once per reader.
"""

from __future__ import annotations

from datetime import UTC, datetime

from .. import core
from ..base import Event
from .lines import MAX_LINE, clean, format_line

SERVER_NAME = "utuvox"  # the server's name on IRC (a process serves one IRC network)
HOST = "utuvox"


def configure(server_name: str) -> None:
    global SERVER_NAME
    SERVER_NAME = server_name

# A reader's capabilities, as far as rendering goes.
SERVER_TIME = 1
MESSAGE_TAGS = 2  # msgid, the bot tag, client-only tags
ACCOUNT_TAG = 4
EXTENDED_JOIN = 8

PM_MSGID = "~pm:"  # a room name never starts with '~'


def channel(room: str) -> str:
    return "#" + room


def msgid(room: str, seq: int) -> str:
    """Stable across protocols: made from the room and the sequence number."""
    return f"{room.lower()}:{seq}"


def private_msgid(seq: int) -> str:
    return f"{PM_MSGID}{seq}"


def parse_msgid(value: str) -> tuple[str | None, int] | None:
    """``(room key, seq)`` of a room message's msgid, ``(None, seq)`` for a private one, else None."""
    head, sep, tail = value.rpartition(":")
    if not sep or not tail.isdigit():
        return None
    if value.startswith(PM_MSGID):
        return (None, int(tail)) if head == PM_MSGID[:-1] else None
    return (head, int(tail)) if head else None


def server_time(ts: datetime) -> str:
    """``YYYY-MM-DDThh:mm:ss.sssZ`` (milliseconds cut, not rounded, as the stored time is shown elsewhere)."""
    if ts.tzinfo is not UTC:
        ts = ts.astimezone(UTC)
    return ts.isoformat(timespec="milliseconds")[:23] + "Z"


def prefix(nick: str, ident: str | None = None) -> str:
    return f"{nick}!{ident or '~' + nick[:9]}@{HOST}"


def event_prefix(event: core.RoomEvent | core.PrivateMessage | core.TopicEvent) -> str:
    return prefix(event.nick or event.user, None if event.nick is None else "~" + event.user[:9])


def tags_for(event: Event, flags: int, mid: str | None = None) -> dict[str, str]:
    tags: dict[str, str] = {}
    if not flags:
        return tags
    if flags & SERVER_TIME:
        tags["time"] = server_time(event.ts)
    if flags & MESSAGE_TAGS:
        if mid is not None:
            tags["msgid"] = mid
        if getattr(event, "bot", None):
            tags["bot"] = ""
        client = getattr(event, "tags", None)
        if client:
            tags.update(client)
    if flags & ACCOUNT_TAG:
        user = getattr(event, "user", None)
        if user is not None and not getattr(event, "guest", None):
            tags["account"] = user
    return tags


ACTION_START, ACTION_END = "\x01ACTION ", "\x01"  # CTCP ACTION: what IRC clients send and show for /me


def action_text(text: str) -> str | None:
    """The action in a CTCP ACTION (``\\x01ACTION waves\\x01``; some clients leave out the closing
    ``\\x01``), or None if ``text`` is not one."""
    if not text.startswith(ACTION_START):
        return None
    return text[len(ACTION_START):].removesuffix(ACTION_END)


def _text_lines(command: str, target: str, text: str, source: str, tags: dict[str, str],
                action: bool = False) -> str:
    """A message as IRC lines of at most 512 bytes: a long one (from another transport, where messages
    may be 4000 characters) is split at character boundaries; the first line carries the msgid. An
    action is sent as a CTCP ACTION, each line one of its own."""
    room = MAX_LINE - len(source.encode()) - len(command) - len(target.encode()) - 7
    if action:
        room -= len(ACTION_START) + len(ACTION_END)
    data = text.encode()
    if len(data) <= room or room < 16:
        if action:
            text = ACTION_START + text + ACTION_END
        if not tags:  # the common line, made without format_line's general case
            if not text or text[0] == ":" or " " in text:
                return f":{source} {command} {target} :{text}\r\n"
            return f":{source} {command} {target} {text}\r\n"
        return format_line(command, target, text, source=source, tags=tags)
    lines: list[str] = []
    rest_tags = {k: v for k, v in tags.items() if k != "msgid"}
    while data:
        cut = min(room, len(data))
        while cut < len(data) and (data[cut] & 0xC0) == 0x80:  # not inside a UTF-8 sequence
            cut -= 1
        chunk, data = data[:cut].decode(), data[cut:]
        if action:
            chunk = ACTION_START + chunk + ACTION_END
        lines.append(format_line(command, target, chunk, source=source, tags=tags if not lines else rest_tags))
    return "".join(lines)


def event(ev: Event, flags: int, source: str | None = None, *, to: str | None = None,
          realname: str | None = None) -> bytes:
    """The line of an event for a reader with ``flags``; ``source`` is the sender's ``nick!user@host``
    (worked out from the event when not given), ``to`` the reader's nick (private messages)."""
    return event_line(ev, flags, source, to=to, realname=realname).encode()


def event_line(ev: Event, flags: int, source: str | None = None, *, to: str | None = None,
               extra: dict[str, str] | None = None, realname: str | None = None) -> str:
    if isinstance(ev, core.MessageEvent):
        tags = tags_for(ev, flags, msgid(ev.room, ev.seq) if flags & MESSAGE_TAGS else None)
        if extra:
            tags.update(extra)
        command = "NOTICE" if ev.notice else "PRIVMSG"
        return _text_lines(command, channel(ev.room), clean(ev.text), source or event_prefix(ev), tags,
                           bool(ev.action))
    if isinstance(ev, core.JoinEvent):
        src = source or event_prefix(ev)
        tags = tags_for(ev, flags, msgid(ev.room, ev.seq))
        if flags & EXTENDED_JOIN:
            account = "*" if ev.guest else ev.user
            return format_line("JOIN", channel(ev.room), account, realname or ev.nick or ev.user, source=src,
                               tags={**tags, **(extra or {})})
        return format_line("JOIN", channel(ev.room), source=src, tags={**tags, **(extra or {})})
    if isinstance(ev, core.LeaveEvent):
        tags = tags_for(ev, flags, msgid(ev.room, ev.seq))
        if ev.quit:
            return format_line("QUIT", f"Quit: {clean(ev.reason or '')}", source=source or event_prefix(ev),
                               tags={**tags, **(extra or {})})
        params = (channel(ev.room), clean(ev.reason)) if ev.reason else (channel(ev.room),)
        return format_line("PART", *params, source=source or event_prefix(ev), tags={**tags, **(extra or {})})
    if isinstance(ev, core.FileEvent):
        tags = tags_for(ev, flags, msgid(ev.room, ev.seq))
        did = "downloaded" if ev.action == "download" else "uploaded"
        text = f"{did} file {ev.name} ({clean(ev.original)}, {ev.size} bytes) - download name: {ev.name}"
        return format_line("NOTICE", channel(ev.room), text, source=source or event_prefix(ev),
                           tags={**tags, **(extra or {})})
    if isinstance(ev, core.PrivateMessage):
        # A private message that is not stored (a guest's) still gets a msgid, from its time.
        mid = private_msgid(ev.seq) if ev.seq is not None else f"~x:{int(ev.ts.timestamp() * 1e6)}"
        tags = tags_for(ev, flags, mid)
        return _text_lines("NOTICE" if ev.notice else "PRIVMSG", to or ev.to, clean(ev.text),
                           source or event_prefix(ev), {**tags, **(extra or {})})
    if isinstance(ev, core.TopicEvent):
        tags = tags_for(ev, flags)
        return format_line("TOPIC", channel(ev.room), clean(ev.topic or ""), source=source or event_prefix(ev),
                           tags=tags)
    if isinstance(ev, core.Announcement):
        target = channel(ev.room) if ev.room else "*"
        return format_line("NOTICE", target, f"[ANNOUNCEMENT] {clean(ev.text)}", source=SERVER_NAME,
                           tags=tags_for(ev, flags))
    if isinstance(ev, core.Notice):
        return format_line("NOTICE", to or "*", clean(ev.text), source=SERVER_NAME, tags=tags_for(ev, flags))
    if isinstance(ev, core.Keepalive):
        return format_line("PING", SERVER_NAME)
    if isinstance(ev, core.RoomDeleted):
        return format_line("NOTICE", to or "*", f"Room {channel(ev.room)} was deleted by {ev.by}.",
                           source=SERVER_NAME, tags=tags_for(ev, flags))
    # Anything else (an operator's events) reads as a server notice.
    fields = ev.model_dump(mode="json", exclude_none=True, exclude={"type", "ts"})
    detail = ", ".join(f"{k}={v}" for k, v in fields.items())
    return format_line("NOTICE", to or "*", clean(f"{ev.type}: {detail}"), source=SERVER_NAME,
                       tags=tags_for(ev, flags))
