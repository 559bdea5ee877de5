"""``utuvox-console``: the operators' console, a cmd2 application over the admin socket.

Interactive at a terminal (help, tab completion of user and room names asked from the server, history,
tables), or scripted: ``utuvox-console -c "view_users" -c "ban_user bob spam"``, a script file, or
commands piped on standard input. Scripted runs stop at the first command that fails and exit with
status 1, so a shell script can rely on the exit status.

Events that arrive while the operator types (another operator's ban, a shutdown) are printed above the
prompt with cmd2's ``add_alert``; the connection's reader thread queues them.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import io
import json
import os
import queue
import re
import secrets
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cmd2
from cmd2 import Choices, Cmd2ArgparseError, Cmd2ArgumentParser, with_argparser, with_category
from pydantic import ValidationError
from rich.console import Console as RichConsole
from rich.console import RenderableType

from utuvox.protocol import Event, Frame, Reply, Request, text_codec
from utuvox.protocol import admin as a
from utuvox.protocol import core as p
from utuvox.protocol.core import Goodbye
from utuvox.protocol.safe_text import clean

from . import views
from .link import AdminLink, Disconnected, ServerError

USERS, ROOMS, SESSIONS, SERVER = "Users", "Rooms", "Sessions", "Server"
NAMES_TTL = 5.0  # seconds a list of names asked from the server serves tab completion
HISTORY_FILE = "~/.utuvox_console_history"
PIPE_WIDTH = 400  # columns tables may take when the output is not a terminal
ADMIN_ACTIONS = ["delete_room", "add_user", "edit_user", "view_room_history", "ban_user", "unban_user",
                 "change_admin_key", "kick", "announce", "tail", "register_admin"]


def default_socket() -> Path:
    """Where the server puts the socket with the same environment: ``UTUVOX_ADMIN_SOCKET``, else
    ``UTUVOX_DATA_DIR/admin.sock``, else ``./admin.sock``."""
    if os.environ.get("UTUVOX_ADMIN_SOCKET"):
        return Path(os.environ["UTUVOX_ADMIN_SOCKET"])
    return Path(os.environ.get("UTUVOX_DATA_DIR", ".")) / "admin.sock"


_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``30m``, ``2h``, ``1d`` (that long ago), or an ISO date or time (UTC unless it says otherwise)."""
    now = now or datetime.now(UTC)
    match = _RELATIVE.match(text.strip().lower())
    if match:
        return now - timedelta(seconds=float(match[1]) * _UNITS[match[2]])
    try:
        ts = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a time: {text!r} (try 30m, 2h, 1d or 2025-03-01T12:00)") from None
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


# --- tab completion: names asked from the server ----------------------------------------------------


def user_choices(app: Console) -> Choices:
    return Choices.from_values(app.names("users"))


def online_choices(app: Console) -> Choices:
    return Choices.from_values(app.names("online"))


def room_choices(app: Console) -> Choices:
    return Choices.from_values(app.names("rooms"))


def action_choices(app: Console) -> Choices:
    return Choices.from_values(ADMIN_ACTIONS)


def actor_choices(app: Console) -> Choices:
    return Choices.from_values([f"console:{app.operator}", *app.names("admins")])


# --- parsers --------------------------------------------------------------------------------------


def _parser(description: str, *, json_flag: bool = False) -> Cmd2ArgumentParser:
    parser = Cmd2ArgumentParser(description=description)
    if json_flag:
        parser.add_argument("-j", "--json", action="store_true",
                            help="print the data as one JSON line (the list itself, for a listing)")
    return parser


view_users_parser = _parser("List every registered user with admin, bot and ban status.", json_flag=True)
view_users_parser.add_argument("--banned", action="store_true", help="only banned users")
view_users_parser.add_argument("--admins", action="store_true", help="only admins")

