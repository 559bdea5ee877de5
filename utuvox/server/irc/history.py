"""CHATHISTORY (IRCv3 draft/chathistory): pages of a room's or a private conversation's history, by
msgid or by timestamp, sent in a ``chathistory`` batch so that bots can tell them from live traffic.

A reference becomes a bound on the sequence number (a room's ``seq``, a conversation's message id):
``msgid=room:seq`` is that number; ``timestamp=T`` lies between the last event at or before T and the
first after it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Protocol

from utuvox.chat.service import Chat
from utuvox.chat.session import Identity, Session
from utuvox.protocol import core as p
from utuvox.protocol.irc import render
from utuvox.protocol.irc.lines import Line

from .outbox import IrcOutbox
from .targets import room_of


class IrcClient(Protocol):
    """What CHATHISTORY needs of the IRC connection it answers (:class:`~utuvox.server.irc.client.IrcClient`)."""

    chat: Chat
    session: Session
    outbox: IrcOutbox

    @property
    def me(self) -> str: ...

    def has(self, cap: str) -> bool: ...

    def send(self, command: str, *params: str, source: str | None = "", tags: dict[str, str] | None = None) -> None:
        ...

    def send_raw(self, line: str) -> None: ...

    def fail(self, command: str, code: str, *context: str) -> None: ...

    def new_batch_id(self) -> str: ...

    def nick_of(self, session: Session) -> str: ...

    def find(self, nick: str) -> Session | None: ...

MAX_LIMIT = 100
MESSAGES = (p.MessageEvent, p.PrivateMessage, p.FileEvent)


class HistoryError(Exception):
    def __init__(self, code: str, *context: str) -> None:
        self.code = code
        self.context = context


def parse_time(value: str) -> datetime:
    try:
        ts = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise HistoryError("INVALID_PARAMS", f"bad timestamp {value[:40]}") from None
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


class Conversation:
    """Where the history comes from: a room, or the private conversation with one person."""

    def __init__(self, client: IrcClient, target: str) -> None:
        self.client = client
        chat = client.chat
        self.room = None
        self.peer: str | None = None
        name = room_of(target)
        if target.startswith("#"):
            room = chat.room_here(name) if name else None
            session = client.session
            if room is None or (room.name not in session.rooms and not session.is_operator):
                raise HistoryError("INVALID_TARGET", target[:64], "No such channel, or not joined")
            self.room = room
        else:
            self.target_nick = target

    async def resolve_peer(self) -> None:
        if self.room is not None:
            return
        client = self.client
        session = client.find(self.target_nick)
        if session is not None and session.user is not None and not session.user.guest:
            self.peer = session.user.name
            return
        user = await client.chat.store.get_user(self.target_nick) if self.target_nick else None
        if user is None:
            raise HistoryError("INVALID_TARGET", self.target_nick[:64], "No such nick")
        self.peer = user.name

    async def bound(self, ref: str, *, lower: bool) -> int | None:
        """The exclusive bound a reference makes: events after it (``lower``) or before it."""
        if ref == "*":
            return None
        kind, _, value = ref.partition("=")
        if kind == "msgid":
            parsed = render.parse_msgid(value)
            if parsed is None:
                raise HistoryError("INVALID_MSGREFTYPE", f"bad msgid {value[:40]}")
            room_key, seq = parsed
            if (self.room is None) != (room_key is None) or (self.room is not None and room_key != self.room.key):
                raise HistoryError("INVALID_MSGREFTYPE", "that msgid is not of this target")
            return seq
        if kind != "timestamp":
            raise HistoryError("INVALID_MSGREFTYPE", f"unknown reference {ref[:40]}")
        ts = parse_time(value)
        chat = self.client.chat
        if self.room is not None:
            if lower:
                return await chat.seq_after(self.room, ts)
            return await chat.store.seq_at(self.room.id, ts.timestamp())
        assert self.peer is not None
        me = self.client.session.user
        assert me is not None
        if lower:
            return await chat.store.private_id_at(me.name, self.peer, ts.timestamp() + 1e-6) - 1
        return await chat.store.private_id_at(me.name, self.peer, ts.timestamp())

    async def events(self, *, after: int | None, before: int | None, limit: int, latest: bool) -> list[Any]:
        chat = self.client.chat
        if self.room is not None:
            events, _more = await chat.room_events(self.room, after=after, before=before, limit=limit, latest=latest)
            return events
        me = self.client.session.user
        assert isinstance(me, Identity) and self.peer is not None
        messages, _more = await chat.private_events(me, self.peer, after=after, before=before, limit=limit,
                                                    latest=latest)
        return messages


async def chathistory(client: IrcClient, line: Line) -> None:
    sub = line.param(0).upper()
    try:
        if sub == "TARGETS":
            await _targets(client, line)
            return
        if sub not in ("LATEST", "BEFORE", "AFTER", "AROUND", "BETWEEN") or len(line.params) < 4:
            raise HistoryError("INVALID_PARAMS", "Usage: CHATHISTORY <subcommand> <target> <reference> <limit>")
        if sub == "BETWEEN" and len(line.params) < 5:
            raise HistoryError("INVALID_PARAMS", "Usage: CHATHISTORY BETWEEN <target> <ref> <ref> <limit>")
        limit_text = line.params[4] if sub == "BETWEEN" else line.params[3]
        if not limit_text.isdigit():
            raise HistoryError("INVALID_PARAMS", "bad limit")
        limit = max(1, min(int(limit_text), MAX_LIMIT))
        target = line.params[1]
        conversation = Conversation(client, target)
        if not client.session.user or (client.session.user.guest and conversation.room is None):
            raise HistoryError("INVALID_TARGET", target[:64], "Guests have no private history")
        await conversation.resolve_peer()
        events = await _select(conversation, sub, line.params[2], line.param(3), limit)
    except HistoryError as exc:
        client.fail("CHATHISTORY", exc.code, sub or "*", *exc.context)
        return
    _send_batch(client, target, events)


async def _select(conv: Conversation, sub: str, ref: str, ref2: str, limit: int) -> list[Any]:
    if sub == "LATEST":
        after = await conv.bound(ref, lower=True)
        return await conv.events(after=after, before=None, limit=limit, latest=True)
    if ref == "*":
        raise HistoryError("INVALID_PARAMS", "a reference is needed")
    if sub == "BEFORE":
        return await conv.events(after=None, before=await conv.bound(ref, lower=False), limit=limit, latest=True)
    if sub == "AFTER":
        return await conv.events(after=await conv.bound(ref, lower=True), before=None, limit=limit, latest=False)
    if sub == "AROUND":
        before = await conv.bound(ref, lower=False)
        older = await conv.events(after=None, before=before, limit=max(1, limit // 2), latest=True)
        start = before - 1 if before is not None else None
        newer = await conv.events(after=start, before=None, limit=limit - len(older), latest=False)
        return older + newer
    # BETWEEN: exclusive of both ends, from the first towards the second.
    first_low = await conv.bound(ref, lower=True)
    first_high = await conv.bound(ref, lower=False)
    second_low = await conv.bound(ref2, lower=True)
    second_high = await conv.bound(ref2, lower=False)
    if ref2 == "*":
        raise HistoryError("INVALID_PARAMS", "a reference is needed")
    if (first_high or 0) <= (second_high or 0):
        return await conv.events(after=first_low, before=second_high, limit=limit, latest=False)
    return await conv.events(after=second_low, before=first_high, limit=limit, latest=True)


def _send_batch(client: IrcClient, target: str, events: list[Any]) -> None:
    playback = client.has("draft/event-playback")
    # History always carries its time and msgid, the point of fetching it.
    flags = client.outbox.flags | render.SERVER_TIME | render.MESSAGE_TAGS
    batch = client.has("batch")
    ref = client.new_batch_id()
    if batch:
        client.send("BATCH", "+" + ref, "chathistory", target)
    tags = {"batch": ref} if batch else None
    for event in events:
        if not playback and not isinstance(event, MESSAGES):
            continue
        if isinstance(event, p.PrivateMessage):
            mine = client.session.user is not None and event.user.lower() == client.session.user.key
            to = event.to if mine else client.me
            client.send_raw(render.event_line(event, flags, to=to, extra=tags))
        else:
            client.send_raw(render.event_line(event, flags, extra=tags))
    if batch:
        client.send("BATCH", "-" + ref)


async def _targets(client: IrcClient, line: Line) -> None:
    if len(line.params) < 4 or not line.params[3].isdigit():
        raise HistoryError("INVALID_PARAMS", "Usage: CHATHISTORY TARGETS <timestamp=> <timestamp=> <limit>")
    refs = []
    for ref in line.params[1:3]:
        kind, _, value = ref.partition("=")
        if kind != "timestamp":
            raise HistoryError("INVALID_PARAMS", "TARGETS takes timestamps")
        refs.append(parse_time(value).timestamp())
    since, until = min(refs), max(refs)
    limit = max(1, min(int(line.params[3]), MAX_LIMIT))
    chat = client.chat
    found: list[tuple[float, str]] = []
    for name in client.session.rooms:
        room = chat.room_here(name)
        if room is None:
            continue
        events, _more = await chat.room_events(room, after=None, before=None, limit=1, latest=True)
        if events and since < events[-1].ts.timestamp() < until:
            found.append((events[-1].ts.timestamp(), render.channel(room.name)))
    user = client.session.user
    if user is not None and not user.guest:
        for peer, last in await chat.store.private_peers(user.name, since=since, until=until, limit=limit):
            session = client.find(peer)
            found.append((last, client.nick_of(session) if session is not None else peer))
    found.sort()
    ref = client.new_batch_id()
    batch = client.has("batch")
    if batch:
        client.send("BATCH", "+" + ref, "draft/chathistory-targets")
    for ts, target in found[:limit]:
        stamp = render.server_time(datetime.fromtimestamp(ts, UTC))
        client.send("CHATHISTORY", "TARGETS", target, "timestamp=" + stamp, tags={"batch": ref} if batch else None)
    if batch:
        client.send("BATCH", "-" + ref)
