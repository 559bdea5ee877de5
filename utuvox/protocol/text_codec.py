"""Text mode: slash lines parse into the same request models as JSON; replies and events render as
``[YYYY-MM-DD HH:MM:SS] ...`` lines worded like the original UtuVox.

This is a codec only. Nothing here knows about sessions; what the renderer needs to know of the
session (the request a reply answers, the current room) is passed in.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from . import admin, core, files
from .base import Event, Frame, Request
from .errors import Code, ProtocolError
from .safe_text import clean
from .schema import REQUESTS_BY_TYPE


@dataclass(frozen=True)
class Command:
    """One slash command: the request it builds, its parameters, and its help line.

    A parameter is a field name with an optional marker: ``name?`` is optional, ``name*`` takes the
    rest of the line (so it may contain spaces), ``name?*`` both, and ``name!`` is a 0/1 flag.
    """

    type: str
    params: tuple[str, ...]
    usage: str
    description: str
    admin: bool = False


COMMANDS: dict[str, Command] = {}
# Commands text mode knows (they are in /help) but cannot carry out, by request type: the sentence that
# answers them, with code ``not_supported``.
TEXT_UNSUPPORTED: dict[str, str] = {}


def add_command(name: str, type_: str, params: Iterable[str], usage_args: str, description: str, *,
                admin: bool = False) -> None:
    usage = f"/{name} {usage_args}".rstrip()
    COMMANDS[name] = Command(type_, tuple(params), usage, description, admin)


for _name, _params, _usage, _desc in [
    ("register", ("username", "password", "admin_key?"), "<username> <password> [admin_key]",
     "Register a new user (admin key required for admin status)."),
    ("login", ("username", "password"), "<username> <password>", "Log in with existing credentials."),
    ("changepassword", ("old_password", "new_password"), "<old_password> <new_password>",
     "Change your password."),
    ("help", (), "", "Show the list of available commands."),
    ("create", ("room",), "<room>", "Create a new chat room and auto-join it."),
    ("join", ("room",), "<room>", "Join an existing chat room and view its history."),
    ("leave", ("room?",), "[room]", "Leave the current room (or the one named)."),
    ("message", ("text*",), "<text>", "Send a message to the current room (a plain line does too)."),
    ("me", ("text*",), "<action>", "Say what you do, as an action: /me waves shows '* alice waves'."),
    ("msg", ("to", "text*"), "<user> <text>", "Send a private message to a user."),
    ("history", ("room?", "limit?"), "[room] [n]",
     "Show the last n events of the current room or the one named (@user: your private messages with them)."),
    ("topic", ("room", "text?*"), "<room> [text]", "Show a room's topic, or set it (room creator or admin)."),
    ("list_all_users", ("after?",), "[after]", "List all online users (a page at a time: after the name given)."),
    ("list_users_in_room", ("room?",), "[room]", "List users currently in the joined room."),
    ("list_all_rooms", ("after?",), "[after]", "List all available chat rooms (a page at a time: after the name "
     "given)."),
    ("whoami", (), "", "Check the currently logged-in username."),
    ("whereami", (), "", "Check the current room or status (outside)."),
    ("ping", (), "", "Check that the server answers."),
    ("quit", (), "", "Disconnect from the server and exit the chat."),
]:  # fmt: skip
    add_command(_name, "message" if _name == "me" else _name, _params, _usage, _desc)


def parse_line(line: str) -> Request:
    """Parse one text-mode line. A line without a leading slash is a message to the current room."""
    line = line.strip("\r\n")
    if not line.strip():
        raise ProtocolError(Code.EMPTY, "Empty line. Type /help for the list of commands.")
    if not line.startswith("/"):
        return core.Message(text=line)
    name, _, rest = line[1:].partition(" ")
    command = COMMANDS.get(name.lower())
    if command is None:
        raise ProtocolError(Code.UNKNOWN_COMMAND, unknown_command(name, COMMANDS))
    if command.type in TEXT_UNSUPPORTED:
        raise ProtocolError(Code.NOT_SUPPORTED, TEXT_UNSUPPORTED[command.type])
    fields = _bind(command, rest)
    if command.type == "history" and "limit" not in fields and str(fields.get("room", "")).isdigit():
        fields["limit"] = fields.pop("room")  # "/history 20": the last 20 of the current room
    if name.lower() == "me":
        fields["action"] = True
    type_ = command.type
    if type_ == "history" and str(fields.get("room", "")).startswith("@"):  # /history @bob: a private talk
        type_ = "private_history"
        fields["user"] = fields.pop("room")[1:]
    try:
        return REQUESTS_BY_TYPE[type_].model_validate(fields)
    except ValidationError as exc:
        err = exc.errors(include_url=False, include_input=False)[0]
        raise ProtocolError(Code.BAD_REQUEST, f"{plain_error(err)} Usage: {command.usage}") from None


def unknown_command(name: str, known: Iterable[str]) -> str:
    """``Unknown command: /jion. Did you mean /join?`` (the suggestion only when one is close)."""
    close = difflib.get_close_matches(name.lower(), list(known), n=1, cutoff=0.6)
    hint = f" Did you mean /{close[0]}?" if close else " Type /help for the list."
    return f"Unknown command: /{name[:32]}.{hint}"


def plain_error(err: Any) -> str:
    """One sentence for a field pydantic refused, without pydantic's words: ``Limit must be a whole
    number.``, ``Room: names are 1 to 32 characters...``."""
    field = str(err["loc"][-1]).replace("_", " ") if err.get("loc") else "value"
    kind, ctx = err.get("type", ""), err.get("ctx") or {}
    if kind.startswith("int_"):
        what = "must be a whole number"
    elif kind in ("string_too_short", "too_short"):
        what = "is empty" if ctx.get("min_length") == 1 else f"must be at least {ctx.get('min_length')} characters"
    elif kind in ("string_too_long", "too_long"):
        what = f"must be at most {ctx.get('max_length')} characters"
    elif kind in ("greater_than_equal", "greater_than"):
        what = f"must be at least {ctx.get('ge', ctx.get('gt'))}"
    elif kind in ("less_than_equal", "less_than"):
        what = f"must be at most {ctx.get('le', ctx.get('lt'))}"
    elif kind == "value_error":
        what = str(ctx.get("error") or err.get("msg", "")).removeprefix("Value error, ")
        return f"Invalid {field}: {what}."
    elif kind.startswith("bool"):
        what = "must be 0 or 1"
    else:
        what = "is not valid"
    return f"{field.capitalize()} {what}."


def _bind(command: Command, rest: str) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for param in command.params:
        name = param.rstrip("?*!")
        optional = "?" in param
        if "*" in param:
            value = rest.strip()
            rest = ""
        else:
            value, _, rest = rest.strip().partition(" ")
        if not value:
            if optional:
                continue
            raise ProtocolError(Code.BAD_REQUEST, f"Usage: {command.usage}")
        if param.endswith("!"):
            if value not in ("0", "1", "true", "false", "yes", "no"):
                raise ProtocolError(Code.BAD_REQUEST, f"{name} must be 0 or 1. Usage: {command.usage}")
            fields[name] = value in ("1", "true", "yes")
        else:
            fields[name] = value
    if rest.strip():
        raise ProtocolError(Code.BAD_REQUEST, f"Too many arguments. Usage: {command.usage}")
    return fields


# --- rendering ----------------------------------------------------------------------------------

# Control characters, bidirectional overrides and line separators never reach a terminal raw: an ANSI
# escape in a message could otherwise rewrite a reader's screen. See safe_text.


def stamp(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("[%Y-%m-%d %H:%M:%S]")


def _event_line(event: Frame, current_room: str | None) -> str:
    """The line of a room event without its timestamp, as it appears live and in history."""
    if isinstance(event, core.MessageEvent):
        where = "" if event.room == current_room else f"[{event.room}] "
        if event.action:
            return f"{where}* {event.user} {clean(event.text)}"
        return f"{where}{event.user}: {clean(event.text)}"
    if isinstance(event, core.JoinEvent):
        return f"User {event.user} joined room '{event.room}'"
    if isinstance(event, core.LeaveEvent):
        return f"User {event.user} left room '{event.room}'"
    if isinstance(event, core.FileEvent):
        if event.action == "download":
            return f"User {event.user} downloaded file '{event.name}'"
        return f"User {event.user} uploaded file '{event.name}' (Original: {clean(event.original)})"
    if isinstance(event, core.PrivateMessage):
        return f"[private] {event.user}: {clean(event.text)}"
    if isinstance(event, core.TopicEvent):
        if event.topic is None:
            return f"{event.user} cleared the topic of room '{event.room}'"
        return f"{event.user} set the topic of room '{event.room}': {clean(event.topic)}"
    if isinstance(event, core.RoomDeleted):
        return f"Room '{event.room}' was deleted by {event.by}."
    if isinstance(event, core.Announcement):
        where = f" to room '{event.room}'" if event.room else ""
        return f"[ANNOUNCEMENT{where}] {clean(event.text)}"
    if isinstance(event, core.Notice):
        return clean(event.text)
    renderer = EVENT_RENDERERS.get(type(event))
    if renderer is not None:
        return renderer(event, current_room)
    return _fallback(event)


def _fallback(frame: Frame) -> str:
    fields = frame.model_dump(mode="json", exclude_none=True, exclude={"type", "re", "ts"})
    detail = ", ".join(f"{k}={v}" for k, v in fields.items())
    return clean(f"{frame.type}: {detail}" if detail else frame.type)


def _more(command: str, after: str | None) -> str:
    """The end of a listing's line when more pages follow."""
    return f" (more: /{command} {after})" if after else ""


