"""Rooms: create, join, leave, and their topics."""

from __future__ import annotations

from utuvox.protocol import Code, ProtocolError, Reply
from utuvox.protocol import core as p

from ..service import Call


async def create(call: Call, req: p.Create) -> Reply:
    room = await call.chat.create_room(call.session, req.room)
    joined = await call.chat.enter(call.session, room, req)
    return joined.model_copy(update={"created": True})


async def join(call: Call, req: p.Join) -> Reply:
    chat, session = call.chat, call.session
    room = await chat.find_room(req.room)
    if room.name not in session.rooms:
        chat.check_join(session, room)
    return await chat.enter(session, room, req)


async def leave(call: Call, req: p.Leave) -> Reply:
    assert call.room is not None  # a member command
    await call.chat.part(call.session, call.room, req.reason or None)
    return p.Left(re=req.id, room=call.room.name, current=call.session.current_room)


async def topic(call: Call, req: p.Topic) -> Reply:
    chat, session = call.chat, call.session
    me = chat.identity(session)
    room = chat.room(req.room)
    if req.text is None:
        info = chat.topic_of(room)
        return p.RoomTopic(re=req.id, room=room.name, topic=info.get("topic"), by=info.get("topic_by"),
                           set_at=info.get("topic_ts"))
    if room.name not in session.rooms and not session.is_operator:
        raise ProtocolError(Code.NOT_IN_ROOM, f"You are not in room '{room.name}'.")
    # A guest who created a room keeps its rights while it holds the name.
    creator = room.created_by is not None and room.created_by.lower() == me.key
    if not (creator or me.is_admin):
        raise ProtocolError(Code.FORBIDDEN, f"Only the creator of room '{room.name}' or an admin may set its topic.")
    await chat.set_topic(session, room, req.text or None)
    return p.Ok(re=req.id)
