"""Greeter: welcomes every user who joins one of its rooms (other bots excepted), once.

    UTUVOX_BOT_PASSWORD=... python -m bots.greeter --user greeter --register --room general --room games

Whom it has welcomed, and where, it keeps in a small JSON file of its own (``--state``, default
``greeter-state.json`` in the current directory: ``{"greeted": {"general": ["alice", "bob"]}}``, room and
user names in lower case), so a restart of the bot or of the server never welcomes anyone twice. Delete
the file to start afresh.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from utuvox.client import Client
from utuvox.protocol.core import JoinEvent

from . import runner

DEFAULT_TEXT = "Welcome to {room}, {user}! Type /help for the commands."
DEFAULT_STATE = Path("greeter-state.json")
log = logging.getLogger("bots.greeter")


class Greeted:
    """The (room, user) pairs already welcomed, kept in a JSON file written whole at each change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rooms: dict[str, set[str]] = {}
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            self.rooms = {room: set(users) for room, users in data.get("greeted", {}).items()}
        except FileNotFoundError:
            pass
        except (OSError, ValueError, AttributeError, TypeError) as exc:
            # A damaged file must not stop the bot; it is rewritten at the next welcome.
            log.warning("ignoring %s, which cannot be read: %s", path, exc)

    def __contains__(self, pair: tuple[str, str]) -> bool:
        return pair[1].lower() in self.rooms.get(pair[0].lower(), ())

    def add(self, room: str, user: str) -> None:
        self.rooms.setdefault(room.lower(), set()).add(user.lower())
        data = {"greeted": {r: sorted(users) for r, users in sorted(self.rooms.items())}}
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("cannot save %s: %s", self.path, exc)


async def handle(client: Client, args: argparse.Namespace) -> None:
    is_bot = runner.KnownBots(client)
    greeted = Greeted(args.state)
    me = (client.user or "").lower()
    async for event in client:
        if (isinstance(event, JoinEvent) and event.user.lower() != me and (event.room, event.user) not in greeted
                and not await is_bot(event.user)):
            greeted.add(event.room, event.user)
            await runner.say(client, args.text.format(user=event.user, room=event.room), room=event.room)


def build_parser() -> argparse.ArgumentParser:
    p = runner.parser("python -m bots.greeter", "Welcome everyone who joins the bot's rooms, once.")
    p.add_argument("--text", default=DEFAULT_TEXT, help="the welcome, with {user} and {room} (default: %(default)s)")
    p.add_argument("--state", type=Path, default=DEFAULT_STATE, metavar="FILE",
                   help="where the bot remembers whom it welcomed (default: %(default)s)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    p = build_parser()
    args = runner.parse(p, argv)
    try:
        args.text.format(user="someone", room="somewhere")
    except (KeyError, IndexError, ValueError) as exc:
        p.error(f"--text may use {{user}} and {{room}} only: {exc}")
    return runner.main(args, handle)


if __name__ == "__main__":
    sys.exit(main())