def _users(users: list[core.UserInfo]) -> str:
    return ", ".join(u.name + (" (bot)" if u.is_bot else "") for u in users)


def _ok(reply: core.Ok, request: Request | None) -> list[str]:
    kind = request.type if request is not None else ""
    if kind == "message":
        return []  # the message itself comes back as an event
    wording = {
        "changepassword": "Password changed successfully.",
        "msg": f"Private message sent to {getattr(request, 'to', '')}.",
        "topic": f"Topic of '{getattr(request, 'room', '')}' set.",
    }
    if kind in OK_WORDING:
        return [OK_WORDING[kind](reply, request)]
    return [wording.get(kind, "OK.")]


def _joined(reply: core.Joined) -> list[tuple[datetime | None, str]]:
    lines: list[tuple[datetime | None, str]] = []
    if reply.created:
        lines.append((None, f"Room '{reply.room}' created successfully."))
    if reply.topic:
        lines.append((None, f"Topic of '{reply.room}': {clean(reply.topic)}"))
    if reply.history:
        lines.append((None, f"Chat history for '{reply.room}':"))
        lines += [(e.ts, _event_line(e, reply.room)) for e in reply.history]
    lines.append((None, f"You joined room '{reply.room}'."))
    return lines


Renderer = Callable[[Any, Request | None], "list[str | tuple[datetime, str]] | str"]

