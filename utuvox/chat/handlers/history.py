"""History: a room's events and a conversation's private messages, a page at a time, by seq or by time."""

from __future__ import annotations

from utuvox.protocol import Code, ProtocolError, Reply
from utuvox.protocol import core as p

from ..service import Call


async def room_history(call: Call, req: p.History) -> Reply:
    chat, session = call.chat, call.session
    room = chat.room(req.room) if req.room else chat.my_room(session, None)
    if room.name not in session.rooms and not session.is_operator:
        raise ProtocolError(Code.NOT_IN_ROOM, f"Join room '{room.name}' to read its history.")
    limit = min(req.limit or chat.config.join_history, chat.config.history_page_max)
    if req.after is None and req.after_ts is None and req.before_ts is None:
        events, more = await chat.history_page(room, req.before, limit, peer=session.peer)
        return p.HistoryPage(re=req.id, room=room.name, events=events, more=more)
    after, before = req.after, req.before
    if req.after_ts is not None:
        after = max(after or 0, await chat.seq_after(room, req.after_ts))
    if req.before_ts is not None:
        at = await chat.store.seq_at(room.id, req.before_ts.timestamp())
        before = at if before is None else min(before, at)
    events, more = await chat.room_events(room, after=after, before=before, limit=limit, latest=after is None)
    return p.HistoryPage(re=req.id, room=room.name, events=events, more=more)


async def private_history(call: Call, req: p.PrivateHistory) -> Reply:
    chat = call.chat
    me = chat.identity(call.session)
    user = await chat.store.get_user(req.user)
    if user is None:
        raise ProtocolError(Code.NO_SUCH_USER, f"User '{req.user}' does not exist.")
    limit = min(req.limit or chat.config.join_history, chat.config.history_page_max)
    after, before = req.after, req.before
    if req.after_ts is not None:
        at = await chat.store.private_id_at(me.name, user.name, req.after_ts.timestamp() + 1e-6)
        after = max(after or 0, at - 1)
    if req.before_ts is not None:
        at = await chat.store.private_id_at(me.name, user.name, req.before_ts.timestamp())
        before = at if before is None else min(before, at)
    messages, more = await chat.private_events(me, user.name, after=after, before=before, limit=limit,
                                               latest=after is None)
    return p.PrivateHistoryPage(re=req.id, user=user.name, messages=messages, more=more)
