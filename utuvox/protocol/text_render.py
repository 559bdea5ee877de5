"""Text mode's presentation: replies and events as ``[YYYY-MM-DD HH:MM:SS] ...`` lines worded like the
original UtuVox.

Each reply and event model has one renderer, registered on a :func:`functools.singledispatch` function:
:func:`event_line` for events, :func:`reply_lines` for replies, and :func:`ok_line` for the plain ``ok``,
whose wording depends on the request it answers. A module that adds a model registers its renderer with
``@reply_lines.register`` (or the others); a model without one reads as its type and fields.

Nothing here knows about sessions: what a renderer needs of the session (the request a reply answers, the
current room) is passed in. Every text a person wrote goes through :func:`~.safe_text.clean` (an ANSI
escape in a message could otherwise rewrite a reader's screen); names and codes are already restricted by
the schema.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import singledispatch

from . import admin, core, files
from .base import Event, Frame, Request
from .safe_text import clean
from .units import byte_size, duration

Line = str | tuple[datetime, str]
"""A line of a reply: a text shown at the time of the reply, or ``(ts, text)`` for a line that keeps the
time it happened (an event of a history page, an entry of a log)."""


def stamp(ts: datetime) -> str:
    """``[YYYY-MM-DD HH:MM:SS]`` in UTC."""
    return ts.astimezone(UTC).strftime("[%Y-%m-%d %H:%M:%S]")


def render(frame: Frame, *, request: Request | None = None, current_room: str | None = None,
           now: datetime | None = None) -> str:
    """Render a reply or an event as text-mode lines, each ending with a newline ('' for none)."""
    if isinstance(frame, Event):
        return f"{stamp(frame.ts)} {event_line(frame, current_room)}\n"
    ts = stamp(now or datetime.now(UTC))
    return "".join(f"{ts} {line}\n" if isinstance(line, str) else f"{stamp(line[0])} {line[1]}\n"
                   for line in reply_lines(frame, request))


def render_lines(frame: Frame, *, request: Request | None = None, current_room: str | None = None,
                 now: datetime | None = None) -> list[tuple[datetime, str]]:
    """The lines of :func:`render` as (time, text) pairs, for a front end that shows times its own way."""
    if isinstance(frame, Event):
        return [(frame.ts, event_line(frame, current_room))]
    at = now or datetime.now(UTC)
    return [(at, line) if isinstance(line, str) else line for line in reply_lines(frame, request)]


def _fallback(frame: Frame) -> str:
    """A frame without a renderer of its own: its type and fields."""
    fields = frame.model_dump(mode="json", exclude_none=True, exclude={"type", "re", "ts"})
    detail = ", ".join(f"{k}={v}" for k, v in fields.items())
    return clean(f"{frame.type}: {detail}" if detail else frame.type)


# --- events -------------------------------------------------------------------------------------


@singledispatch
def event_line(event: Event, current_room: str | None) -> str:
    """The line of an event without its timestamp, as it appears live and in history. A message from a
    room other than ``current_room`` names its room."""
    return _fallback(event)


@event_line.register
def _message(event: core.MessageEvent, current_room: str | None) -> str:
    where = "" if event.room == current_room else f"[{event.room}] "
    if event.action:
        return f"{where}* {event.user} {clean(event.text)}"
    return f"{where}{event.user}: {clean(event.text)}"


@event_line.register
def _join(event: core.JoinEvent, current_room: str | None) -> str:
    return f"User {event.user} joined room '{event.room}'"


@event_line.register
def _leave(event: core.LeaveEvent, current_room: str | None) -> str:
    return f"User {event.user} left room '{event.room}'"


@event_line.register
def _file(event: core.FileEvent, current_room: str | None) -> str:
    if event.action == "download":
        return f"User {event.user} downloaded file '{event.name}'"
    return f"User {event.user} uploaded file '{event.name}' (Original: {clean(event.original)})"


@event_line.register
def _private(event: core.PrivateMessage, current_room: str | None) -> str:
    return f"[private] {event.user}: {clean(event.text)}"


@event_line.register
def _topic_set(event: core.TopicEvent, current_room: str | None) -> str:
    if event.topic is None:
        return f"{event.user} cleared the topic of room '{event.room}'"
    return f"{event.user} set the topic of room '{event.room}': {clean(event.topic)}"


@event_line.register
def _room_deleted(event: core.RoomDeleted, current_room: str | None) -> str:
    return f"Room '{event.room}' was deleted by {event.by}."


@event_line.register
def _announcement(event: core.Announcement, current_room: str | None) -> str:
    where = f" to room '{event.room}'" if event.room else ""
    return f"[ANNOUNCEMENT{where}] {clean(event.text)}"


@event_line.register
def _notice(event: core.Notice, current_room: str | None) -> str:
    return clean(event.text)


@event_line.register
def _admin_action(event: admin.AdminAction, current_room: str | None) -> str:
    target = f" '{event.target}'" if event.target else ""
    detail = f" ({clean(event.detail)})" if event.detail else ""
    return f"[admin] {event.actor}: {event.action}{target} -> {event.outcome}{detail}"


# --- replies ------------------------------------------------------------------------------------


@singledispatch
def reply_lines(reply: Frame, request: Request | None) -> list[Line]:
    """The lines of a reply, given the request it answers (``None``: a reply nobody asked for)."""
    return [_fallback(reply)]


def _more(command: str, after: str | None) -> str:
    """The end of a listing's line when more pages follow."""
    return f" (more: /{command} {after})" if after else ""