# How an ``ok`` reads for a request type, given (reply, request); modules that add request types add theirs.
OK_WORDING: dict[str, Callable[[Any, Any], str]] = {}
# Lines (without timestamp) of event types beyond the core ones, given (event, current_room).
EVENT_RENDERERS: dict[type, Callable[[Any, str | None], str]] = {}

# Renderers of replies to their text-mode lines. Modules that add reply types add their renderer here.
REPLY_RENDERERS: dict[type, Renderer] = {
    core.Ok: _ok,
    core.Error: lambda r, _: f"Error: {clean(r.message)}",
    core.LoggedIn: lambda r, _: (
        f"Registration successful as {'admin' if r.is_admin else 'user'}." if r.registered
        else "Login successful."
    ),
    core.Left: lambda r, _: f"You left room '{r.room}'.",
    core.UserList: lambda r, _: (
        f"Users in room '{r.room}': {_users(r.users)}" if r.room is not None
        else f"Online users: {_users(r.users)}{_more('list_all_users', r.next)}" if r.users else "No users online."
    ),
    core.RoomList: lambda r, _: (
        "Available rooms: " + ", ".join(f"{x.name} ({x.members})" for x in r.rooms) + _more("list_all_rooms", r.next)
        if r.rooms else "No rooms available."
    ),
    core.WhoAmIReply: lambda r, _: f"You are logged in as {r.user}." if r.user else "You are not logged in.",
    core.WhereAmIReply: lambda r, _: (
        "You are outside any room." if r.room is None
        else f"You are in room '{r.room}'." + (
            f" (also in: {', '.join(x for x in r.rooms if x != r.room)})" if len(r.rooms) > 1 else ""
        )
    ),
    core.HelpReply: lambda r, _: [
        "Available commands:", *r.commands, *(["Admin commands:", *r.admin_commands] if r.admin_commands else [])
    ],
    core.Pong: lambda r, _: "Pong.",
    core.RoomTopic: lambda r, _: (f"Topic of '{r.room}': {clean(r.topic)}" if r.topic
                                  else f"Room '{r.room}' has no topic."),
    core.Goodbye: lambda r, _: "Goodbye." if r.code == "quit" else f"Disconnected: {clean(r.reason)}",
}


