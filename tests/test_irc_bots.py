"""IRC bot frameworks as real peers: Limnoria and Sopel, each run as its own process against a real server,
logged in with SASL PLAIN to a UtuVox account under another nick, in one room with a JSON SDK user and a
text-mode user.

Each conversation: the bot joins, answers a command from the JSON user and one from the text user, answers
a private message privately, its account reads the room and the private conversation back with CHATHISTORY
after reconnecting, and a ban from an admin's JSON session ends its IRC session.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import trio

from utuvox.client import connect
from utuvox.protocol import core as p
from utuvox.protocol.irc.lines import parse

from .clients import TextLines, register_accounts
from .conftest import running_server
from .test_irc import RawIrc

TIMEOUT = 20  # a framework's own pacing (throttles, flood control) comes on top of the server's answers


@dataclass
class BotProcess:
    """A framework's process and the file where it logs every IRC line it reads and writes."""

    proc: trio.Process
    log: Path
    start: int = 0  # where this run's lines begin in the log (a second run appends to it)

    def text(self) -> str:
        if not self.log.exists():
            return ""
        with open(self.log, "rb") as f:
            f.seek(self.start)
            return f.read().decode(errors="replace")

    async def wait_log(self, pred: Callable[[str], bool], timeout: float = TIMEOUT) -> str:
        """The first line of the log that ``pred`` accepts, once it is there."""
        with trio.fail_after(timeout):
            while True:
                for line in self.text().splitlines():
                    if pred(line):
                        return line
                await trio.sleep(0.1)


@asynccontextmanager
async def bot_process(argv: list[str], log: Path, cwd: Path) -> AsyncIterator[BotProcess]:
    start = log.stat().st_size if log.exists() else 0
    with open(cwd / "stdout.log", "ab") as out:
        proc = await trio.lowlevel.open_process(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                                                stderr=subprocess.STDOUT, env={**os.environ, "LANG": "C.UTF-8"})
    try:
        yield BotProcess(proc, log, start)
    finally:
        proc.terminate()
        with trio.move_on_after(10):
            await proc.wait()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def limnoria(home: Path, port: int, nick: str, account: str, password: str) -> tuple[list[str], Path]:
    """A Limnoria configuration (what ``supybot-wizard`` writes, pared down) and the command that runs it.
    Its Utilities plugin has ``echo``, Misc has ``tell``; commands start with ``!``."""
    home.mkdir(exist_ok=True)
    conf = home / "bot.conf"
    dirs = {"conf": "conf", "data": "data", "data.tmp": "data/tmp", "data.web": "data/web", "backup": "backup",
            "log": "logs"}
    lines = [
        f"supybot.nick: {nick}",
        f"supybot.ident: {account}",
        "supybot.user: Limnoria on UtuVox",
        "supybot.networks: utuvox",
        f"supybot.networks.utuvox.servers: 127.0.0.1:{port}",
        "supybot.networks.utuvox.ssl: False",
        "supybot.networks.utuvox.channels: #general",
        "supybot.networks.utuvox.sasl.mechanisms: PLAIN",
        f"supybot.networks.utuvox.sasl.username: {account}",
        f"supybot.networks.utuvox.sasl.password: {password}",
        *(f"supybot.directories.{key}: {home / value}" for key, value in dirs.items()),
        "supybot.directories.plugins: ",
        "supybot.plugins: Admin Misc Owner User Utilities",
        *(f"supybot.plugins.{name}: True" for name in ("Admin", "Misc", "Owner", "User", "Utilities")),
        "supybot.reply.whenAddressedBy.chars: !",
        "supybot.reply.withNickPrefix: False",
        "supybot.protocols.irc.throttleTime: 0.1",
        "supybot.log.stdout: False",
        "supybot.log.level: DEBUG",  # every line in and out goes to logs/messages.log
    ]
    conf.write_text("\n".join(lines) + "\n")
    # --allow-root: CI containers run as root, which Limnoria refuses unless told.
    argv = [str(Path(sys.executable).with_name("supybot")), "--allow-root", str(conf)]
    return argv, home / "logs" / "messages.log"


SOPEL_PLUGIN = '''\
"""A Sopel plugin for the test: .echo repeats what follows it where it was said."""
from sopel import plugin


@plugin.command("echo")
def echo(bot, trigger):
    bot.say(trigger.group(2) or "")
'''


def sopel(home: Path, port: int, nick: str, account: str, password: str) -> tuple[list[str], Path]:
    """A Sopel configuration (what ``sopel configure`` writes) with one plugin of the test's own (``.echo``).
    Sopel refuses to start as root from its command line, so the test starts its run loop itself."""
    home.mkdir(exist_ok=True)
    (home / "plugins").mkdir(exist_ok=True)
    (home / "plugins" / "echoer.py").write_text(SOPEL_PLUGIN)
    conf = home / "bot.cfg"
    conf.write_text("\n".join([
        "[core]",
        f"nick = {nick}",
        f"user = {account}",
        "name = Sopel on UtuVox",
        "host = 127.0.0.1",
        f"port = {port}",
        "use_ssl = false",
        "owner = root",
        "channels = \"#general\"",
        "auth_method = sasl",
        f"auth_username = {account}",
        f"auth_password = {password}",
        f"homedir = {home}",
        f"logdir = {home / 'logs'}",
        f"pid_dir = {home}",
        f"extra = {home / 'plugins'}",
        "enable = echoer",
        "log_raw = true",  # every line in and out goes to logs/bot.raw.log
        "logging_level = DEBUG",
    ]) + "\n")
    launcher = ("import sys; from sopel import config; from sopel.cli import run; "
                "sys.exit(run.run(config.Config(sys.argv[1]), sys.argv[2]))")
    return [sys.executable, "-c", launcher, str(conf), str(home / "sopel.pid")], home / "logs" / "bot.raw.log"


