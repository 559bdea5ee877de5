"""The terminal client's command layer: a typed line in, a request to the server, rendered lines out.

It knows nothing of terminals, so tests (and other front ends) drive it directly::

    shell = Shell(client)
    lines = await shell.handle("/join general")   # ["[12:00] You joined room 'general'."]
    shell.prompt                                  # "(bob@general)> "

Lines are the slash commands of text mode, parsed by :func:`utuvox.protocol.text_codec.parse_line` into
the same request models and sent as JSON; replies and events are worded by
:func:`~utuvox.protocol.text_codec.render_lines`, so the terminal client reads like ``nc``, with two
differences for people: times are local and short (``[14:05]``, ``time_format``), with a line when the
day changes, and IRC habits work (``/j``, ``/part``, ``/me``, ``/query``, ``/names``, ``/w``, ``/topic``).
File transfer is done here (``/upload [room] <path>``, ``/download <name>``): the bytes are local.
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Callable
from datetime import date, datetime, tzinfo
from pathlib import Path
from typing import Any

import trio

from utuvox.protocol import Event, ProtocolError, Reply, Request, text_codec, utc_now
from utuvox.protocol import core as p
from utuvox.protocol import files as f
from utuvox.protocol.safe_text import clean
from utuvox.protocol.units import byte_size

from .client import Client
from .errors import UtuVoxError

log = logging.getLogger("utuvox.client")

Progress = Callable[[int, int], None]
# Makes the progress callback of one transfer, given its label ("Uploading report.pdf").
ProgressFactory = Callable[[str], Progress]

DEFAULT_TIME_FORMAT = "%H:%M"

LOCAL_COMMANDS: dict[str, tuple[str, str]] = {
    "upload": ("/upload [room] <filepath>", "Share a local file in a room (default: the current room); quote a "
               "path with spaces."),
    "download": ("/download <name>", "Download a shared file into the downloads directory."),
    "list_files": ("/list_files [room]", "List the files shared in a room (default: the current room)."),
    "query": ("/query [user] [text]", "Talk privately with a user: plain lines go to them; /query alone ends it."),
    "topic": ("/topic", "Show the current room (UtuVox rooms have no topic)."),
    "quit": ("/quit", "Disconnect from the server and exit the chat."),
}
# IRC's habits, as irssi and WeeChat users type them: alias -> the command it stands for.
ALIASES: dict[str, str] = {
    "j": "join", "part": "leave", "names": "list_users_in_room", "w": "list_users_in_room", "exit": "quit",
}
# Lines that carry a password: never kept in the command history.
SECRET_COMMANDS = frozenset({"login", "register", "changepassword", "add_user", "edit_user", "change_admin_key"})
# Which commands take a room, a user or a file name as their first argument, for completion.
ROOM_ARGUMENT = frozenset({"join", "leave", "history", "list_users_in_room", "list_files", "upload", "delete_room",
                           "view_room_history", "tail", "announce_room"})
USER_ARGUMENT = frozenset({"msg", "query", "kick", "ban_user", "unban_user", "edit_user"})
FILE_ARGUMENT = frozenset({"download"})
PATH_ARGUMENT = frozenset({"upload"})
TRANSFERS = frozenset({"upload", "download"})
# Refusals of /login and /register that no retry fixes: a script stops there.
LOGIN_REFUSED = frozenset({"auth_failed", "banned", "name_taken", "forbidden", "invalid_name", "bad_request"})


def _command_of(line: str) -> str:
    if not line.startswith("/"):
        return ""
    name = line[1:].partition(" ")[0].lower()
    return ALIASES.get(name, name)


def is_secret(line: str) -> bool:
    """Whether ``line`` carries a password (so it must not be remembered)."""
    return _command_of(line.strip()) in SECRET_COMMANDS


class Shell:
    def __init__(self, client: Client, *, downloads: Path = Path("downloads"),
                 progress: ProgressFactory | None = None, time_format: str = DEFAULT_TIME_FORMAT,
                 tz: tzinfo | None = None) -> None:
        self.client = client
        self.downloads = downloads
        self.progress = progress
        self.time_format = time_format
        self.tz = tz  # None: the local time zone (TZ)
        self.done = False  # after /quit
        self.login_refused = False  # a /login or /register was refused for good
        self.query: str | None = None  # /query: plain lines go privately to this user
        self.known_users: set[str] = set()
        self.known_rooms: set[str] = set()
        self.known_files: set[str] = set()
        self._day: date = datetime.now().astimezone(tz).date()

    # --- state shown to the user ----------------------------------------------------------------

    @property
    def prompt(self) -> str:
        """``(user@room)> ``, from what the server confirmed: ``unknown`` before login, ``outside`` when
        in no room; ``(user->bob)> `` in a /query with bob."""
        user = self.client.user or "unknown"
        if self.query:
            return f"({user}->{self.query})> "
        return f"({user}@{self.client.current_room or 'outside'})> "

    # --- lines in -------------------------------------------------------------------------------

    def is_transfer(self, line: str) -> bool:
        return _command_of(line.strip()) in TRANSFERS

    async def handle(self, line: str) -> list[str]:
        """Run one typed line; the lines to print (none for a message: it comes back as an event)."""
        try:
            return await self._run(line)
        except (UtuVoxError, ProtocolError) as exc:  # refused by the server, or the line did not parse
            return self.error(exc.message)

    async def send_all(self, lines: list[str]) -> list[str]:
        """Run several lines (a paste) one after the other, each as if typed. A line the server asks to
        wait for (``rate_limited``) is sent again once the wait is over, never dropped."""
        out: list[str] = []
        for line in lines:
            while True:
                try:
                    out += await self._run(line)
                except UtuVoxError as exc:
                    if exc.code == "rate_limited":
                        await trio.sleep(exc.retry_after or 1.0)
                        continue
                    out += self.error(exc.message)
                except ProtocolError as exc:
                    out += self.error(exc.message)
                break
        return out

    async def _run(self, line: str) -> list[str]:
        line = line.strip("\r\n")
        if not line.strip():
            return []
        if not line.startswith("/") and self.query:
            line = f"/msg {self.query} {line}"
        name, _, rest = line[1:].partition(" ") if line.startswith("/") else ("", "", "")
        command = ALIASES.get(name.lower(), name.lower())
        if command and command not in text_codec.COMMANDS and command not in LOCAL_COMMANDS:
            known = {*text_codec.COMMANDS, *LOCAL_COMMANDS, *ALIASES}
            return self.error(text_codec.unknown_command(name, sorted(known)))
        if command not in ("quit", "topic", "query") and not self.client.connected:
            # Rather than leave the prompt hanging until the server is back, say so now.
            return self.error("Not connected to the server right now; reconnecting. Try again in a moment.")
        if command == "quit":
            return await self._quit()
        if command == "upload":
            return await self._upload(rest)
        if command == "download":
            return await self._download(rest)
        if command == "query":
            return await self._query(rest)
        if command == "topic":
            return self._topic()
        if command == "list_files" and "list_files" not in text_codec.COMMANDS:
            return self._render(await self.client.request(f.ListFiles(room=rest.strip() or None)), None)
        if command == "join" and (room := self._in_room(rest.strip())):
            # Already in it: make it the current room, without printing its history again.
            joined = await self.client.join(room)
            return self.info(f"Now talking in room '{joined.room}'.")
        request = text_codec.parse_line(f"/{command} {rest}" if command else line)
        try:
            reply = await self.client.request(request)
        except UtuVoxError as exc:
            if command in ("login", "register") and exc.code in LOGIN_REFUSED:
                self.login_refused = True
            raise
        if isinstance(request, p.Msg):
            # The sender sees what was sent, as the receiver does.
            self._learn(reply)
            return self._stamp([(utc_now(), f"[private to {request.to}] {self.client.user}: "
                                            f"{clean(request.text)}")])
        lines = self._render(reply, request)
        if isinstance(request, p.Help):
            lines += self._client_help()
        return lines

    def _in_room(self, name: str) -> str | None:
        """The name of a room this session is in, as the server spells it, or ``None``."""
        key = name.lower()
        return next((r for r in self.client.rooms if r.lower() == key), None) if key else None

    async def _quit(self) -> list[str]:
        self.done = True
        if self.client.connected:
            try:
                with trio.move_on_after(2):
                    await self.client.quit()
            except UtuVoxError:
                pass
        await self.client.aclose()
        return self._render(p.Goodbye(reason="Goodbye.", code="quit"), None)

    async def _query(self, rest: str) -> list[str]:
        user, _, text = rest.strip().partition(" ")
        if not user:
            if self.query is None:
                return self.error(f"Usage: {LOCAL_COMMANDS['query'][0]}")
            ended, self.query = self.query, None
            return self.info(f"Private conversation with {ended} ended.")
        self.query = user
        lines = self.info(f"Talking privately with {user}: plain lines go to them. /query alone ends it.")
        if text.strip():
            lines += await self.handle(f"/msg {user} {text}")
        return lines

    def _topic(self) -> list[str]:
        room = self.client.current_room
        if room is None:
            return self.error("You are not in any room. Join one with /join <room>.")
        return self.info(f"You are in room '{room}'. UtuVox rooms have no topic.")

    def _upload_arguments(self, rest: str) -> tuple[str | None, str] | str:
        """(room, path) of ``/upload [room] <filepath>``, or the usage error."""
        try:
            words = shlex.split(rest)
        except ValueError:
            return f"Unbalanced quotes. Usage: {LOCAL_COMMANDS['upload'][0]}"
        if not words:
            return f"Usage: {LOCAL_COMMANDS['upload'][0]}"
        if len(words) >= 2 and (self._in_room(words[0]) or not Path(rest.strip()).expanduser().exists()):
            room = self._in_room(words[0]) or words[0]
            return room, " ".join(words[1:])
        if len(words) == 1:
            return None, words[0]
        return None, rest.strip()  # an unquoted path with spaces

    async def _upload(self, rest: str) -> list[str]:
        parsed = self._upload_arguments(rest)
        if isinstance(parsed, str):
            return self.error(parsed)
        room, path_text = parsed
        room = room or self.client.current_room
        if room is None:
            return self.error("You are not in any room: join one, or name it: "
                              f"{LOCAL_COMMANDS['upload'][0]}")
        path = Path(path_text).expanduser()
        if not path.is_file():
            return self.error(f"No such file: {path}")
        progress = self.progress(f"Uploading {path.name}") if self.progress else None
        try:
            done = await self.client.upload(room, path, progress)
        except OSError as exc:
            return self.error(f"Cannot read {path}: {exc.strerror or exc}")
        self.known_files.add(done.name)
        return self.info(f"File '{done.original}' ({byte_size(path.stat().st_size)}) uploaded to room "
                         f"'{done.room}' as '{done.name}'.")

    async def _download(self, rest: str) -> list[str]:
        name = rest.strip()
        if not name:
            return self.error(f"Usage: {LOCAL_COMMANDS['download'][0]}")
        progress = self.progress(f"Downloading {name}") if self.progress else None
        try:
            path = await self.client.download(name, self.downloads, progress)
        except OSError as exc:
            return self.error(f"Cannot write into {self.downloads}: {exc.strerror or exc}")
        return self.info(f"File '{name}' ({byte_size(path.stat().st_size)}) downloaded to {path}.")

    # --- lines out ------------------------------------------------------------------------------

    def _stamp(self, pairs: list[tuple[datetime, str]]) -> list[str]:
        """``[14:05] text`` in local time, with ``--- Day changed to Wed 02 Dec 2026 ---`` before a line of
        another day than the one before it (as irssi does)."""
        out: list[str] = []
        for ts, text in pairs:
            local = ts.astimezone(self.tz)
            if local.date() != self._day:
                self._day = local.date()
                out.append(f"--- Day changed to {local:%a %d %b %Y} ---")
            out.append(f"[{local.strftime(self.time_format)}] {text}")
        return out

    def info(self, text: str) -> list[str]:
        return self._stamp([(utc_now(), clean(text))])

    def error(self, text: str) -> list[str]:
        return self._render(p.Error(code="client", message=text), None)

    def _render(self, frame: Reply | Event, request: Request | None) -> list[str]:
        self._learn(frame)
        return self._stamp(text_codec.render_lines(frame, request=request, current_room=self.client.current_room))

    def render_event(self, event: Any) -> list[str]:
        """The lines of an event (or of a reply nobody asked for: a goodbye, a stray error)."""
        if isinstance(event, p.Goodbye) and event.code == "quit" and self.done:
            return []  # /quit already said goodbye
        return self._render(event, None)

    def on_state(self, state: str, detail: str) -> list[str]:
        """Lines about the connection coming and going (``Client.on_state``)."""
        if state == "disconnected":
            return self.info(f"Connection lost ({detail}). Reconnecting...")
        if state == "reconnected":
            where = f" in room '{self.client.current_room}'" if self.client.current_room else ""
            who = f" as {self.client.user}" if self.client.user else ""
            return self.info(f"Reconnected{who}{where}.")
        return []  # "closed": the server's goodbye, or the error that ended the client, says why

    # --- completion -----------------------------------------------------------------------------

    def _learn(self, frame: Any) -> None:
        """Remember names seen, for completion."""
        user = getattr(frame, "user", None)
        if isinstance(user, str) and not isinstance(frame, p.Joined):
            self.known_users.add(user)
        if isinstance(frame, p.UserList):
            self.known_users.update(u.name for u in frame.users)
        elif isinstance(frame, p.RoomList):
            self.known_rooms.update(r.name for r in frame.rooms)
        elif isinstance(frame, p.FileEvent):
            self.known_files.add(frame.name)
        elif isinstance(frame, f.FileList):
            self.known_files.update(x.name for x in frame.files)
        elif isinstance(frame, p.Joined):
            self.known_users.update(e.user for e in frame.history if isinstance(e, p.JoinEvent | p.MessageEvent))
        room = getattr(frame, "room", None)
        if isinstance(room, str):
            self.known_rooms.add(room)

    def command_names(self) -> list[str]:
        names = {name for name, c in text_codec.COMMANDS.items() if not c.admin or self.client.is_admin}
        return sorted("/" + name for name in names | set(LOCAL_COMMANDS) | set(ALIASES))

    def complete(self, text: str) -> list[str]:
        """Replacements for the word being typed at the end of ``text``, each with what follows it (a space,
        ``: `` after a nick that starts a message, ``/`` after a directory): a command, then a room, a user,
        a file name or a local path depending on the command; in a message, a nick."""
        word = text.rpartition(" ")[2]
        if not text.startswith("/"):
            if not word:
                return []
            suffix = ": " if word == text else " "
            return sorted(name + suffix for name in self.known_users - {self.client.user or ""}
                          if name.lower().startswith(word.lower()))
        if " " not in text:
            return [c + " " for c in self.command_names() if c.startswith(text.lower())]
        name, _, rest = text[1:].partition(" ")
        command = ALIASES.get(name.lower(), name.lower())
        if command in PATH_ARGUMENT:
            rooms = [] if " " in rest else [r + " " for r in sorted(self.client.rooms)
                                          if r.lower().startswith(rest.lower())]
            return rooms + complete_path(word)
        if " " in rest:  # only the first argument is completed, but a nick anywhere in a message
            if command in ("msg", "me", "message", "query") and word:
                return sorted(n + " " for n in self.known_users - {self.client.user or ""}
                              if n.lower().startswith(word.lower()))
            return []
        if command in ROOM_ARGUMENT:
            pool = self.known_rooms | set(self.client.rooms)
        elif command in USER_ARGUMENT:
            pool = self.known_users - {self.client.user or ""}
        elif command in FILE_ARGUMENT:
            pool = self.known_files
        else:
            return []
        return sorted(n + " " for n in pool if n.lower().startswith(rest.lower()))

    def _client_help(self) -> list[str]:
        """The commands this client adds to the server's list, and the IRC aliases."""
        extra = [f"{usage} - {text}" for name, (usage, text) in LOCAL_COMMANDS.items()
                 if name not in text_codec.COMMANDS or text_codec.COMMANDS[name].usage != usage]
        aliases = ", ".join(f"/{a} = /{c}" for a, c in ALIASES.items())
        lines = self.info("Client commands:")
        for line in extra:
            lines += self.info(line)
        return lines + self.info(f"Aliases: {aliases}. Tab completes commands, rooms, nicks and paths.")


def complete_path(word: str) -> list[str]:
    """Local paths that start with ``word``: directories end with ``/``, files with a space; a name with
    a space comes quoted."""
    typed = word.strip("\"'")
    base = Path(typed).expanduser()
    folder, stem = (base, "") if typed.endswith("/") else (base.parent, base.name)
    try:
        entries = sorted(folder.iterdir()) if folder.is_dir() else []
    except OSError:
        return []
    prefix = typed[: len(typed) - len(stem)]
    out = []
    for entry in entries:
        if not entry.name.startswith(stem) or (entry.name.startswith(".") and not stem.startswith(".")):
            continue
        candidate = prefix + entry.name
        if entry.is_dir():
            out.append(candidate + "/")
        else:
            out.append((f'"{candidate}"' if " " in candidate else candidate) + " ")
    return out
