"""Administration frames: the original UtuVox admin commands, and the operator requests beyond them.

Every request here is ``admin_only``: the chat layer answers it on the admin socket (an operator) or in
the session of a logged-in admin user, and refuses it with ``forbidden`` everywhere else. Request types
are the original's command names without the slash (``delete_room``, ``ban_user``...), so text mode and
JSON map one to one. No reply or event here ever carries a password or the admin key.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from .base import Cursor, Event, PageLimit, Reply, Request, Seq
from .core import Text
from .names import Name, NewName, Password

# A new admin key: no whitespace (it is typed as one word after /register), long enough not to guess.
AdminKeyText = Annotated[str, StringConstraints(min_length=16, max_length=256, pattern=r"^\S+$")]
Reason = Annotated[str, StringConstraints(min_length=1, max_length=200)]


class AdminRequest(Request):
    admin_only: ClassVar[bool] = True


# --- the original's admin commands ---------------------------------------------------------------


class DeleteRoom(AdminRequest):
    """Delete a room and its history, even with members inside: they get ``room_deleted``."""

    type: Literal["delete_room"] = "delete_room"
    room: Name


class AddUser(AdminRequest):
    type: Literal["add_user"] = "add_user"
    username: NewName
    password: Password = Field(repr=False)
    is_admin: bool = False
    bot: bool = False


class EditUser(AdminRequest):
    """Change a user's password, admin status or bot flag; fields left out are kept."""

    type: Literal["edit_user"] = "edit_user"
    username: Name
    new_password: Password | None = Field(default=None, repr=False)
    is_admin: bool | None = None
    bot: bool | None = None


class ViewUsers(AdminRequest):
    """Every registered user, with admin, bot and ban status."""

    type: Literal["view_users"] = "view_users"
    limit: PageLimit | None = None  # a page at a time: at most this many (or the server's page size)
    after: Cursor | None = None  # the ``next`` of the page before


class ViewRoomHistory(AdminRequest):
    """A page of a room's history (messages, joins, leaves, files), without joining it."""

    type: Literal["view_room_history"] = "view_room_history"
    room: Name
    before: Seq | None = None
    limit: int | None = Field(default=None, ge=1, le=500)


class BanUser(AdminRequest):
    """Ban a user: every session of theirs is disconnected at once, and their logins are refused."""

    type: Literal["ban_user"] = "ban_user"
    username: Name
    reason: Reason | None = None


class UnbanUser(AdminRequest):
    type: Literal["unban_user"] = "unban_user"
    username: Name


class ChangeAdminKey(AdminRequest):
    type: Literal["change_admin_key"] = "change_admin_key"
    new_key: AdminKeyText = Field(repr=False)


# --- operator requests beyond the original -------------------------------------------------------


class Who(AdminRequest):
    """Every connected session: user, transport, address, rooms, connected since."""

    type: Literal["who"] = "who"
    limit: PageLimit | None = None  # a page at a time: at most this many (or the server's page size)
    after: Seq | None = None  # the ``next`` of the page before (a session id)


class Kick(AdminRequest):
    """Disconnect one session (``session``, an id from ``who``) or every session of a user (``username``)."""

    type: Literal["kick"] = "kick"
    username: Name | None = None
    session: Seq | None = None
    reason: Reason | None = None

    @model_validator(mode="after")
    def _one_target(self) -> Kick:
        if (self.username is None) == (self.session is None):
            raise ValueError("give exactly one of 'username' and 'session'")
        return self


class Announce(AdminRequest):
    """A server announcement to everyone connected, or to the members of one room."""

    type: Literal["announce"] = "announce"
    text: Text
    room: Name | None = None


class Stats(AdminRequest):
    type: Literal["stats"] = "stats"


class AdminLogQuery(AdminRequest):
    """The admin log, newest last; filter by who acted (``actor``), ``action`` and ``since`` a time."""

    type: Literal["admin_log"] = "admin_log"
    actor: str | None = Field(default=None, max_length=64)
    action: str | None = Field(default=None, max_length=64)
    since: datetime | None = None
    limit: int = Field(default=50, ge=1, le=1000)