def _users(users: list[core.UserInfo]) -> str:
    return ", ".join(u.name + (" (bot)" if u.is_bot else "") for u in users)


def _history(events: list[core.RoomEventUnion], room: str) -> list[Line]:
    return [(e.ts, event_line(e, room)) for e in events]


@reply_lines.register
def _ok(reply: core.Ok, request: Request | None) -> list[Line]:
    line = ok_line(request, reply)
    return [] if line is None else [line]


@reply_lines.register
def _error(reply: core.Error, request: Request | None) -> list[Line]:
    return [f"Error: {clean(reply.message)}"]


@reply_lines.register
def _logged_in(reply: core.LoggedIn, request: Request | None) -> list[Line]:
    if reply.registered:
        return [f"Registration successful as {'admin' if reply.is_admin else 'user'}."]
    return ["Login successful."]


@reply_lines.register
def _joined(reply: core.Joined, request: Request | None) -> list[Line]:
    lines: list[Line] = []
    if reply.created:
        lines.append(f"Room '{reply.room}' created successfully.")
    if reply.topic:
        lines.append(f"Topic of '{reply.room}': {clean(reply.topic)}")
    if reply.history:
        lines += [f"Chat history for '{reply.room}':", *_history(reply.history, reply.room)]
    lines.append(f"You joined room '{reply.room}'.")
    return lines


@reply_lines.register
def _left(reply: core.Left, request: Request | None) -> list[Line]:
    return [f"You left room '{reply.room}'."]


@reply_lines.register
def _history_page(reply: core.HistoryPage, request: Request | None) -> list[Line]:
    if not reply.events:
        return [f"No history for '{reply.room}'."]
    return [f"Chat history for '{reply.room}':", *_history(reply.events, reply.room)]


@reply_lines.register
def _private_history_page(reply: core.PrivateHistoryPage, request: Request | None) -> list[Line]:
    if not reply.messages:
        return [f"No private messages with {reply.user}."]
    return [f"Private messages with {reply.user}:", *((m.ts, f"{m.user}: {clean(m.text)}") for m in reply.messages)]


@reply_lines.register
def _room_topic(reply: core.RoomTopic, request: Request | None) -> list[Line]:
    if reply.topic:
        return [f"Topic of '{reply.room}': {clean(reply.topic)}"]
    return [f"Room '{reply.room}' has no topic."]


@reply_lines.register
def _user_list(reply: core.UserList, request: Request | None) -> list[Line]:
    if reply.room is not None:
        return [f"Users in room '{reply.room}': {_users(reply.users)}"]
    if not reply.users:
        return ["No users online."]
    return [f"Online users: {_users(reply.users)}{_more('list_all_users', reply.next)}"]


@reply_lines.register
def _room_list(reply: core.RoomList, request: Request | None) -> list[Line]:
    if not reply.rooms:
        return ["No rooms available."]
    rooms = ", ".join(f"{r.name} ({r.members})" for r in reply.rooms)
    return [f"Available rooms: {rooms}{_more('list_all_rooms', reply.next)}"]


