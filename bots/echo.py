"""Echo: repeats every private message back to whoever sent it.

    UTUVOX_BOT_PASSWORD=... python -m bots.echo --url ws://127.0.0.1:9091 --user echo --register

Messages from other bots are not echoed, so two echo bots never talk to each other forever.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from utuvox.client import Client
from utuvox.protocol.core import PrivateMessage

from . import runner


async def handle(client: Client, args: argparse.Namespace) -> None:
    is_bot = runner.KnownBots(client)
    me = (client.user or "").lower()
    async for event in client:
        if isinstance(event, PrivateMessage) and event.user.lower() != me and not await is_bot(event.user):
            await runner.say(client, event.text, to=event.user)


def build_parser() -> argparse.ArgumentParser:
    return runner.parser("python -m bots.echo", "Repeat private messages back to their sender.")


def main(argv: Sequence[str] | None = None) -> int:
    return runner.main(runner.parse(build_parser(), argv), handle)


if __name__ == "__main__":
    sys.exit(main())