class Tail(AdminRequest):
    """Receive the events of every room (or of one), as they happen, until ``untail`` or disconnection."""

    type: Literal["tail"] = "tail"
    room: Name | None = None


class Untail(AdminRequest):
    type: Literal["untail"] = "untail"


# --- replies -------------------------------------------------------------------------------------


class AccountInfo(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    is_admin: bool = False
    is_bot: bool = False
    banned: bool = False
    ban_reason: str | None = None
    created_at: datetime | None = None
    sessions: int = 0  # connected sessions right now


class UserTable(Reply):
    """Answer to ``view_users``: every registered user, by name."""

    type: Literal["user_table"] = "user_table"
    users: list[AccountInfo]
    next: str | None = None  # the ``after`` of the next page; absent on the last one


class SessionInfo(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: int
    user: str | None = None
    is_admin: bool = False
    transport: str
    address: str
    rooms: list[str] = Field(default_factory=list)
    connected_at: datetime
    operator: str | None = None  # the OS user, on the admin socket
    tailing: bool = False
    bytes_sent: int = 0
    node: str | None = None  # the server process (node of a cluster) the session is connected to
    queued_bytes: int = 0  # waiting in the server for this client to read


class SessionList(Reply):
    """Answer to ``who``."""

    type: Literal["session_list"] = "session_list"
    sessions: list[SessionInfo]
    next: int | None = None  # the ``after`` of the next page; absent on the last one


class Kicked(Reply):
    """Answer to ``kick``: how many sessions were disconnected."""

    type: Literal["kicked"] = "kicked"
    user: str | None = None
    session: int | None = None
    count: int


class ServerStats(Reply):
    """Answer to ``stats``. Rates are over the last few seconds; totals are since the server started."""

    type: Literal["server_stats"] = "server_stats"
    started_at: datetime
    uptime: float  # seconds
    connections: int  # connected now
    by_transport: dict[str, int] = Field(default_factory=dict)
    connections_total: int  # accepted since start
    users_online: int
    users_registered: int
    rooms: int
    messages: int  # room messages stored since start
    messages_per_second: float
    bytes_sent: int
    bytes_per_second: float
    node: str | None = None  # the node that answered: every figure above is this node's own
    nodes: list[str] = Field(default_factory=list)  # every live node of the cluster, this one included
    queued_bytes: int = 0  # waiting in the server for clients to read, all connections
    queued_bytes_max: int = 0  # the most one connection has waiting
    slow_consumers: int = 0  # connections cut off since start for falling behind in reading
    open_files: int = 0  # file descriptors the server has open
    max_open_files: int = 0  # its limit (RLIMIT_NOFILE, soft)
    refused_busy: int = 0  # connections refused since start for want of file descriptors


class AdminLogEntry(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: int
    ts: datetime
    actor: str  # a user name, or console:<os user>
    via: str  # tcp, ws or admin
    action: str
    target: str | None = None
    outcome: str  # ok, or the error code
    detail: str | None = None


class AdminLogPage(Reply):
    """Answer to ``admin_log``: entries oldest first."""

    type: Literal["admin_log_page"] = "admin_log_page"
    entries: list[AdminLogEntry]


# --- events --------------------------------------------------------------------------------------


class AdminAction(Event):
    """Sent to the other operators on the admin socket when an admin changes something."""

    type: Literal["admin_action"] = "admin_action"
    actor: str
    action: str
    target: str | None = None
    outcome: str = "ok"
    detail: str | None = None


REQUESTS: list[type[Request]] = [
    DeleteRoom, AddUser, EditUser, ViewUsers, ViewRoomHistory, BanUser, UnbanUser, ChangeAdminKey,
    Who, Kick, Announce, Stats, AdminLogQuery, Tail, Untail,
]  # fmt: skip
REPLIES: list[type[Reply]] = [UserTable, SessionList, Kicked, ServerStats, AdminLogPage]
EVENTS: list[type[Event]] = [AdminAction]
