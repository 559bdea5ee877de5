"""Text mode: slash lines parse into the same request models as JSON; replies and events render as
``[YYYY-MM-DD HH:MM:SS] ...`` lines worded like the original UtuVox.

This is a codec only. Nothing here knows about sessions; what the renderer needs to know of the
session (the request a reply answers, the current room) is passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from . import core
from .base import Event, Frame, Request
from .errors import Code, ProtocolError
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
    ("msg", ("to", "text*"), "<user> <text>", "Send a private message to a user."),
    ("history", ("room", "limit?"), "<room> [n]", "Show the last n events of a room (older with JSON 'before')."),
    ("list_all_users", (), "", "List all online users."),
    ("list_users_in_room", ("room?",), "[room]", "List users currently in the joined room."),
    ("list_all_rooms", (), "", "List all available chat rooms."),
    ("whoami", (), "", "Check the currently logged-in username."),
    ("whereami", (), "", "Check the current room or status (outside)."),
    ("ping", (), "", "Check that the server answers."),
    ("quit", (), "", "Disconnect from the server and exit the chat."),
]:  # fmt: skip
    add_command(_name, _name, _params, _usage, _desc)


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
        raise ProtocolError(Code.UNKNOWN_COMMAND, f"Unknown command: /{name[:32]}. Type /help for the list.")
    fields = _bind(command, rest)
    try:
        return REQUESTS_BY_TYPE[command.type].model_validate(fields)
    except ValidationError as exc:
        err = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ProtocolError(Code.BAD_REQUEST, f"{where}: {err['msg']}. Usage: {command.usage}") from None


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
            raise ProtocolError(Code.BAD_REQUEST, f"Missing {name}. Usage: {command.usage}")
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

# Control characters (C0, DEL, C1) never reach a terminal raw: an ANSI escape in a message could
# otherwise rewrite a reader's screen. They become U+FFFD.
_CONTROL = {c: "\ufffd" for c in [*range(0x00, 0x20), *range(0x7F, 0xA0)]}


def clean(text: str) -> str:
    return text.translate(_CONTROL)


def stamp(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("[%Y-%m-%d %H:%M:%S]")


def _event_line(event: Frame, current_room: str | None) -> str:
    """The line of a room event without its timestamp, as it appears live and in history."""
    if isinstance(event, core.MessageEvent):
        where = "" if event.room == current_room else f"[{event.room}] "
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
    if isinstance(event, core.RoomDeleted):
        return f"Room '{event.room}' was deleted by {event.by}."
    if isinstance(event, core.Announcement):
        where = f" to room '{event.room}'" if event.room else ""
        return f"[ANNOUNCEMENT{where}] {clean(event.text)}"
    if isinstance(event, core.Notice):
        return clean(event.text)
    return _fallback(event)


def _fallback(frame: Frame) -> str:
    fields = frame.model_dump(mode="json", exclude_none=True, exclude={"type", "re", "ts"})
    detail = ", ".join(f"{k}={v}" for k, v in fields.items())
    return clean(f"{frame.type}: {detail}" if detail else frame.type)


def _users(users: list[core.UserInfo]) -> str:
    return ", ".join(u.name + (" (bot)" if u.is_bot else "") for u in users)


def _ok(reply: core.Ok, request: Request | None) -> list[str]:
    kind = request.type if request is not None else ""
    if kind == "message":
        return []  # the message itself comes back as an event
    wording = {
        "changepassword": "Password changed successfully.",
        "msg": f"Private message sent to {getattr(request, 'to', '')}.",
    }
    return [wording.get(kind, "OK.")]


def _joined(reply: core.Joined) -> list[tuple[datetime | None, str]]:
    lines: list[tuple[datetime | None, str]] = []
    if reply.created:
        lines.append((None, f"Room '{reply.room}' created successfully."))
    if reply.history:
        lines.append((None, f"Chat history for '{reply.room}':"))
        lines += [(e.ts, _event_line(e, reply.room)) for e in reply.history]
    lines.append((None, f"You joined room '{reply.room}'."))
    return lines


Renderer = Callable[[Any, Request | None], "list[str] | str"]

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
        else f"Online users: {_users(r.users)}" if r.users else "No users online."
    ),
    core.RoomList: lambda r, _: (
        "Available rooms: " + ", ".join(f"{x.name} ({x.members})" for x in r.rooms)
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
    renderer = REPLY_RENDERERS.get(type(frame))
    if renderer is None:
        return [(None, _fallback(frame))]
    out = renderer(frame, request)
    return [(None, line) for line in ([out] if isinstance(out, str) else out)]


def render(frame: Frame, *, request: Request | None = None, current_room: str | None = None,
           now: datetime | None = None) -> str:
    """Render a reply or an event as text-mode lines, each ending with a newline ('' for none)."""
    if isinstance(frame, Event):
        return f"{stamp(frame.ts)} {_event_line(frame, current_room)}\n"
    ts = stamp(now or datetime.now(UTC))
    return "".join(f"{stamp(when) if when else ts} {line}\n"
                   for when, line in _reply_lines(frame, request))