async def _event(client: Any, pred: Callable[[Any], bool], timeout: float = TIMEOUT) -> Any:
    with trio.fail_after(timeout):
        while True:
            event = await client.next_event()
            if pred(event):
                return event


async def _history_batch(raw: RawIrc, command: str) -> list[str]:
    """The texts of the lines of one chathistory batch."""
    await raw.send(command)
    start = await raw.expect("BATCH +")
    assert "chathistory" in start
    texts = []
    while " BATCH -" not in (line := await raw.line()):
        texts.append(parse(line).params[-1])
    return texts


async def converse(tmp_path: Path, framework: Callable[..., tuple[list[str], Path]], prefix: str) -> None:
    """The whole conversation with one framework's bot (nick ``botnick``, account ``botacct``)."""
    nick, account, password = "botnick", "botacct", "pw-botacct"
    async with running_server(tmp_path / "data") as server:
        irc_port, tcp = server.irc_port, server.tcp_port
        admin = await register_accounts(tcp, server.admin_key.load_or_create(), {account: password, "tina": "pw-tina"})

        async with connect(f"tcp://127.0.0.1:{tcp}") as jason:
            await jason.register("jason", "pw-jason")
            await jason.create("general")
            tina = await TextLines.connect(tcp)
            await tina.send("/login tina pw-tina")
            await tina.expect("Login successful")
            await tina.send("/join general")
            await tina.expect("You joined room 'general'")

            argv, log = framework(tmp_path / "bot", irc_port, nick, account, password)
            async with bot_process(argv, log, tmp_path / "bot") as bot:
                # SASL made the nick the face of the account: the other transports name the account
                joined = await _event(jason, lambda e: isinstance(e, p.JoinEvent) and e.user == account)
                assert joined.nick == nick and not joined.guest
                await bot.wait_log(lambda t: " 366 " in t and "#general" in t)

                # the bot answers the JSON user in the room, and everyone sees it
                await jason.message(f"{prefix}echo hello from json", room="general")
                answer = await _event(jason, lambda e: isinstance(e, p.MessageEvent) and e.user == account)
                assert (answer.text, answer.nick) == ("hello from json", nick)
                await tina.expect("hello from json")
                # and the text-mode user
                await tina.send(f"{prefix}echo hello from text mode")
                answer = await _event(jason, lambda e: isinstance(e, p.MessageEvent) and e.user == account)
                assert answer.text == "hello from text mode"
                await tina.expect("hello from text mode")

                # private messages both ways: the JSON user's reaches the bot, the bot's answer reaches him
                await jason.msg(account, f"{prefix}echo just between us")
                whisper = await _event(jason, lambda e: isinstance(e, p.PrivateMessage) and e.user == account)
                assert whisper.text == "just between us"
                await bot.wait_log(lambda t: "PRIVMSG" in t and "just between us" in t and "jason" in t)

            # The bot's account reconnects and reads the room and the private conversation back.
            raw = cast(RawIrc, await RawIrc.connect(irc_port))
            await raw.send("CAP LS 302", "CAP REQ :batch server-time message-tags draft/chathistory", "CAP END",
                           f"PASS {account}:{password}")
            assert " 001 " in await raw.register("reader")
            await raw.send("JOIN #general")
            await raw.expect(" 366 ")
            room = await _history_batch(raw, "CHATHISTORY LATEST #general * 20")
            assert room[-4:] == [f"{prefix}echo hello from json", "hello from json",
                                 f"{prefix}echo hello from text mode", "hello from text mode"], room
            private = await _history_batch(raw, "CHATHISTORY LATEST jason * 20")
            assert private == [f"{prefix}echo just between us", "just between us"], private
            await raw.send("QUIT")
            await raw.expect("ERROR")

            # A ban from an admin's JSON session ends the bot's IRC session.
            async with bot_process(argv, log, tmp_path / "bot") as bot:
                await _event(jason, lambda e: isinstance(e, p.JoinEvent) and e.nick == nick)
                assert (await admin.request("ban_user", username=account, reason="spam"))["type"] == "ok"
                gone = await _event(jason, lambda e: isinstance(e, p.LeaveEvent) and e.user == account)
                assert gone.quit
                assert "banned" in await bot.wait_log(lambda t: "ERROR" in t and "Closing link" in t)
            again = cast(RawIrc, await RawIrc.connect(irc_port))
            await again.send(f"PASS {account}:{password}")
            assert " 465 " in await again.register("reader")


async def test_limnoria_with_json_and_text_users(tmp_path: Path) -> None:
    await converse(tmp_path, limnoria, "!")


async def test_sopel_with_json_and_text_users(tmp_path: Path) -> None:
    await converse(tmp_path, sopel, ".")