def _reply_lines(frame: Frame, request: Request | None) -> list[tuple[datetime | None, str]]:
    if isinstance(frame, core.Joined):
        return _joined(frame)
    if isinstance(frame, core.HistoryPage):
        if not frame.events:
            return [(None, f"No history for '{frame.room}'.")]
        head: list[tuple[datetime | None, str]] = [(None, f"Chat history for '{frame.room}':")]
        return head + [(e.ts, _event_line(e, frame.room)) for e in frame.events]
    if isinstance(frame, core.PrivateHistoryPage):
        if not frame.messages:
            return [(None, f"No private messages with {frame.user}.")]
        head = [(None, f"Private messages with {frame.user}:")]
        return head + [(m.ts, f"{m.user}: {clean(m.text)}") for m in frame.messages]
    renderer = REPLY_RENDERERS.get(type(frame))
    if renderer is None:
        return [(None, _fallback(frame))]
    out = renderer(frame, request)
    # A renderer may give a line its own time, as (ts, line): an entry of a log keeps the time it happened.
    return [line if isinstance(line, tuple) else (None, line) for line in ([out] if isinstance(out, str) else out)]


def render(frame: Frame, *, request: Request | None = None, current_room: str | None = None,
           now: datetime | None = None) -> str:
    """Render a reply or an event as text-mode lines, each ending with a newline ('' for none)."""
    if isinstance(frame, Event):
        return f"{stamp(frame.ts)} {_event_line(frame, current_room)}\n"
    ts = stamp(now or datetime.now(UTC))
    return "".join(f"{stamp(when) if when else ts} {line}\n"
                   for when, line in _reply_lines(frame, request))


def render_lines(frame: Frame, *, request: Request | None = None, current_room: str | None = None,
                 now: datetime | None = None) -> list[tuple[datetime, str]]:
    """The lines of :func:`render` as (time, text) pairs, for a front end that shows times its own way."""
    if isinstance(frame, Event):
        return [(frame.ts, _event_line(frame, current_room))]
    at = now or datetime.now(UTC)
    return [(when or at, line) for when, line in _reply_lines(frame, request)]



# --- administration -----------------------------------------------------------------------------
# The original's admin commands and the operator commands beyond them. Listed by /help to operators only.

