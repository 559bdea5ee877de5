"""The slash commands of text mode: for each, the request it builds, its parameters, its usage and the
sentence ``/help`` shows.

One table serves the parser (:mod:`.text_parse`), the chat core's ``/help`` answer and the terminal
client's completion; it is plain data, so any of them can import it without the codec. A module that adds
a request type that people type adds its line here with :func:`add_command`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


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
"""Every command by name (without the slash), in the order ``/help`` lists them."""

TEXT_UNSUPPORTED: dict[str, str] = {}
"""Commands text mode knows (they are in ``/help``) but cannot carry out, by request type: the sentence that
answers them, with code ``not_supported``."""


def add_command(name: str, type_: str, params: Iterable[str], usage_args: str, description: str, *,
                admin: bool = False) -> None:
    """Add ``/name``, which builds a request of type ``type_``; ``usage_args`` is the usage after the name."""
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
