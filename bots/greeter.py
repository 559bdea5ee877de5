"""Greeter: welcomes every user who joins one of its rooms (other bots excepted).

    UTUVOX_BOT_PASSWORD=... python -m bots.greeter --user greeter --register --room general --room games
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from utuvox.client import Client
from utuvox.protocol.core import JoinEvent

from . import runner

DEFAULT_TEXT = "Welcome to {room}, {user}! Type /help for the commands."


async def handle(client: Client, args: argparse.Namespace) -> None:
    is_bot = runner.KnownBots(client)
    me = (client.user or "").lower()
    async for event in client:
        if isinstance(event, JoinEvent) and event.user.lower() != me and not await is_bot(event.user):
            await runner.say(client, args.text.format(user=event.user, room=event.room), room=event.room)


def build_parser() -> argparse.ArgumentParser:
    p = runner.parser("python -m bots.greeter", "Welcome everyone who joins the bot's rooms.")
    p.add_argument("--text", default=DEFAULT_TEXT, help="the welcome, with {user} and {room} (default: %(default)s)")
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
