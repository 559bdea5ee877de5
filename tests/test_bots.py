"""The sample bots doing their jobs against a real server: echo over WebSocket, dice as a subprocess
over TCP, greeter in-process over TCP, and the archiver filling the gap left while it was stopped."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import trio

from bots import archiver, dice, echo, greeter, runner
from utuvox.client import Client, connect
from utuvox.protocol import core as p
from utuvox.protocol import text_codec
from utuvox.protocol.admin import Kick
from utuvox.server.app import Server

from .conftest import FAST_HASH
from .processes import serve, stop

FAST = {f"UTUVOX_{k.upper()}": str(v) for k, v in FAST_HASH.items()}

TIMEOUT = 10
REPO = Path(__file__).resolve().parent.parent


def tcp(server: Server) -> str:
    return f"tcp://127.0.0.1:{server.tcp_port}"


def ws(server: Server) -> str:
    return f"ws://127.0.0.1:{server.ws_port}"


@asynccontextmanager
async def running_bot(module: ModuleType, argv: list[str], *, join: bool = True,
                      prepare: Callable[[argparse.Namespace], argparse.Namespace] = lambda a: a,
                      ) -> AsyncIterator[Client]:
    """A bot in this process, through the same ``runner.run`` its command line uses; stopped on exit."""
    args = prepare(runner.parse(module.build_parser(), argv))
    async with trio.open_nursery() as nursery:
        client = await nursery.start(partial(runner.run, args, module.handle, join=join))
        try:
            yield client
        finally:
            await client.aclose()  # the bot's event loop ends, and with it the bot


async def next_of(client: Client, kind: type, pred: Callable[[Any], bool] = lambda _: True) -> Any:
    with trio.fail_after(TIMEOUT):
        while True:
            event = await client.next_event()
            if isinstance(event, kind) and pred(event):
                return event


def said_by(user: str) -> Callable[[Any], bool]:
    return lambda e: e.user == user


# --- echo ---------------------------------------------------------------------------------------


async def test_echo_bot_over_websocket_repeats_private_messages(server: Server) -> None:
    async with running_bot(echo, ["--url", ws(server), "--user", "echo", "--password", "pw", "--register"]) as bot:
        assert bot.is_bot
        async with connect(tcp(server)) as alice:
            await alice.register("alice", "pw")
            users = {u.name: u.is_bot for u in (await alice.list_all_users()).users}
            assert users == {"alice": False, "echo": True}
            await alice.msg("echo", "hello there")
            back = await next_of(alice, p.PrivateMessage)
            assert (back.user, back.text) == ("echo", "hello there")
            await alice.msg("echo", "twice")
            assert (await next_of(alice, p.PrivateMessage)).text == "twice"


async def test_echo_bot_ignores_other_bots(server: Server) -> None:
    argv = ["--url", tcp(server), "--user", "echo", "--password", "pw", "--register"]
    async with running_bot(echo, argv), connect(tcp(server)) as robot, connect(tcp(server)) as person:
        await robot.register("robot", "pw", bot=True)
        await person.register("person", "pw")
        await robot.msg("echo", "beep")
        await person.msg("echo", "hi")
        # The bot answers in order: had it echoed the robot, that answer would have gone out first.
        assert (await next_of(person, p.PrivateMessage)).text == "hi"
        await robot.ping()  # the server answers after anything already queued for the robot
        assert not [e for e in robot.drain_events() if isinstance(e, p.PrivateMessage)]


# --- dice ---------------------------------------------------------------------------------------


def test_dice_rolls_and_refuses_nonsense() -> None:
    import random

    rng = random.Random(7)
    line = dice.answer("!roll 3d6+2", "amy", rng)
    assert line is not None
    m = re.fullmatch(r"amy rolled 3d6\+2: (\d) \+ (\d) \+ (\d) \+ 2 = (\d+)", line)
    assert m and sum(map(int, m.groups()[:3])) + 2 == int(m.group(4))
    assert dice.answer("!roll 1000d6", "amy", rng) == "amy: between 1 and 100 dice of 2 to 1000 sides, please"
    assert dice.answer("!roll banana", "amy", rng) == "amy: say it like !roll 2d6 or !roll d20+3"
    assert dice.answer("!help", "amy", rng) == dice.HELP
    assert dice.answer("hello", "amy", rng) is None


def test_dice_cooldown_is_per_user() -> None:
    now = [100.0]
    cooldown = dice.Cooldown(5, clock=lambda: now[0])
    assert cooldown.check("amy") == (True, 0.0)
    assert cooldown.check("bob") == (True, 0.0)
    now[0] += 1.5
    assert cooldown.check("Amy") == (False, 3.5)  # how long to wait, each time
    assert cooldown.check("amy") == (False, 3.5)
    now[0] += 3.5
    assert cooldown.check("amy") == (True, 0.0)


async def test_dice_bot_as_a_subprocess_over_tcp(server: Server) -> None:
    async with connect(tcp(server)) as amy, connect(tcp(server)) as ben:
        await amy.register("amy", "pw")
        await ben.register("ben", "pw")
        await amy.create("games")
        await ben.join("games")
        env = {**os.environ, "UTUVOX_BOT_USER": "dice", "UTUVOX_BOT_PASSWORD": "s3cret"}
        command = [sys.executable, "-m", "bots.dice", "--url", tcp(server), "--register", "--room", "games",
                   "--cooldown", "600", "--log-level", "WARNING"]
        process = await trio.lowlevel.open_process(command, env=env, cwd=REPO, stderr=subprocess.PIPE)
        try:
            await next_of(amy, p.JoinEvent, said_by("dice"))
            assert "s3cret" not in " ".join(command)

            await amy.message("!roll 2d6")
            rolled = await next_of(amy, p.MessageEvent, said_by("dice"))
            m = re.fullmatch(r"amy rolled 2d6: (\d) \+ (\d) = (\d+)", rolled.text)
            assert m and int(m.group(1)) + int(m.group(2)) == int(m.group(3))

            await amy.message("!roll 2d6")  # inside amy's cooldown: told privately when to try again...
            await amy.message("!time")  # ...each time
            await ben.message("!time")  # ben has his own cooldown
            answers = []
            while not answers or not answers[-1].startswith("ben"):
                event = await next_of(amy, p.MessageEvent | p.PrivateMessage, said_by("dice"))
                answers.append(("private " if isinstance(event, p.PrivateMessage) else "") + event.text)
            assert len(answers) == 3, answers
            for reminder in answers[:2]:
                assert re.fullmatch(r"private Easy: one command every 600 s\. Try again in (600|5\d\d) s\.", reminder)
            assert re.fullmatch(r"ben: it is \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", answers[2])
        finally:
            process.send_signal(signal.SIGINT)
            with trio.fail_after(TIMEOUT):
                code = await process.wait()
        assert code == 0  # Ctrl-C is a clean exit


def test_bots_want_credentials(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("UTUVOX_BOT_USER", raising=False)
    monkeypatch.delenv("UTUVOX_BOT_PASSWORD", raising=False)
    with pytest.raises(SystemExit):
        runner.parse(dice.build_parser(), ["--user", "dice"])
    assert "UTUVOX_BOT_PASSWORD" in capsys.readouterr().err
    monkeypatch.setenv("UTUVOX_BOT_USER", "envbot")
    monkeypatch.setenv("UTUVOX_BOT_PASSWORD", "envpw")
    args = runner.parse(dice.build_parser(), ["--room", "a", "--room", "b"])
    assert (args.user, args.password, args.rooms) == ("envbot", "envpw", ["a", "b"])


# --- greeter ------------------------------------------------------------------------------------


async def test_greeter_welcomes_whoever_joins(server: Server, tmp_path: Path) -> None:
    argv = ["--url", tcp(server), "--user", "greeter", "--password", "pw", "--register", "--room", "hall",
            "--room", "patio", "--state", str(tmp_path / "greeted.json")]
    async with running_bot(greeter, argv) as bot:
        assert bot.rooms == ("hall", "patio")  # created, since they did not exist
        async with connect(tcp(server)) as cat:
            await cat.register("cat", "pw")
            await cat.join("patio")
            welcome = await next_of(cat, p.MessageEvent, said_by("greeter"))
            assert (welcome.room, welcome.text) == ("patio", "Welcome to patio, cat! Type /help for the commands.")
            await cat.join("hall")
            welcome = await next_of(cat, p.MessageEvent, said_by("greeter"))
            assert (welcome.room, welcome.text) == ("hall", "Welcome to hall, cat! Type /help for the commands.")
            async with connect(tcp(server)) as robot, connect(tcp(server)) as dan:
                await robot.register("robot", "pw", bot=True)
                await robot.join("hall")  # bots are not welcomed...
                await dan.register("dan", "pw")
                await dan.join("hall")  # ...so the next welcome is dan's
                welcome = await next_of(cat, p.MessageEvent, said_by("greeter"))
                assert welcome.text == "Welcome to hall, dan! Type /help for the commands."
    assert json.loads((tmp_path / "greeted.json").read_text()) == {"greeted": {"hall": ["cat", "dan"],
                                                                               "patio": ["cat"]}}
    # The bot stopped; started again, it remembers: cat coming back is not welcomed again, eve is.
    async with running_bot(greeter, argv), connect(tcp(server)) as cat, connect(tcp(server)) as eve:
        await cat.login("cat", "pw")
        await eve.register("eve", "pw")
        await cat.join("hall")
        await cat.leave("hall")
        await cat.join("hall")
        await eve.join("hall")
        welcome = await next_of(cat, p.MessageEvent, said_by("greeter"))
        assert welcome.text == "Welcome to hall, eve! Type /help for the commands."


# --- archiver -----------------------------------------------------------------------------------


async def all_events(client: Client, room: str) -> list[Any]:
    events: list[Any] = []
    before = None
    while True:
        page = await client.history(room, before=before, limit=500)
        events = page.events + events
        if not page.more or not page.events:
            return events
        before = page.events[0].seq


def transcript(directory: Path, room: str) -> str:
    return "".join(path.read_text() for path in sorted((directory / room).glob("*.log")))


async def wait_for_transcript(directory: Path, room: str, fragment: str) -> None:
    with trio.fail_after(TIMEOUT):
        while not (directory / room).exists() or fragment not in transcript(directory, room):
            await trio.sleep(0.01)


async def test_archiver_has_no_hole_across_a_restart(server: Server, tmp_path: Path) -> None:
    archive_dir = tmp_path / "archive"
    argv = ["--url", ws(server), "--user", "archiver", "--password", "pw", "--register", "--room", "general",
            "--dir", str(archive_dir)]
    async with connect(tcp(server)) as dora:
        await dora.register("dora", "pw")
        await dora.create("general")
        await dora.message("before the archiver existed")

        async with running_bot(archiver, argv, join=False, prepare=archiver.prepare):
            await dora.message("while it runs")
            await wait_for_transcript(archive_dir, "general", "dora: while it runs")

        # Away: more than a join's worth of history, so the catch-up has to page.
        for i in range(70):
            await dora.message(f"while away {i}")

        async with running_bot(archiver, argv, join=False, prepare=archiver.prepare):
            await dora.message("after the restart")
            await wait_for_transcript(archive_dir, "general", "dora: after the restart")

        last = json.loads((archive_dir / "state.json").read_text())["last_seq"]["general"]
        expected = [text_codec.render(e, current_room="general") for e in await all_events(dora, "general")
                    if e.seq <= last]
        written = transcript(archive_dir, "general")
        # Every event up to the last one archived, each once, in order: the history from before the
        # first run, the gap while it was stopped, and the live ones.
        assert written == "".join(expected)
        assert "before the archiver existed" in written and "while away 69" in written


# --- the documented example ----------------------------------------------------------------------


async def test_the_fifteen_line_bot_of_the_docs_works(server: Server) -> None:
    doc = (REPO / "docs" / "CLIENT.md").read_text()
    source = re.search(r"## A bot in 15 lines\n\n```python\n(.*?)```", doc, re.DOTALL)
    assert source is not None
    code = source.group(1)
    assert len(code.strip().splitlines()) <= 15
    namespace: dict[str, Any] = {}
    exec(code.replace("tcp://127.0.0.1:9090", tcp(server)).replace("trio.run(main)", ""), namespace)
    async with connect(tcp(server)) as user:
        await user.register("gil", "pw")
        await user.create("general")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(namespace["main"])
            await next_of(user, p.JoinEvent, said_by("shouty"))
            await user.message("!shout hello")
            assert (await next_of(user, p.MessageEvent, said_by("shouty"))).text == "HELLO!"
            nursery.cancel_scope.cancel()


# --- a bot's life, as its operator sees it ---------------------------------------------------------


async def test_a_bot_logs_reconnects_and_exits_1_when_kicked(tmp_path: Path) -> None:
    first = await serve(tmp_path, env=FAST)
    ports = ["--port", str(first.port), "--ws-port", str(first.ws_port)]
    url = f"tcp://127.0.0.1:{first.port}"
    env = {**os.environ, "UTUVOX_BOT_USER": "echo", "UTUVOX_BOT_PASSWORD": "pw"}
    bot = await trio.lowlevel.open_process([sys.executable, "-m", "bots.echo", "--url", url, "--register"],
                                           env=env, cwd=REPO, stderr=subprocess.PIPE)
    assert bot.stderr is not None
    log = b""

    async def read_until(fragment: bytes) -> None:
        nonlocal log
        with trio.fail_after(TIMEOUT):
            while fragment not in log:
                chunk = await bot.stderr.receive_some(4096)
                assert chunk, log
                log += chunk

    server = first.proc
    try:
        await read_until(b"is up on")
        await stop(server)
        await read_until(b"connection lost (Server shutting down.); reconnecting")
        server = (await serve(tmp_path, *ports, env=FAST)).proc
        await read_until(b"reconnected to " + url.encode())
        async with connect(url) as root:
            await root.register("root", "pw", admin_key=first.admin_key)
            await root.request(Kick(username="echo", reason="enough"))
        await read_until(b"disconnected by the server (kicked)")
        with trio.fail_after(TIMEOUT):
            assert await bot.wait() == 1
    finally:
        if bot.returncode is None:
            bot.kill()
        await stop(server)
