"""Who and where: the lists of users and rooms, whoami, whereami, help; and ping and quit."""

from __future__ import annotations

import trio

from utuvox.protocol import Reply
from utuvox.protocol import core as p
from utuvox.protocol.text_commands import COMMANDS

from ..elsewhere import SingleNode
from ..service import Call
from ..session import Identity, let_others_in


def _info(user: Identity) -> p.UserInfo:
    return p.UserInfo(name=user.name, is_admin=user.is_admin, is_bot=user.is_bot)


async def list_all_users(call: Call, req: p.ListAllUsers) -> Reply:
    chat = call.chat
    await trio.lowlevel.checkpoint()  # pipelined listings take turns with everyone else's requests
    size = chat.page_size(req.limit)
    if isinstance(chat.elsewhere, SingleNode):
        users, next_key = chat.online_page(req.after, size)
        return p.UserList(re=req.id, users=[_info(u) for u in users], next=next_key)
    # Several nodes: everyone online anywhere, sorted here, then the page.
    seen = {u.key: _info(u) for u in chat.online_users()}
    for r in chat.elsewhere.sessions():
        if r.user is not None and r.user.lower() not in seen:
            seen[r.user.lower()] = p.UserInfo(name=r.user, is_admin=r.is_admin, is_bot=r.is_bot)
    after = (req.after or "").lower()
    ordered = [seen[k] for k in sorted(seen) if k > after]
    return p.UserList(re=req.id, users=ordered[:size],
                      next=ordered[size - 1].name.lower() if len(ordered) > size else None)


async def list_users_in_room(call: Call, req: p.ListUsersInRoom) -> Reply:
    chat = call.chat
    room = chat.room(req.room) if req.room else chat.my_room(call.session, None)
    return p.UserList(re=req.id, room=room.name, users=chat.unique_users(room))


async def list_all_rooms(call: Call, req: p.ListAllRooms) -> Reply:
    chat = call.chat
    await trio.lowlevel.checkpoint()  # pipelined listings take turns with everyone else's requests
    rooms, next_key = chat.rooms_page(req.after, chat.page_size(req.limit))
    return p.RoomList(re=req.id, rooms=[p.RoomInfo(name=r.name, members=len(chat.unique_users(r))) for r in rooms],
                      next=next_key)


async def whoami(call: Call, req: p.WhoAmI) -> Reply:
    me = call.session.user
    return p.WhoAmIReply(re=req.id, user=me.name if me else None, is_admin=bool(me and me.is_admin),
                         is_bot=bool(me and me.is_bot))


async def whereami(call: Call, req: p.WhereAmI) -> Reply:
    session = call.session
    return p.WhereAmIReply(re=req.id, room=session.current_room, rooms=list(session.rooms))


async def help_(call: Call, req: p.Help) -> Reply:
    def line(usage: str, description: str) -> str:
        return f"{usage} - {description}"

    commands = [line(c.usage, c.description) for c in COMMANDS.values() if not c.admin]
    admin = [line(c.usage, c.description) for c in COMMANDS.values() if c.admin] if call.session.is_operator else []
    return p.HelpReply(re=req.id, commands=commands, admin_commands=admin)


async def ping(call: Call, req: p.Ping) -> Reply:
    await let_others_in()
    return p.Pong(re=req.id)


async def quit_(call: Call, req: p.Quit) -> None:
    # Like every request, a quit is handled once the messages sent before it are answered, so a client
    # that says something and leaves knows it was stored.
    call.session.peer.close("Goodbye.", "quit")
    return None