@reply_lines.register
def _who_am_i(reply: core.WhoAmIReply, request: Request | None) -> list[Line]:
    return [f"You are logged in as {reply.user}." if reply.user else "You are not logged in."]


@reply_lines.register
def _where_am_i(reply: core.WhereAmIReply, request: Request | None) -> list[Line]:
    if reply.room is None:
        return ["You are outside any room."]
    others = [r for r in reply.rooms if r != reply.room]
    also = f" (also in: {', '.join(others)})" if len(reply.rooms) > 1 else ""
    return [f"You are in room '{reply.room}'.{also}"]


@reply_lines.register
def _help(reply: core.HelpReply, request: Request | None) -> list[Line]:
    admin_part = ["Admin commands:", *reply.admin_commands] if reply.admin_commands else []
    return ["Available commands:", *reply.commands, *admin_part]


@reply_lines.register
def _pong(reply: core.Pong, request: Request | None) -> list[Line]:
    return ["Pong."]


@reply_lines.register
def _goodbye(reply: core.Goodbye, request: Request | None) -> list[Line]:
    return ["Goodbye." if reply.code == "quit" else f"Disconnected: {clean(reply.reason)}"]


# --- the wording of ok --------------------------------------------------------------------------


@singledispatch
def ok_line(request: Request | None, reply: core.Ok) -> str | None:
    """How an ``ok`` reads, by the request it answers; ``None`` when it shows nothing."""
    return "OK."


@ok_line.register
def _ok_message(request: core.Message, reply: core.Ok) -> str | None:
    return None  # the message itself comes back as an event


@ok_line.register
def _ok_changepassword(request: core.ChangePassword, reply: core.Ok) -> str | None:
    return "Password changed successfully."


@ok_line.register
def _ok_msg(request: core.Msg, reply: core.Ok) -> str | None:
    return f"Private message sent to {request.to}."


@ok_line.register
def _ok_topic(request: core.Topic, reply: core.Ok) -> str | None:
    return f"Topic of '{request.room}' set."


@ok_line.register
def _ok_delete_room(request: admin.DeleteRoom, reply: core.Ok) -> str | None:
    return f"Room '{reply.room or request.room}' deleted."


@ok_line.register
def _ok_add_user(request: admin.AddUser, reply: core.Ok) -> str | None:
    return f"User '{request.username}' added as {'admin' if request.is_admin else 'user'}."


@ok_line.register
def _ok_edit_user(request: admin.EditUser, reply: core.Ok) -> str | None:
    return f"User '{request.username}' updated."


@ok_line.register
def _ok_ban_user(request: admin.BanUser, reply: core.Ok) -> str | None:
    return f"User '{request.username}' has been banned."


@ok_line.register
def _ok_unban_user(request: admin.UnbanUser, reply: core.Ok) -> str | None:
    return f"User '{request.username}' has been unbanned."


@ok_line.register
def _ok_change_admin_key(request: admin.ChangeAdminKey, reply: core.Ok) -> str | None:
    return "Admin key changed successfully."


@ok_line.register
def _ok_announce(request: admin.Announce, reply: core.Ok) -> str | None:
    return "Announcement sent" + (f" to room '{reply.room or request.room}'." if request.room else ".")


@ok_line.register
def _ok_tail(request: admin.Tail, reply: core.Ok) -> str | None:
    where = f"Tailing room '{reply.room or request.room}'." if request.room else "Tailing every room."
    return f"{where} /untail to stop."


@ok_line.register
def _ok_untail(request: admin.Untail, reply: core.Ok) -> str | None:
    return "Stopped tailing."


# --- administration -----------------------------------------------------------------------------


def _yes(flag: bool) -> str:
    return "Yes" if flag else "No"


def _account(u: admin.AccountInfo) -> str:
    banned = f"Yes ({clean(u.ban_reason)})" if u.banned and u.ban_reason else _yes(u.banned)
    return (f"Username: {u.name}, Admin: {_yes(u.is_admin)}, Banned: {banned}, Bot: {_yes(u.is_bot)}, "
            f"Online: {_yes(u.sessions > 0)}")