add_user_parser = _parser("Add a user, optionally an admin or a bot.")
add_user_parser.add_argument("username", help="the new user's name")
add_user_parser.add_argument("password", nargs="?", help="the password (asked for at a terminal when left out)")
add_user_parser.add_argument("is_admin", nargs="?", choices=["0", "1"], help="1 for an admin (as in the original)")
add_user_parser.add_argument("-a", "--admin", action="store_true", help="make the user an admin")
add_user_parser.add_argument("--bot", action="store_true", help="mark the user as a bot")

edit_user_parser = _parser("Change a user's password, admin status and/or bot flag. Takes effect at once for "
                           "their connected sessions.")
edit_user_parser.add_argument("username", choices_provider=user_choices, help="the user to edit")
edit_user_parser.add_argument("new_password", nargs="?", help="a new password")
edit_user_parser.add_argument("is_admin", nargs="?", choices=["0", "1"], help="1 admin, 0 regular user")
edit_user_parser.add_argument("-p", "--ask-password", action="store_true", help="ask for the new password")
_admin_flag = edit_user_parser.add_mutually_exclusive_group()
_admin_flag.add_argument("--admin", dest="admin", action="store_true", default=None, help="make an admin")
_admin_flag.add_argument("--no-admin", dest="admin", action="store_false", help="make a regular user")
_bot_flag = edit_user_parser.add_mutually_exclusive_group()
_bot_flag.add_argument("--bot", dest="bot", action="store_true", default=None, help="mark as a bot")
_bot_flag.add_argument("--no-bot", dest="bot", action="store_false", help="mark as a person")

ban_parser = _parser("Ban a user: every session of theirs is disconnected at once and logins are refused.")
ban_parser.add_argument("username", choices_provider=user_choices, help="the user to ban")
ban_parser.add_argument("reason", nargs="*", help="why (shown to the user)")

unban_parser = _parser("Lift a user's ban.")
unban_parser.add_argument("username", choices_provider=user_choices, help="the user to unban")

change_key_parser = _parser("Change the admin key that /register accepts for admin accounts.")
change_key_parser.add_argument("new_key", nargs="?", help="the new key (asked for at a terminal when left out)")
change_key_parser.add_argument("-g", "--generate", action="store_true", help="generate a random key and print it")

rooms_parser = _parser("List the rooms and how many users are in each.", json_flag=True)

delete_room_parser = _parser("Delete a room and its history, even with users inside: they are told and removed.")
delete_room_parser.add_argument("room", choices_provider=room_choices, help="the room to delete")
delete_room_parser.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")

history_parser = _parser("Show a room's history: messages, joins, leaves and files.", json_flag=True)
history_parser.add_argument("room", choices_provider=room_choices, help="the room")
history_parser.add_argument("-n", "--limit", type=int, default=100, help="how many events (default 100, max 500)")
history_parser.add_argument("--before", type=int, help="events before this sequence number (older pages)")

announce_parser = _parser("Announce a message to everyone connected, or to one room.")
announce_parser.add_argument("-r", "--room", choices_provider=room_choices, help="only this room")
announce_parser.add_argument("text", nargs="+", help="the message")

tail_parser = _parser("Print every room's events (or one room's) as they happen, until Ctrl-C.")
tail_parser.add_argument("room", nargs="?", choices_provider=room_choices, help="only this room")
tail_parser.add_argument("--count", type=int, help="stop after this many events")
tail_parser.add_argument("--seconds", type=float, help="stop after this many seconds")

who_parser = _parser("Who is connected now: user, transport, address, rooms, connected since.", json_flag=True)

kick_parser = _parser("Disconnect a user's sessions, or one session (#ID, as listed by who).")
kick_parser.add_argument("target", choices_provider=online_choices, help="a user name, or #ID for one session")
kick_parser.add_argument("reason", nargs="*", help="why (shown to them)")
kick_parser.add_argument("-r", "--reason", dest="reason_flag", nargs="+", help=argparse.SUPPRESS)  # the older form

stats_parser = _parser("Server statistics: connections, rooms, messages and bytes per second, uptime.", json_flag=True)

