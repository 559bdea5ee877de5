"""The core frames: accounts, rooms, messages, history, lists.

Request types are the original UtuVox command names without the slash, so that text mode and JSON
map one to one. Field names here are public API: bots are written against them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from .base import Cursor, Event, PageLimit, Reply, Request, Seq
from .names import Name, NewName, NewRoomName, Password

Text = Annotated[str, StringConstraints(min_length=1)]


def _check_client_tags(tags: dict[str, str] | None) -> dict[str, str] | None:
    if tags is None:
        return None
    if any(not k.startswith("+") or len(k) < 2 or any(c in k for c in "; =\r\n\0") for k in tags):
        raise ValueError("client tags are named '+name'")
    if sum(len(k) + len(v) + 2 for k, v in tags.items()) > 4094:
        raise ValueError("client tags are at most 4094 bytes")
    return tags


# IRCv3 client-only tags (``+name``) that travel with a message (a reply's reference, a reaction...).
ClientTags = Annotated[dict[str, str] | None, AfterValidator(_check_client_tags)]


# --- requests -----------------------------------------------------------------------------------


class Register(Request):
    type: Literal["register"] = "register"
    username: NewName
    password: Password
    admin_key: str | None = None
    bot: bool = False
    anonymous: ClassVar[bool] = True


class Login(Request):
    type: Literal["login"] = "login"
    username: Name
    password: Password
    anonymous: ClassVar[bool] = True


class ChangePassword(Request):
    type: Literal["changepassword"] = "changepassword"
    old_password: Password
    new_password: Password


class Create(Request):
    type: Literal["create"] = "create"
    room: NewRoomName


class Join(Request):
    type: Literal["join"] = "join"
    room: Name


class Leave(Request):
    type: Literal["leave"] = "leave"
    room: Name | None = None
    reason: Annotated[str, StringConstraints(max_length=300)] | None = None


class Message(Request):
    type: Literal["message"] = "message"
    pipelined: ClassVar[bool] = True
    text: Text
    room: Name | None = None
    # An action, IRC's /me: "alice waves" rather than "alice: waves". Left out (not false) otherwise.
    action: bool | None = None
    notice: bool | None = None  # an IRC NOTICE: by convention, bots never answer one
    tags: ClientTags = None


class Msg(Request):
    """A private message to every session of one user."""

    type: Literal["msg"] = "msg"
    to: Name
    text: Text
    notice: bool | None = None  # an IRC NOTICE
    tags: ClientTags = None


class History(Request):
    """A page of a room's history. By sequence number (``before``, ``after``) or by time (``before_ts``,
    ``after_ts``); with only a lower bound the page is the oldest events after it, else the newest."""

    type: Literal["history"] = "history"
    room: Name | None = None  # the current room when left out
    before: Seq | None = None
    limit: int | None = Field(default=None, ge=1, le=500)
    after: int | None = Field(default=None, ge=0)
    before_ts: datetime | None = None
    after_ts: datetime | None = None


class PrivateHistory(Request):
    """A page of the private conversation with ``user``, paged by the messages' ``seq`` like a room."""

    type: Literal["private_history"] = "private_history"
    user: Name
    before: int | None = Field(default=None, ge=1)
    after: int | None = Field(default=None, ge=0)
    limit: int | None = Field(default=None, ge=1, le=500)
    before_ts: datetime | None = None
    after_ts: datetime | None = None


TopicText = Annotated[str, StringConstraints(max_length=390)]


class Topic(Request):
    """Read a room's topic, or set it (``text``; empty clears it): the room's creator or an admin."""

    type: Literal["topic"] = "topic"
    room: Name
    text: TopicText | None = None


class ListAllUsers(Request):
    """Online users, a page at a time: at most ``limit`` (or the server's page size) after ``after``."""

    type: Literal["list_all_users"] = "list_all_users"
    limit: PageLimit | None = None
    after: Cursor | None = None


class ListUsersInRoom(Request):
    type: Literal["list_users_in_room"] = "list_users_in_room"
    room: Name | None = None


class ListAllRooms(Request):
    """Rooms by name, a page at a time: at most ``limit`` (or the server's page size) after ``after``."""

    type: Literal["list_all_rooms"] = "list_all_rooms"
    limit: PageLimit | None = None
    after: Cursor | None = None


class WhoAmI(Request):
    type: Literal["whoami"] = "whoami"
    anonymous: ClassVar[bool] = True


class WhereAmI(Request):
    type: Literal["whereami"] = "whereami"
    anonymous: ClassVar[bool] = True


class Help(Request):
    type: Literal["help"] = "help"
    anonymous: ClassVar[bool] = True


class Quit(Request):
    type: Literal["quit"] = "quit"
    anonymous: ClassVar[bool] = True


class Ping(Request):
    """Keepalive and round-trip probe; answered with ``pong``."""

    type: Literal["ping"] = "ping"
    anonymous: ClassVar[bool] = True


# --- replies ------------------------------------------------------------------------------------


class Ok(Reply):
    """Success with nothing more to say. For ``message``, also the room and sequence number stored."""

    type: Literal["ok"] = "ok"
    room: str | None = None
    seq: int | None = None


class Error(Reply):
    type: Literal["error"] = "error"
    code: str
    message: str
    retry_after: float | None = None


class LoggedIn(Reply):
    """Answer to ``register`` and ``login``."""

    type: Literal["logged_in"] = "logged_in"
    user: str
    is_admin: bool = False
    is_bot: bool = False
    registered: bool = False