def _session(s: admin.SessionInfo) -> str:
    who = s.user or (f"console:{s.operator}" if s.operator else "anonymous")
    rooms = f" in {', '.join(s.rooms)}" if s.rooms else ""
    node = f" on {clean(s.node)}" if s.node else ""
    return f"#{s.id} {who} ({s.transport} {clean(s.address)}{node}){rooms} since {stamp(s.connected_at)[1:-1]}"


def _log_entry(e: admin.AdminLogEntry) -> Line:
    target = f" '{e.target}'" if e.target else ""
    detail = f" ({clean(e.detail)})" if e.detail else ""
    return e.ts, f"{e.actor} via {e.via}: {e.action}{target} -> {e.outcome}{detail}"


@reply_lines.register
def _user_table(reply: admin.UserTable, request: Request | None) -> list[Line]:
    if not reply.users:
        return ["No users."]
    more = [f"More: /view_users {reply.next}"] if reply.next else []
    return ["Users:", *map(_account, reply.users), *more]


@reply_lines.register
def _session_list(reply: admin.SessionList, request: Request | None) -> list[Line]:
    more = [f"More: /who {reply.next}"] if reply.next is not None else []
    return ["Connected sessions:", *map(_session, reply.sessions), *more]


@reply_lines.register
def _kicked(reply: admin.Kicked, request: Request | None) -> list[Line]:
    if reply.session is not None:
        return [f"Session #{reply.session} kicked."]
    return [f"User '{reply.user}' kicked ({reply.count} session{'s' if reply.count != 1 else ''})."]


@reply_lines.register
def _stats(reply: admin.ServerStats, request: Request | None) -> list[Line]:
    transports = ", ".join(f"{k} {v}" for k, v in sorted(reply.by_transport.items()))
    return [
        "Server statistics:" + (f" node {clean(reply.node)}" if reply.node else "")
        + (f" (cluster: {', '.join(map(clean, reply.nodes))})" if len(reply.nodes) > 1 else ""),
        f"Uptime: {duration(reply.uptime)} (since {stamp(reply.started_at)[1:-1]})",
        f"Connections: {reply.connections}" + (f" ({transports})" if transports else "")
        + f", {reply.connections_total} since start",
        f"Users online: {reply.users_online} of {reply.users_registered} registered",
        f"Rooms: {reply.rooms}",
        f"Messages: {reply.messages} ({reply.messages_per_second:.1f}/s)",
        f"Sent: {byte_size(reply.bytes_sent)} ({byte_size(reply.bytes_per_second)}/s)",
    ]


@reply_lines.register
def _admin_log(reply: admin.AdminLogPage, request: Request | None) -> list[Line]:
    if not reply.entries:
        return ["The admin log has no matching entries."]
    return ["Admin log:", *map(_log_entry, reply.entries)]


# --- file sharing -------------------------------------------------------------------------------


@reply_lines.register
def _file_list(reply: files.FileList, request: Request | None) -> list[Line]:
    if not reply.files:
        return [f"No files in room '{reply.room}'."]
    head = f"Files in room '{reply.room}'" + (f" (the newest {len(reply.files)})" if reply.more else "") + ":"
    width = max(len(x.name) for x in reply.files)
    return [head, *(
        f"  {x.name:<{width}}  {byte_size(x.size):>10}  {x.uploader:<12} {stamp(x.uploaded_at)[1:-1]}"
        f"  (Original: {clean(x.original)})"
        for x in reply.files
    )]


@reply_lines.register
def _uploaded(reply: files.Uploaded, request: Request | None) -> list[Line]:
    return [f"File '{reply.name}' uploaded to room '{reply.room}' (Original: {clean(reply.original)})."]


@reply_lines.register
def _upload_failed(reply: files.UploadFailed, request: Request | None) -> list[Line]:
    return [f"Upload failed: {clean(reply.message)}"]


@reply_lines.register
def _download_end(reply: files.DownloadEnd, request: Request | None) -> list[Line]:
    return [f"Download of '{reply.name}' complete ({byte_size(reply.size)})."]


@reply_lines.register
def _download_failed(reply: files.DownloadFailed, request: Request | None) -> list[Line]:
    return [f"Download failed: {clean(reply.message)}"]