admin_log_parser = _parser("The admin log: every admin action, from the console or from chat.", json_flag=True)
admin_log_parser.add_argument("--admin", dest="actor", choices_provider=actor_choices,
                              help="only this admin (a user name, or console:<os user>)")
admin_log_parser.add_argument("--action", choices_provider=action_choices, help="only this action (e.g. ban_user)")
admin_log_parser.add_argument("--since", type=parse_since, help="only since then: 30m, 2h, 1d or an ISO time (UTC)")
admin_log_parser.add_argument("-n", "--limit", type=int, default=50, help="how many entries, newest (default 50)")

reconnect_parser = _parser("Connect to the server again (after a restart; the next command also does it by "
                           "itself).")
exit_parser = _parser("Leave the console.")


class Console(cmd2.Cmd):
    """The operator's console. ``interactive`` is a person at a terminal; otherwise commands come from
    ``-c``, a script or a pipe, and the first failure stops the run with exit status 1."""

    def __init__(self, socket_path: Path | str, *, interactive: bool, history_file: str = "") -> None:
        super().__init__(allow_cli_args=False, persistent_history_file=history_file, terminators=[],
                         suggest_similar_command=True)
        self.interactive = interactive
        self.can_prompt = sys.stdin.isatty() and sys.stdout.isatty()
        self.operator = getpass.getuser()
        self.failed = False
        self.socket_path = Path(socket_path)
        self.link = self._new_link()
        self._closing = False
        self._tail: queue.Queue[Frame | None] | None = None
        self._names: dict[str, tuple[float, list[str]]] = {}
        # Lines that may carry a password or a key are kept out of the (persistent) history.
        self.exclude_from_history.extend(["add_user", "edit_user", "change_admin_key"])
        self.hidden_commands.extend(["run_pyscript"])
        self.prompt = self._prompt(connected=True)
        if interactive:
            self.intro = (f"UtuVox console: connected to {self.socket_path} as console:{self.operator}. "
                          "Type 'help' for the commands, Ctrl-D to leave.")

    # --- the connection ---------------------------------------------------------------------------

    def _new_link(self) -> AdminLink:
        return AdminLink(self.socket_path, on_event=self._on_event, on_close=self._on_close)

    def _prompt(self, *, connected: bool) -> str:
        return f"(console:{self.operator})> " if connected else "(disconnected)> "

    def _on_event(self, frame: Frame) -> None:
        tail = self._tail
        if tail is not None and isinstance(frame, Event):
            tail.put(frame)
            return
        self._notify(text_codec.render(frame).rstrip("\n"))
        if isinstance(frame, Goodbye):
            self._notify(None, prompt=self._prompt(connected=False))

    def _on_close(self, reason: str) -> None:
        if self._tail is not None:
            self._tail.put(None)
        if not self._closing:
            self._notify(None, prompt=self._prompt(connected=False))

    def _notify(self, msg: str | None, *, prompt: str | None = None) -> None:
        """Something the server said on its own: above the prompt at a terminal, on stderr in a script."""
        if self.interactive:
            self.add_alert(msg=msg, prompt=prompt)
        elif msg:
            print(msg, file=sys.stderr, flush=True)

    def close(self) -> None:
        self._closing = True
        self.link.close()

    # --- failures and exit status ---------------------------------------------------------------

    def perror(self, *objects: Any, **kwargs: Any) -> None:
        self.failed = True
        super().perror(*objects, **kwargs)

    def pexcept(self, exception: BaseException, **kwargs: Any) -> None:
        self.failed = True
        super().pexcept(exception, **kwargs)

    def onecmd(self, statement: cmd2.Statement | str, *, add_to_history: bool = True) -> bool:
        try:
            return super().onecmd(statement, add_to_history=add_to_history)
        except Cmd2ArgparseError as exc:
            # A usage error (argparse already printed it); -h/--help exits 0 and is no failure.
            cause = exc.__cause__
            if not (isinstance(cause, SystemExit) and cause.code in (0, None)):
                self.failed = True
            raise

    def onecmd_plus_hooks(self, line: str, **kwargs: Any) -> bool:
        self.failed = False
        stop = super().onecmd_plus_hooks(line, **kwargs)
        if self.failed and not self.interactive:
            self.exit_code = 1
            return True
        return stop

    def run_commands(self, commands: Sequence[str]) -> int:
        """Run ``commands`` in order; stop at the first failure. The exit status."""
        for line in commands:
            if self.onecmd_plus_hooks(line):
                break
        return self.exit_code

    # --- helpers ----------------------------------------------------------------------------------

    def fail(self, message: str) -> None:
        self.perror(clean(message))  # it may quote the server, or what a user typed

    def build(self, model: type[Request], **fields: Any) -> Any:
        """The request, or ``None`` (and a failure said) when a field is invalid."""
        try:
            return model(**fields)
        except ValidationError as exc:
            err = exc.errors(include_url=False, include_input=False)[0]
            where = ".".join(str(x) for x in err["loc"]) or "request"
            self.fail(f"Invalid {where}: {err['msg']}.")
            return None

    def call(self, request: Request | None, response: type[Reply] | None = None) -> Any:
        """Ask the server; the reply, or ``None`` once the failure is said."""
        if request is None:
            return None
        for attempt in (1, 2):
            try:
                return self.link.request(request, response)
            except ServerError as exc:
                self.fail(f"Error: {exc.message} [{exc.code}]")
            except Disconnected as exc:
                # The server restarted (or went away) since the last command: connect again, once, by
                # ourselves. Only a request that never reached the server is sent again.
                if attempt == 1 and not exc.sent and self._connect_again() is None:
                    self._notify(f"Reconnected to {self.socket_path}.")
                    continue
                self.fail(f"Not connected to the server ({exc}). Type 'reconnect' to try again.")
            return None
        return None

    def _connect_again(self) -> str | None:
        """A new connection to the server: ``None``, or why there is none."""
        self._closing = True
        self.link.close()
        self.link = self._new_link()
        self._closing = False
        self._names.clear()
        try:
            self.link.connect()
        except OSError as exc:
            return str(exc.strerror or exc)
        self.prompt = self._prompt(connected=True)
        return None

    def call_all(self, request: Request, response: type[Reply], field: str, *, link_only: bool = False) -> Any:
        """Every page of a listing (``rooms``, ``who``, ``view_users`` come a page at a time): the last reply,
        holding the entries of all of them in ``field``; ``None`` once a failure is said."""
        entries: list[Any] = []
        while True:
            reply = self.link.request(request, response) if link_only else self.call(request, response)
            if reply is None:
                return None
            entries += getattr(reply, field)
            if reply.next is None:
                return reply.model_copy(update={field: entries, "next": None})
            request = request.model_copy(update={"after": reply.next})

    def say(self, reply: Reply, request: Request) -> None:
        """A confirmation, worded as in chat."""
        self.poutput(text_codec.render(reply, request=request).rstrip("\n"))

    def show(self, renderable: RenderableType) -> None:
        if self.stdout.isatty():
            self.poutput(renderable, soft_wrap=False)  # fit the window
            return
        # In a pipe or a file, a table keeps its natural width: no cell is folded or cut for scripts.
        buffer = io.StringIO()
        out = RichConsole(file=buffer, width=PIPE_WIDTH, color_system=None, force_terminal=False)
        out.print(renderable)
        self.poutput("\n".join(line.rstrip() for line in buffer.getvalue().splitlines()))

    def listing(self, args: argparse.Namespace, reply: Reply, view: Callable[[Any], RenderableType],
                empty: str, count: int) -> None:
        if getattr(args, "json", False):
            data = {k: v for k, v in reply.to_wire().items() if k not in ("type", "re")}
            lists = [v for v in data.values() if isinstance(v, list)]
            # A listing is its list (users, rooms, sessions, events, entries); anything else its fields.
            self.poutput(json.dumps(lists[0] if len(lists) == 1 else data))
        elif count:
            self.show(view(reply))
        else:
            self.poutput(empty)

    def names(self, kind: str) -> list[str]:
        """User or room names for completion, asked from the server and kept for a few seconds."""
        cached = self._names.get(kind)
        if cached is not None and time.monotonic() - cached[0] < NAMES_TTL:
            return cached[1]
        try:
            if kind == "rooms":
                names = [r.name for r in self.call_all(p.ListAllRooms(), p.RoomList, "rooms", link_only=True).rooms]
            elif kind == "online":
                sessions = self.call_all(a.Who(), a.SessionList, "sessions", link_only=True).sessions
                names = sorted({s.user for s in sessions if s.user})
            else:
                users = self.call_all(a.ViewUsers(), a.UserTable, "users", link_only=True).users
                names = [u.name for u in users if kind != "admins" or u.is_admin]
        except (ServerError, Disconnected):
            return []
        self._names[kind] = (time.monotonic(), names)
        return names

    def ask_secret(self, what: str, *, confirm: bool = True) -> str | None:
        if not self.can_prompt:
            self.fail(f"Give the {what} on the command line (there is no terminal to ask it at).")
            return None
        try:
            secret = self.read_secret(f"{what.capitalize()}: ")
            if confirm and self.read_secret(f"{what.capitalize()} again: ") != secret:
                self.fail("They do not match; nothing was changed.")
                return None
        except (EOFError, KeyboardInterrupt):
            self.fail("Cancelled.")
            return None
        if not secret:
            self.fail(f"An empty {what} is not allowed.")
            return None
        return secret

    # --- users ------------------------------------------------------------------------------------

    @with_category(USERS)
    @with_argparser(view_users_parser)
    def do_view_users(self, args: argparse.Namespace) -> None:
        """List every registered user with admin, bot and ban status."""
        reply = self.call_all(a.ViewUsers(), a.UserTable, "users")
        if reply is None:
            return
        users = [u for u in reply.users if (not args.banned or u.banned) and (not args.admins or u.is_admin)]
        reply = reply.model_copy(update={"users": users})
        self.listing(args, reply, views.users, "No users.", len(users))

    @with_category(USERS)
    @with_argparser(add_user_parser)
    def do_add_user(self, args: argparse.Namespace) -> None:
        """Add a user, optionally an admin or a bot."""
        password = args.password or self.ask_secret(f"password for {args.username}")
        if password is None:
            return
        request = self.build(a.AddUser, username=args.username, password=password,
                             is_admin=args.admin or args.is_admin == "1", bot=args.bot)
        if (reply := self.call(request)) is not None:
            self.say(reply, request)

    @with_category(USERS)
    @with_argparser(edit_user_parser)
    def do_edit_user(self, args: argparse.Namespace) -> None:
        """Change a user's password, admin status and/or bot flag."""
        password = args.new_password
        if args.ask_password and (password := self.ask_secret(f"new password for {args.username}")) is None:
            return
        is_admin = args.admin if args.admin is not None else (None if args.is_admin is None else args.is_admin == "1")
        request = self.build(a.EditUser, username=args.username, new_password=password, is_admin=is_admin,
                             bot=args.bot)
        if (reply := self.call(request)) is not None:
            self.say(reply, request)

    @with_category(USERS)
    @with_argparser(ban_parser)
    def do_ban_user(self, args: argparse.Namespace) -> None:
        """Ban a user, disconnecting every session of theirs at once."""
        request = self.build(a.BanUser, username=args.username, reason=" ".join(args.reason) or None)
        if (reply := self.call(request)) is not None:
            self.say(reply, request)

    @with_category(USERS)
    @with_argparser(unban_parser)
    def do_unban_user(self, args: argparse.Namespace) -> None:
        """Lift a user's ban."""
        request = self.build(a.UnbanUser, username=args.username)
        if (reply := self.call(request)) is not None:
            self.say(reply, request)

    @with_category(SERVER)
    @with_argparser(change_key_parser)
    def do_change_admin_key(self, args: argparse.Namespace) -> None:
        """Change the admin key."""
        key = secrets.token_urlsafe(24) if args.generate else args.new_key or self.ask_secret("new admin key")
        if key is None:
            return
        request = self.build(a.ChangeAdminKey, new_key=key)
        if (reply := self.call(request)) is not None:
            self.say(reply, request)
            if args.generate:
                self.poutput(f"New admin key: {key}")

    # --- rooms ------------------------------------------------------------------------------------

    @with_category(ROOMS)
    @with_argparser(rooms_parser)
    def do_rooms(self, args: argparse.Namespace) -> None:
        """List the rooms and how many users are in each."""
        if (reply := self.call_all(p.ListAllRooms(), p.RoomList, "rooms")) is not None:
            self.listing(args, reply, views.rooms, "No rooms.", len(reply.rooms))

    @with_category(ROOMS)
    @with_argparser(delete_room_parser)
    def do_delete_room(self, args: argparse.Namespace) -> None:
        """Delete a room and its history, even with users inside."""
        request = self.build(a.DeleteRoom, room=args.room)
        if request is None:
            return
        if self.can_prompt and not args.yes:
            try:
                answer = self.read_input(f"Delete room '{args.room}' and all its history? [y/N] ")
            except (EOFError, KeyboardInterrupt):
                answer = ""
            if answer.strip().lower() not in ("y", "yes"):
                self.poutput("Nothing deleted.")
                return
        if (reply := self.call(request)) is not None:
            self.say(reply, request)

    @with_category(ROOMS)
    @with_argparser(history_parser)
    def do_view_room_history(self, args: argparse.Namespace) -> None:
        """Show a room's history: messages, joins, leaves and files."""
        request = self.build(a.ViewRoomHistory, room=args.room, limit=args.limit, before=args.before)
        if (reply := self.call(request, p.HistoryPage)) is not None:
            self.listing(args, reply, views.history, f"No history for '{reply.room}'.", len(reply.events))

    @with_category(ROOMS)
    @with_argparser(announce_parser)
    def do_announce(self, args: argparse.Namespace) -> None:
        """Announce a message to everyone connected, or to one room."""
        request = self.build(a.Announce, text=" ".join(args.text), room=args.room)
        if (reply := self.call(request)) is not None:
            self.say(reply, request)

    @with_category(ROOMS)
    @with_argparser(tail_parser)
    def do_tail(self, args: argparse.Namespace) -> None:
        """Print every room's events (or one room's) as they happen, until Ctrl-C."""
        request = self.build(a.Tail, room=args.room)
        if request is None:
            return
        events: queue.Queue[Frame | None] = queue.Queue()
        self._tail = events  # before asking, so nothing that follows the answer is missed
        try:
            if self.call(request) is None:
                return
            where = f"room '{args.room}'" if args.room else "every room"
            self.poutput(f"Tailing {where}. Press Ctrl-C to stop.")
            deadline = time.monotonic() + args.seconds if args.seconds else None
            seen = 0
            while args.count is None or seen < args.count:
                if deadline is not None and time.monotonic() >= deadline:
                    break
                try:
                    event = events.get(timeout=0.1)
                except queue.Empty:
                    continue
                if event is None:
                    self.fail(f"The connection closed: {self.link.close_reason}.")
                    break
                self.poutput(text_codec.render(event).rstrip("\n"))
                seen += 1
        except KeyboardInterrupt:
            self.poutput("Stopped.")
        finally:
            self._tail = None
            if not self.link.closed:
                with contextlib.suppress(ServerError, Disconnected):
                    self.link.request(a.Untail())

    # --- sessions ---------------------------------------------------------------------------------

    @with_category(SESSIONS)
    @with_argparser(who_parser)
    def do_who(self, args: argparse.Namespace) -> None:
        """Who is connected now."""
        if (reply := self.call_all(a.Who(), a.SessionList, "sessions")) is not None:
            self.listing(args, reply, views.sessions, "Nobody is connected.", len(reply.sessions))

    @with_category(SESSIONS)
    @with_argparser(kick_parser)
    def do_kick(self, args: argparse.Namespace) -> None:
        """Disconnect a user's sessions, or one session (#ID)."""
        reason = " ".join(args.reason or args.reason_flag or []) or None
        target: str = args.target
        if target.startswith("#"):
            if not target[1:].isdigit():
                self.fail(f"Not a session id: {target} (see 'who').")
                return
            request = self.build(a.Kick, session=int(target[1:]), reason=reason)
        else:
            request = self.build(a.Kick, username=target, reason=reason)
        if (reply := self.call(request, a.Kicked)) is not None:
            self.say(reply, request)

    # --- server -----------------------------------------------------------------------------------

    @with_category(SERVER)
    @with_argparser(stats_parser)
    def do_stats(self, args: argparse.Namespace) -> None:
        """Server statistics."""
        if (reply := self.call(a.Stats(), a.ServerStats)) is not None:
            self.listing(args, reply, views.stats, "", 1)

    @with_category(SERVER)
    @with_argparser(admin_log_parser)
    def do_admin_log(self, args: argparse.Namespace) -> None:
        """The admin log, filtered by admin, action and time."""
        request = self.build(a.AdminLogQuery, actor=args.actor, action=args.action, since=args.since,
                             limit=args.limit)
        if (reply := self.call(request, a.AdminLogPage)) is not None:
            self.listing(args, reply, views.admin_log, "No matching entries.", len(reply.entries))

    @with_category(SERVER)
    @with_argparser(reconnect_parser)
    def do_reconnect(self, args: argparse.Namespace) -> None:
        """Connect to the server again."""
        error = self._connect_again()
        if error is None:
            self.poutput(f"Connected to {self.socket_path}.")
        else:
            self.fail(f"Cannot connect to {self.socket_path}: {error}")


    def do__eof(self, _statement: Any) -> bool:
        """Ctrl-D, or the end of piped input: leave. Only a terminal gets a new line (after the prompt)."""
        if self.interactive:
            self.poutput()
        return True

    @with_argparser(exit_parser)
    def do_exit(self, _args: argparse.Namespace) -> bool:
        """Leave the console (as quit and Ctrl-D do)."""
        return True


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="utuvox-console",
        description="The UtuVox operators' console, over the server's admin socket. Without commands it is "
                    "interactive at a terminal, or reads commands from standard input.",
        epilog="Scripted runs (-c, a script, piped input) stop at the first command that fails and exit with status 1.",
    )
    parser.add_argument("--socket", type=Path, default=None,
                        help="the admin socket (default: $UTUVOX_ADMIN_SOCKET, else $UTUVOX_DATA_DIR/admin.sock, "
                             "else ./admin.sock)")
    parser.add_argument("-c", "--command", dest="commands", action="append", default=[], metavar="COMMAND",
                        help="run COMMAND, then exit (repeatable: they run in order)")
    parser.add_argument("script", nargs="?", type=Path, help="a file of commands to run, then exit ('#' comments)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands: list[str] = list(args.commands)
    if args.script is not None:
        try:
            lines = args.script.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            print(f"utuvox-console: cannot read {args.script}: {exc.strerror}", file=sys.stderr)
            return 2
        commands += [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
    interactive = not commands and sys.stdin.isatty() and sys.stdout.isatty()
    socket_path = args.socket or default_socket()
    if socket_path.is_dir():
        hint = socket_path / "admin.sock"
        print(f"utuvox-console: {socket_path} is a directory, not the admin socket"
              + (f"; did you mean {hint}?" if hint.exists() else "; give the socket itself (DATA_DIR/admin.sock)."),
              file=sys.stderr)
        return 2
    app = Console(socket_path, interactive=interactive,
                  history_file=os.path.expanduser(HISTORY_FILE) if interactive else "")
    try:
        app.link.connect()
    except OSError as exc:
        print(f"utuvox-console: cannot connect to {socket_path}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    try:
        return app.run_commands(commands) if commands else app.cmdloop()
    finally:
        app.close()


if __name__ == "__main__":
    sys.exit(main())
