"""Echo: repeats every private message back to whoever sent it.

    UTUVOX_BOT_PASSWORD=... python -m bots.echo --url ws://127.0.0.1:9091 --user echo --register

Messages from other bots are not echoed, so two echo bots never talk to each other forever.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from utuvox.client import Client, UtuVoxError
from utuvox.protocol.core import PrivateMessage

from . import runner


class Echo:
    def __init__(self, client: Client) -> None:
        self.client = client
        self._is_bot: dict[str, bool] = {}

    async def sender_is_bot(self, user: str) -> bool:
        key = user.lower()
        if key not in self._is_bot:
            try:
                users = (await self.client.list_all_users()).users
            except UtuVoxError:
                return False
            self._is_bot.update({u.name.lower(): u.is_bot for u in users})
        return self._is_bot.get(key, False)

    async def serve(self) -> None:
        async for event in self.client:
            if not isinstance(event, PrivateMessage) or event.user.lower() == (self.client.user or "").lower():
                continue
            if await self.sender_is_bot(event.user):
                continue
            await runner.say(self.client, event.text, to=event.user)


async def handle(client: Client, args: argparse.Namespace) -> None:
    await Echo(client).serve()


def build_parser() -> argparse.ArgumentParser:
    return runner.parser("python -m bots.echo", "Repeat private messages back to their sender.")


def main(argv: Sequence[str] | None = None) -> int:
    return runner.main(runner.parse(build_parser(), argv), handle)


if __name__ == "__main__":
    sys.exit(main())
