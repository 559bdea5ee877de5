"""The terminal client's command layer: a typed line in, a request to the server, rendered lines out.

It knows nothing of terminals, so tests (and other front ends) drive it directly::

    shell = Shell(client)
    lines = await shell.handle("/join general")   # ["[2025-01-01 12:00:00] You joined room 'general'."]
    shell.prompt                                  # "(bob@general)> "

Lines are the slash commands of text mode, parsed by :func:`utuvox.protocol.text_codec.parse_line` into
the same request models and sent as JSON; replies and events are rendered by
:func:`~utuvox.protocol.text_codec.render`, so the terminal client reads exactly like ``nc``. Only file
transfer is done here (``/upload <room> <path>``, ``/download <name>``): the bytes are local.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from utuvox.protocol import Event, ProtocolError, Reply, Request, text_codec, utc_now
from utuvox.protocol import core as p
from utuvox.protocol import files as f

from .client import Client
from .errors import UtuVoxError

log = logging.getLogger("utuvox.client")

Progress = Callable[[int, int], None]
# Makes the progress callback of one transfer, given its label ("Uploading report.pdf").
ProgressFactory = Callable[[str], Progress]

LOCAL_COMMANDS: dict[str, tuple[str, str]] = {
    "upload": ("/upload <room> <filepath>", "Share a local file in a room."),
    "download": ("/download <name>", "Download a shared file into the downloads directory."),
    "list_files": ("/list_files [room]", "List the files shared in a room (default: the current room)."),
    "quit": ("/quit", "Disconnect from the server and exit the chat."),
}
# Lines that carry a password: never kept in the command history.
SECRET_COMMANDS = frozenset({"login", "register", "changepassword", "add_user", "edit_user", "change_admin_key"})
# Which commands take a room, a user or a file name as their first argument, for completion.
ROOM_ARGUMENT = frozenset({"join", "leave", "history", "list_users_in_room", "list_files", "upload", "delete_room",
                           "view_room_history", "tail", "announce_room"})
USER_ARGUMENT = frozenset({"msg", "kick", "ban_user", "unban_user", "edit_user"})
FILE_ARGUMENT = frozenset({"download"})


def _command_of(line: str) -> str:
    return line[1:].partition(" ")[0].lower() if line.startswith("/") else ""


def is_secret(line: str) -> bool:
    """Whether ``line`` carries a password (so it must not be remembered)."""
    return _command_of(line.strip()) in SECRET_COMMANDS


class Shell:
    def __init__(self, client: Client, *, downloads: Path = Path("downloads"),
                 progress: ProgressFactory | None = None) -> None:
        self.client = client
        self.downloads = downloads
        self.progress = progress
        self.done = False  # after /quit
        self.known_users: set[str] = set()
        self.known_rooms: set[str] = set()
        self.known_files: set[str] = set()

    # --- state shown to the user ----------------------------------------------------------------

    @property
    def prompt(self) -> str:
        """``(user@room)> ``, from what the server confirmed: ``unknown`` before login, ``outside`` when
        in no room."""
        return f"({self.client.user or 'unknown'}@{self.client.current_room or 'outside'})> "

    # --- lines in -------------------------------------------------------------------------------

    async def handle(self, line: str) -> list[str]:
        """Run one typed line; the lines to print (none for a message: it comes back as an event)."""
        line = line.strip("\r\n")
        if not line.strip():
            return []
        command, _, rest = line[1:].partition(" ") if line.startswith("/") else ("", "", "")
        command = command.lower()
        if command != "quit" and not self.client.connected:
            # Rather than leave the prompt hanging until the server is back, say so now.
            return self.error("Not connected to the server right now; reconnecting. Try again in a moment.")
        try:
            if command == "quit":
                return await self._quit()
            if command == "upload":
                return await self._upload(rest)
            if command == "download":
                return await self._download(rest)
            if command == "list_files" and "list_files" not in text_codec.COMMANDS:
                room = rest.strip() or None
                return self._render(await self.client.request(f.ListFiles(room=room)), None)
            request = text_codec.parse_line(line)
            lines = self._render(await self.client.request(request), request)
            if isinstance(request, p.Help):
                lines += self._client_help()
            return lines
        except UtuVoxError as exc:
            return self.error(exc.message)
        except ProtocolError as exc:  # the line did not parse
            return self.error(exc.message)

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

    async def _upload(self, rest: str) -> list[str]:
        room, _, path_text = rest.strip().partition(" ")
        if not room or not path_text.strip():
            return self.error(f"Usage: {LOCAL_COMMANDS['upload'][0]}")
        path = Path(path_text.strip()).expanduser()
        if not path.is_file():
            return self.error(f"No such file: {path}")
        progress = self.progress(f"Uploading {path.name}") if self.progress else None
        try:
            done = await self.client.upload(room, path, progress)
        except OSError as exc:
            return self.error(f"Cannot read {path}: {exc.strerror or exc}")
        self.known_files.add(done.name)
        return self.info(f"File '{done.original}' uploaded to room '{done.room}' as '{done.name}'.")

    async def _download(self, rest: str) -> list[str]:
        name = rest.strip()
        if not name:
            return self.error(f"Usage: {LOCAL_COMMANDS['download'][0]}")
        progress = self.progress(f"Downloading {name}") if self.progress else None
        try:
            path = await self.client.download(name, self.downloads, progress)
        except OSError as exc:
            return self.error(f"Cannot write into {self.downloads}: {exc.strerror or exc}")
        return self.info(f"File '{name}' downloaded to {path}.")

    # --- lines out ------------------------------------------------------------------------------

    def info(self, text: str) -> list[str]:
        return [f"{text_codec.stamp(utc_now())} {text_codec.clean(text)}"]

    def error(self, text: str) -> list[str]:
        return self._render(p.Error(code="client", message=text), None)

    def _render(self, frame: Reply | Event, request: Request | None) -> list[str]:
        self._learn(frame)
        if isinstance(frame, f.FileList) and f.FileList not in text_codec.REPLY_RENDERERS:
            return self._file_list(frame)
        return text_codec.render(frame, request=request, current_room=self.client.current_room).splitlines()

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

    def _file_list(self, reply: f.FileList) -> list[str]:
        if not reply.files:
            return self.info(f"No files in room '{reply.room}'.")
        lines = self.info(f"Files in room '{reply.room}':")
        for item in reply.files:
            lines += self.info(f"{item.name} ({text_codec.clean(item.original)}, {item.size} bytes, "
                               f"by {item.uploader})")
        return lines

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
        room = getattr(frame, "room", None)
        if isinstance(room, str):
            self.known_rooms.add(room)

    def command_names(self) -> list[str]:
        names = {name for name, c in text_codec.COMMANDS.items() if not c.admin or self.client.is_admin}
        return sorted("/" + name for name in names | set(LOCAL_COMMANDS))

    def complete(self, text: str) -> list[str]:
        """Candidates for the word being typed at the end of ``text``: a command, then a room, a user or a
        file name, depending on the command."""
        if not text.startswith("/"):
            return []
        if " " not in text:
            return [c for c in self.command_names() if c.startswith(text.lower())]
        command, _, rest = text[1:].partition(" ")
        if " " in rest:  # only the first argument is completed
            return []
        command = command.lower()
        if command in ROOM_ARGUMENT:
            pool = self.known_rooms | set(self.client.rooms)
        elif command in USER_ARGUMENT:
            pool = self.known_users - {self.client.user or ""}
        elif command in FILE_ARGUMENT:
            pool = self.known_files
        else:
            return []
        return sorted(name for name in pool if name.lower().startswith(rest.lower()))

    def _client_help(self) -> list[str]:
        """The commands this client adds to the server's list."""
        extra = [f"{usage} - {text}" for name, (usage, text) in LOCAL_COMMANDS.items()
                 if name not in text_codec.COMMANDS]
        return self.info("Client commands:") + [line for text in extra for line in self.info(text)] if extra else []
