"""Dice: answers ``!roll 2d6``, ``!time`` and ``!help`` in every room it is in.

    UTUVOX_BOT_PASSWORD=... python -m bots.dice --user dice --register --room games

Each user gets one command per ``--cooldown`` seconds (default 3). A command inside the cooldown is
answered privately, to its sender alone, with when to try again, so nobody can make the bot flood a room
and nobody is left wondering why it is silent.
"""

from __future__ import annotations

import argparse
import math
import random
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import trio

from utuvox.client import Client
from utuvox.protocol.core import MessageEvent

from . import runner

MAX_DICE = 100
MAX_SIDES = 1000
_ROLL = re.compile(r"^(\d*)d(\d+)([+-]\d+)?$", re.IGNORECASE)
HELP = "Commands: !roll NdM[+K] (e.g. !roll 2d6, !roll d20+3), !time (UTC), !help."


def roll(spec: str, rng: random.Random) -> str:
    """``2d6`` -> ``2d6: 3 + 5 = 8``. Raises ``ValueError`` with a sentence for people."""
    match = _ROLL.match(spec.strip() or "1d6")
    if not match:
        raise ValueError("say it like !roll 2d6 or !roll d20+3")
    count = int(match.group(1) or 1)
    sides = int(match.group(2))
    bonus = int(match.group(3) or 0)
    if not 1 <= count <= MAX_DICE or not 2 <= sides <= MAX_SIDES:
        raise ValueError(f"between 1 and {MAX_DICE} dice of 2 to {MAX_SIDES} sides, please")
    rolls = [rng.randint(1, sides) for _ in range(count)]
    total = sum(rolls) + bonus
    shown = " + ".join(map(str, rolls)) if count <= 20 else f"{count} dice"
    if bonus:
        shown += f" {'+' if bonus > 0 else '-'} {abs(bonus)}"
    spec = match.group(0).lower()
    return f"{spec}: {shown} = {total}" if count > 1 or bonus else f"{spec}: {total}"


@dataclass
class Cooldown:
    """One command per ``seconds`` per user."""

    seconds: float
    clock: Callable[[], float] = trio.current_time
    _last: dict[str, float] = field(default_factory=dict)

    def check(self, user: str) -> tuple[bool, float]:
        """(allowed, seconds left before the next command is allowed)."""
        key = user.lower()
        now = self.clock()
        last = self._last.get(key)
        if last is None or now - last >= self.seconds:
            self._last[key] = now
            return True, 0.0
        return False, self.seconds - (now - last)


def answer(text: str, user: str, rng: random.Random) -> str | None:
    """The bot's answer to a message, or ``None`` if it is not a command for the bot."""
    command, _, rest = text.strip().partition(" ")
    command = command.lower()
    if command == "!roll":
        try:
            return f"{user} rolled {roll(rest, rng)}"
        except ValueError as exc:
            return f"{user}: {exc}"
    if command == "!time":
        return f"{user}: it is {datetime.now(UTC).strftime('%Y-%m-%d %H:%M:%S')} UTC"
    if command == "!help":
        return HELP
    return None


async def handle(client: Client, args: argparse.Namespace) -> None:
    rng = random.Random(args.seed) if args.seed is not None else random.SystemRandom()
    cooldown = Cooldown(args.cooldown)
    me = (client.user or "").lower()
    async for event in client:
        if not isinstance(event, MessageEvent) or event.user.lower() == me or not event.text.startswith("!"):
            continue
        reply = answer(event.text, event.user, rng)
        if reply is None:
            continue
        allowed, left = cooldown.check(event.user)
        if not allowed:
            await runner.say(client, f"Easy: one command every {args.cooldown:g} s. Try again in "
                                     f"{math.ceil(left)} s.", to=event.user)
            continue
        await runner.say(client, reply, room=event.room)


def build_parser() -> argparse.ArgumentParser:
    p = runner.parser("python -m bots.dice", "Roll dice and tell the time in the bot's rooms.")
    p.add_argument("--cooldown", type=float, default=3.0, help="seconds between two commands of one user (default 3)")
    p.add_argument("--seed", type=int, help="seed the dice, for reproducible rolls")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return runner.main(runner.parse(build_parser(), argv), handle)


if __name__ == "__main__":
    sys.exit(main())
