"""The core's commands: one line per request type, saying what it needs and which handler answers it
(see :class:`utuvox.chat.service.Command`). Files and administration keep their own lists beside their code."""

from __future__ import annotations

from utuvox.protocol import core as p

from ..commands import logins, messages, new_account, own_password
from ..service import Command
from . import accounts, history, info, rooms, talk

CORE: list[Command] = [
    Command(p.Register, accounts.register, rate=new_account),
    Command(p.Login, accounts.login, rate=logins),
    Command(p.ChangePassword, accounts.change_password, rate=own_password),
    Command(p.Create, rooms.create),
    Command(p.Join, rooms.join),
    Command(p.Leave, rooms.leave, member=True),
    Command(p.Topic, rooms.topic),
    Command(p.Message, talk.message, rate=messages, member=True),
    Command(p.Msg, talk.private, rate=messages),
    Command(p.History, history.room_history),
    Command(p.PrivateHistory, history.private_history),
    Command(p.ListAllUsers, info.list_all_users),
    Command(p.ListUsersInRoom, info.list_users_in_room),
    Command(p.ListAllRooms, info.list_all_rooms),
    Command(p.WhoAmI, info.whoami),
    Command(p.WhereAmI, info.whereami),
    Command(p.Help, info.help_),
    Command(p.Ping, info.ping),
    Command(p.Quit, info.quit_),
]