class UserInfo(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    is_admin: bool = False
    is_bot: bool = False


class RoomInfo(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    members: int = 0


class Joined(Reply):
    """Answer to ``join`` and ``create``: the room's recent history, oldest first."""

    type: Literal["joined"] = "joined"
    room: str
    created: bool = False
    history: list[RoomEventUnion] = Field(default_factory=list)
    last_seq: int = 0
    topic: str | None = None
    topic_by: str | None = None
    topic_ts: datetime | None = None


class Left(Reply):
    type: Literal["left"] = "left"
    room: str
    current: str | None = None


class HistoryPage(Reply):
    """A page of a room's history, oldest first. ``more`` says whether older events exist."""

    type: Literal["history_page"] = "history_page"
    room: str
    events: list[RoomEventUnion]
    more: bool


class PrivateHistoryPage(Reply):
    """A page of a private conversation, oldest first. ``more`` says whether older messages exist."""

    type: Literal["private_history_page"] = "private_history_page"
    user: str
    messages: list[PrivateMessage]
    more: bool


class RoomTopic(Reply):
    """Answer to ``topic``: the room's topic (``null`` when none is set), who set it and when."""

    type: Literal["room_topic"] = "room_topic"
    room: str
    topic: str | None = None
    by: str | None = None
    set_at: datetime | None = None


class UserList(Reply):
    """Online users (each once) for ``list_all_users``; a room's members for ``list_users_in_room``."""

    type: Literal["user_list"] = "user_list"
    room: str | None = None
    users: list[UserInfo]
    next: str | None = None  # list_all_users: the ``after`` of the next page; absent on the last one


class RoomList(Reply):
    type: Literal["room_list"] = "room_list"
    rooms: list[RoomInfo]
    next: str | None = None  # the ``after`` of the next page; absent on the last one


class WhoAmIReply(Reply):
    type: Literal["you_are"] = "you_are"
    user: str | None = None
    is_admin: bool = False
    is_bot: bool = False


class WhereAmIReply(Reply):
    type: Literal["you_are_in"] = "you_are_in"
    room: str | None = None
    rooms: list[str] = Field(default_factory=list)


class HelpReply(Reply):
    type: Literal["help_text"] = "help_text"
    commands: list[str]
    admin_commands: list[str] = Field(default_factory=list)


class Pong(Reply):
    type: Literal["pong"] = "pong"


class Goodbye(Reply):
    """The server is closing this connection; ``reason`` says why (quit, ban, kick, slow, shutdown)."""

    type: Literal["bye"] = "bye"
    reason: str
    code: str = "bye"


# --- events -------------------------------------------------------------------------------------


class RoomEvent(Event):
    room: str
    seq: int
    user: str
    # The sender's IRC nick, where it differs from the account name; guests (IRC, nick only) and bots
    # are marked.
    nick: str | None = None
    guest: bool | None = None
    bot: bool | None = None


class MessageEvent(RoomEvent):
    type: Literal["message"] = "message"
    text: str
    action: bool | None = None  # /me: shown as "* alice waves"; absent for an ordinary message
    notice: bool | None = None
    tags: dict[str, str] | None = None


class JoinEvent(RoomEvent):
    type: Literal["join"] = "join"


class LeaveEvent(RoomEvent):
    """Someone left the room; ``quit`` when it was because their connection ended."""

    type: Literal["leave"] = "leave"
    reason: str | None = None
    quit: bool | None = None


class FileEvent(RoomEvent):
    """A file was uploaded to (``action="upload"``) or downloaded from a room."""

    type: Literal["file"] = "file"
    action: Literal["upload", "download"] = "upload"
    name: str
    original: str
    size: int
    sha256: str


RoomEventUnion = Annotated[MessageEvent | JoinEvent | LeaveEvent | FileEvent, Field(discriminator="type")]


class PrivateMessage(Event):
    """A private message; ``seq`` numbers it in the conversation of its two people (stored ones)."""

    type: Literal["msg"] = "msg"
    user: str
    to: str
    text: str
    seq: int | None = None
    nick: str | None = None
    guest: bool | None = None
    bot: bool | None = None
    notice: bool | None = None
    tags: dict[str, str] | None = None


class TopicEvent(Event):
    """A room's topic was set (or cleared: ``topic`` is ``null``)."""

    type: Literal["topic"] = "topic"
    room: str
    user: str
    topic: str | None = None
    nick: str | None = None


class RoomDeleted(Event):
    type: Literal["room_deleted"] = "room_deleted"
    room: str
    by: str


class Announcement(Event):
    type: Literal["announce"] = "announce"
    text: str
    room: str | None = None
    by: str


class Notice(Event):
    """A line from the server for people (welcome text, shutdown warning...)."""

    type: Literal["notice"] = "notice"
    text: str


class Keepalive(Event):
    """Sent by the server to a quiet JSON connection so that a peer that vanished is noticed. Carries
    nothing: clients ignore it (and need not answer)."""

    type: Literal["keepalive"] = "keepalive"


Joined.model_rebuild()
HistoryPage.model_rebuild()
PrivateHistoryPage.model_rebuild()

REQUESTS: list[type[Request]] = [
    Register, Login, ChangePassword, Create, Join, Leave, Message, Msg, History, PrivateHistory, Topic,
    ListAllUsers, ListUsersInRoom, ListAllRooms, WhoAmI, WhereAmI, Help, Quit, Ping,
]  # fmt: skip
REPLIES: list[type[Reply]] = [
    Ok, Error, LoggedIn, Joined, Left, HistoryPage, PrivateHistoryPage, RoomTopic, UserList, RoomList,
    WhoAmIReply, WhereAmIReply, HelpReply, Pong, Goodbye,
]  # fmt: skip
EVENTS: list[type[Event]] = [
    MessageEvent, JoinEvent, LeaveEvent, FileEvent, PrivateMessage, TopicEvent, RoomDeleted, Announcement, Notice,
    Keepalive,
]  # fmt: skip
