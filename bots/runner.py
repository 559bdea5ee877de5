"""What every sample bot shares: its command line, signing in, joining its rooms, and running until
stopped.

Credentials come from ``--user``/``--password`` or from the environment (``UTUVOX_BOT_USER``,
``UTUVOX_BOT_PASSWORD``; the environment keeps the password out of ``ps``). ``--register`` creates the
account, marked as a bot, on the first run; later runs just log in. The client reconnects by itself,
logging in again and rejoining its rooms, so a bot survives a server restart without losing an event.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import trio

from utuvox.client import Client, UtuVoxError, connect
from utuvox.protocol.core import Goodbye, Joined

log = logging.getLogger("bots")

Handler = Callable[[Client, argparse.Namespace], Awaitable[None]]


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--url", default=os.environ.get("UTUVOX_URL", "tcp://127.0.0.1:9090"),
                   help="server URL, tcp://host:port or ws://host:port; tcps:// or wss:// for TLS "
                        "(default $UTUVOX_URL or tcp://127.0.0.1:9090)")
    p.add_argument("--ca", default=os.environ.get("UTUVOX_CA"), metavar="PEM",
                   help="verify a TLS server against this CA file (default $UTUVOX_CA, else the system's CAs)")
    p.add_argument("--user", default=os.environ.get("UTUVOX_BOT_USER"),
                   help="the bot's username (default $UTUVOX_BOT_USER)")
    p.add_argument("--password", default=os.environ.get("UTUVOX_BOT_PASSWORD"),
                   help="the bot's password (default $UTUVOX_BOT_PASSWORD, which keeps it out of ps)")
    p.add_argument("--register", action="store_true",
                   help="create the account as a bot account if it does not exist yet")
    p.add_argument("--room", action="append", default=[], dest="rooms", metavar="ROOM",
                   help="a room to join (created if missing); repeat for several")
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR (default INFO)")
    return p


def parse(p: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    args = p.parse_args(argv)
    if not args.user or not args.password:
        p.error("give --user and --password, or set UTUVOX_BOT_USER and UTUVOX_BOT_PASSWORD")
    return args


async def enter(client: Client, room: str, *, since: int | None = None) -> Joined:
    """Join ``room``, creating it if it does not exist."""
    try:
        return await client.join(room, since=since)
    except UtuVoxError as exc:
        if exc.code != "no_such_room":
            raise
    try:
        return await client.create(room)
    except UtuVoxError as exc:
        if exc.code != "room_exists":  # someone else created it just now
            raise
        return await client.join(room, since=since)


async def say(client: Client, text: str, *, room: str | None = None, to: str | None = None) -> bool:
    """Send a message to ``room`` (or privately ``to`` a user), waiting out a rate limit once. Returns
    whether it was sent; a refusal is logged, never fatal: a bot keeps serving the others."""
    for attempt in (1, 2):
        try:
            if to is not None:
                await client.msg(to, text)
            else:
                await client.message(text, room=room)
            return True
        except UtuVoxError as exc:
            if exc.code == "rate_limited" and attempt == 1:
                await trio.sleep(exc.retry_after or 1.0)
                continue
            log.warning("could not send to %s: %s", to or room, exc.message)
            return False
    return False


class KnownBots:
    """Which users are bots (as user lists show them), so that bots do not answer or greet each other."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self._is_bot: dict[str, bool] = {}

    async def __call__(self, user: str) -> bool:
        key = user.lower()
        if key not in self._is_bot:
            try:
                users = (await self.client.list_all_users()).users
            except UtuVoxError:
                return False
            self._is_bot.update({u.name.lower(): u.is_bot for u in users})
        return self._is_bot.get(key, False)


async def run(args: argparse.Namespace, handler: Handler, *, join: bool = True,
              task_status: Any = trio.TASK_STATUS_IGNORED) -> Goodbye | None:
    """Connect, sign in, join ``args.rooms`` (unless ``join=False``: the handler joins them itself), then
    hand over to ``handler`` until it returns. ``task_status.started(client)`` comes once the bot is
    in its rooms, for tests and for programs that run several bots in one process. Returns the server's
    goodbye if it ended the bot (a kick, a ban)."""
    async with connect(args.url, reconnect=True, ca=getattr(args, "ca", None), on_state=_log_state) as client:
        await client.sign_in(args.user, args.password, register=args.register, bot=True)
        if join:
            for room in args.rooms:
                await enter(client, room)
        log.info("%s is up on %s in %s", client.user, client.url, ", ".join(client.rooms) or "no room")
        task_status.started(client)
        await handler(client, args)
    return client.goodbye


def _log_state(state: str, detail: str) -> None:
    """An operator reading a bot's log sees the connection come and go."""
    if state == "disconnected":
        log.warning("connection lost (%s); reconnecting", detail)
    elif state == "reconnected":
        log.info("reconnected to %s, logged in again and back in its rooms", detail)
    elif state == "closed":
        log.info("connection closed (%s)", detail)


def main(args: argparse.Namespace, handler: Handler, *, join: bool = True) -> int:
    """Run a bot from the command line; Ctrl-C stops it (exit 0). A kick or a ban ends it with exit 1."""
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        goodbye = trio.run(lambda: run(args, handler, join=join))
        if goodbye is not None and goodbye.code != "quit":
            log.error("disconnected by the server (%s): %s", goodbye.code, goodbye.reason)
            return 1
    except KeyboardInterrupt:
        return 0
    except UtuVoxError as exc:
        print(f"{args.user}: {exc.message} ({exc.code})", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"{args.user}: cannot connect to {args.url}: {exc}", file=sys.stderr)
        return 1
    return 0