for _name, _type, _params, _usage, _desc in [
    ("delete_room", "delete_room", ("room",), "<room>", "Delete a room and its history, even with active users."),
    ("add_user", "add_user", ("username", "password", "is_admin?!"), "<username> <password> [is_admin]",
     "Add a new user (is_admin: 0 or 1, default 0)."),
    ("edit_user", "edit_user", ("username", "new_password", "is_admin?!"), "<username> <new_password> [is_admin]",
     "Edit a user's password and/or admin status."),
    ("view_users", "view_users", ("after?",), "[after]",
     "List all registered users with their admin and ban status (a page at a time: after the name given)."),
    ("view_room_history", "view_room_history", ("room", "limit?"), "<room> [n]",
     "View a room's history, including messages, joins, leaves and files."),
    ("ban_user", "ban_user", ("username", "reason?*"), "<username> [reason]",
     "Ban a user from the server, disconnecting them immediately."),
    ("unban_user", "unban_user", ("username",), "<username>", "Unban a previously banned user."),
    ("change_admin_key", "change_admin_key", ("new_key",), "<new_key>", "Change the admin registration key."),
    ("who", "who", ("after?",), "[after]",
     "List connected sessions: user, transport, address, rooms, connected since (a page at a time)."),
    ("kick", "kick", ("username", "reason?*"), "<username> [reason]", "Disconnect every session of a user."),
    ("announce", "announce", ("text*",), "<text>", "Announce a message to everyone connected."),
    ("announce_room", "announce", ("room", "text*"), "<room> <text>", "Announce a message to one room."),
    ("stats", "stats", (), "", "Show server statistics."),
    ("admin_log", "admin_log", ("limit?",), "[n]", "Show the last n entries of the admin log."),
    ("tail", "tail", ("room?",), "[room]", "Receive the events of every room (or of one) until /untail."),
    ("untail", "untail", (), "", "Stop receiving the events of /tail."),
]:  # fmt: skip
    add_command(_name, _type, _params, _usage, _desc, admin=True)


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


def duration(seconds: float) -> str:
    """``1d 2h 3m 4s``, leaving out the leading zero units."""
    seconds = int(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size or parts:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return " ".join([*parts, f"{seconds}s"])


def size(n: float) -> str:
    """A byte count for people, in binary units everywhere: ``512 B``, ``1.5 KiB``, ``120.0 MiB``."""
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}"
    return f"{n:.1f} GiB"  # pragma: no cover


def _stats(r: admin.ServerStats) -> list[str]:
    transports = ", ".join(f"{k} {v}" for k, v in sorted(r.by_transport.items()))
    return [
        "Server statistics:" + (f" node {clean(r.node)}" if r.node else "")
        + (f" (cluster: {', '.join(map(clean, r.nodes))})" if len(r.nodes) > 1 else ""),
        f"Uptime: {duration(r.uptime)} (since {stamp(r.started_at)[1:-1]})",
        f"Connections: {r.connections}" + (f" ({transports})" if transports else "")
        + f", {r.connections_total} since start",
        f"Users online: {r.users_online} of {r.users_registered} registered",
        f"Rooms: {r.rooms}",
        f"Messages: {r.messages} ({r.messages_per_second:.1f}/s)",
        f"Sent: {size(r.bytes_sent)} ({size(r.bytes_per_second)}/s)",
    ]


def _log_entry(e: admin.AdminLogEntry) -> tuple[datetime, str]:
    target = f" '{e.target}'" if e.target else ""
    detail = f" ({clean(e.detail)})" if e.detail else ""
    return e.ts, f"{e.actor} via {e.via}: {e.action}{target} -> {e.outcome}{detail}"


def _kicked(r: admin.Kicked) -> str:
    if r.session is not None:
        return f"Session #{r.session} kicked."
    return f"User '{r.user}' kicked ({r.count} session{'s' if r.count != 1 else ''})."


REPLY_RENDERERS.update({
    admin.UserTable: lambda r, _: (["Users:", *map(_account, r.users)]
                                   + ([f"More: /view_users {r.next}"] if r.next else [])) if r.users else "No users.",
    admin.SessionList: lambda r, _: ["Connected sessions:", *map(_session, r.sessions)]
    + ([f"More: /who {r.next}"] if r.next is not None else []),
    admin.Kicked: lambda r, _: _kicked(r),
    admin.ServerStats: lambda r, _: _stats(r),
    admin.AdminLogPage: lambda r, _: (["Admin log:", *map(_log_entry, r.entries)] if r.entries
                                      else "The admin log has no matching entries."),
})

OK_WORDING.update({
    "delete_room": lambda r, q: f"Room '{r.room or q.room}' deleted.",
    "add_user": lambda r, q: f"User '{q.username}' added as {'admin' if q.is_admin else 'user'}.",
    "edit_user": lambda r, q: f"User '{q.username}' updated.",
    "ban_user": lambda r, q: f"User '{q.username}' has been banned.",
    "unban_user": lambda r, q: f"User '{q.username}' has been unbanned.",
    "change_admin_key": lambda r, q: "Admin key changed successfully.",
    "announce": lambda r, q: "Announcement sent" + (f" to room '{r.room or q.room}'." if q.room else "."),
    "tail": lambda r, q: (f"Tailing room '{r.room or q.room}'." if q.room else "Tailing every room.")
    + " /untail to stop.",
    "untail": lambda r, q: "Stopped tailing.",
})


def _admin_action(e: admin.AdminAction, _room: str | None) -> str:
    target = f" '{e.target}'" if e.target else ""
    detail = f" ({clean(e.detail)})" if e.detail else ""
    return f"[admin] {e.actor}: {e.action}{target} -> {e.outcome}{detail}"


EVENT_RENDERERS[admin.AdminAction] = _admin_action


# --- file sharing -------------------------------------------------------------------------------
# A text line cannot carry a file: /upload and /download are listed by /help and answered not_supported;
# /list_files works.

_FILES_ELSEWHERE = ("Text mode cannot carry files: use `utuvox client`, where /upload <room> <filepath> and "
                    "/download <unique name> work, or the JSON protocol ('upload' and 'download' requests).")

for _name, _params, _usage, _desc in [
    ("upload", ("room", "name*"), "<room> <filepath>",
     "Upload a local file to a room you are in (utuvox client or JSON only)."),
    ("download", ("name",), "<unique name>",
     "Download a file into downloads/ (utuvox client or JSON only)."),
    ("list_files", ("room?",), "[room]", "List the files of the current room (or the one named)."),
]:  # fmt: skip
    add_command(_name, _name, _params, _usage, _desc)
TEXT_UNSUPPORTED.update({"upload": _FILES_ELSEWHERE, "download": _FILES_ELSEWHERE})


def _file_list(r: files.FileList) -> list[str]:
    if not r.files:
        return [f"No files in room '{r.room}'."]
    head = f"Files in room '{r.room}'" + (f" (the newest {len(r.files)})" if r.more else "") + ":"
    width = max(len(x.name) for x in r.files)
    return [head, *(
        f"  {x.name:<{width}}  {size(x.size):>10}  {x.uploader:<12} {stamp(x.uploaded_at)[1:-1]}"
        f"  (Original: {clean(x.original)})"
        for x in r.files
    )]


REPLY_RENDERERS.update({
    files.FileList: lambda r, _: _file_list(r),
    files.Uploaded: lambda r, _: f"File '{r.name}' uploaded to room '{r.room}' (Original: {clean(r.original)}).",
    files.UploadFailed: lambda r, _: f"Upload failed: {clean(r.message)}",
    files.DownloadEnd: lambda r, _: f"Download of '{r.name}' complete ({size(r.size)}).",
    files.DownloadFailed: lambda r, _: f"Download failed: {clean(r.message)}",
})
