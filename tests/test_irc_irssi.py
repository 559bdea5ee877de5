"""irssi as a real peer: run in a tmux session with a home of its own, logged in with SASL PLAIN to a UtuVox
account under another nick, typed into with ``tmux send-keys``, read through its autolog files, in one room
with a JSON SDK user and a text-mode user."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import cast

import pytest
import trio

from utuvox.client import connect
from utuvox.protocol import core as p

from .clients import TextLines, register_accounts
from .conftest import running_server
from .test_irc import RawIrc
from .test_irc_bots import _event, _history_batch

TIMEOUT = 20

pytestmark = pytest.mark.skipif(shutil.which("irssi") is None or shutil.which("tmux") is None,
                                reason="irssi or tmux is not installed (.ci/run installs them)")


class Irssi:
    """One irssi in a tmux server of its own (its socket in the test's directory)."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.socket = str(home / "tmux.sock")

    def type(self, text: str) -> None:
        subprocess.run(["tmux", "-S", self.socket, "send-keys", "-t", "irssi", "-l", text], check=True)
        subprocess.run(["tmux", "-S", self.socket, "send-keys", "-t", "irssi", "Enter"], check=True)

    def log(self, name: str) -> str:
        path = self.home / "logs" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    async def wait_log(self, name: str, fragment: str, timeout: float = TIMEOUT) -> None:
        with trio.fail_after(timeout):
            while fragment not in self.log(name):
                await trio.sleep(0.1)

    def raw(self) -> str:
        path = self.home / "raw.log"
        return path.read_text(errors="replace") if path.exists() else ""

    async def open_rawlog(self) -> None:
        """Have irssi write every line in and out to raw.log, starting with those it keeps in memory."""
        (self.home / "raw.log").unlink(missing_ok=True)
        self.type("/rawlog open " + str(self.home / "raw.log"))
        with trio.fail_after(TIMEOUT):
            while " 366 " not in self.raw():
                await trio.sleep(0.1)


@asynccontextmanager
async def running_irssi(home: Path, port: int, nick: str, account: str, password: str) -> AsyncIterator[Irssi]:
    home.mkdir(exist_ok=True)
    # What `/network add -sasl_*`, `/server add` and `/channel add -auto` write, and the settings for logs.
    (home / "config").write_text(f"""
chatnets = {{ utuvox = {{ type = "IRC"; sasl_mechanism = "PLAIN"; sasl_username = "{account}";
  sasl_password = "{password}"; }}; }};
servers = ( {{ address = "127.0.0.1"; chatnet = "utuvox"; port = "{port}"; use_tls = "no"; autoconnect = "yes"; }} );
channels = ( {{ name = "#general"; chatnet = "utuvox"; autojoin = "yes"; }} );
settings = {{
  core = {{ real_name = "irssi on UtuVox"; user_name = "{account}"; nick = "{nick}"; }};
  "fe-common/core" = {{ autolog = "yes"; autolog_path = "{home}/logs/$0.log"; autolog_level = "ALL"; }};
}};
""")
    irssi = Irssi(home)
    subprocess.run(["tmux", "-S", irssi.socket, "new-session", "-d", "-s", "irssi", "-x", "200", "-y", "50",
                    f"irssi --home={home}"], check=True)
    try:
        yield irssi
    finally:
        subprocess.run(["tmux", "-S", irssi.socket, "kill-server"], check=False)


async def test_irssi_with_json_and_text_users(tmp_path: Path) -> None:
    nick, account, password = "ivynick", "ivy", "pw-ivy"
    async with running_server(tmp_path / "data") as server:
        irc_port, tcp = server.irc_port, server.tcp_port
        admin = await register_accounts(tcp, server.admin_key.load_or_create(), {account: password, "tina": "pw-tina"})

        async with connect(f"tcp://127.0.0.1:{tcp}") as jason:
            await jason.register("jason", "pw-jason")
            await jason.create("general")
            await jason.request(p.Topic(room="general", text="irssi welcome"))
            tina = await TextLines.connect(tcp)
            await tina.send("/login tina pw-tina")
            await tina.expect("Login successful")
            await tina.send("/join general")
            await tina.expect("You joined room 'general'")

            async with running_irssi(tmp_path / "irssi", irc_port, nick, account, password) as irssi:
                joined = await _event(jason, lambda e: isinstance(e, p.JoinEvent) and e.user == account)
                assert joined.nick == nick and not joined.guest  # SASL: the account, under its own nick
                await irssi.wait_log("#general", "irssi welcome")  # the topic, on join
                await irssi.open_rawlog()
                # talk both ways
                await jason.message("hello from json", room="general")
                await irssi.wait_log("#general", "<@jason> hello from json")
                await tina.send("hello from text mode")
                await irssi.wait_log("#general", "tina> hello from text mode")
                irssi.type("/msg #general hello from irssi")
                said = await _event(jason, lambda e: isinstance(e, p.MessageEvent) and e.user == account)
                assert (said.text, said.nick) == ("hello from irssi", nick)
                await tina.expect("hello from irssi")
                # private messages both ways
                irssi.type("/msg jason psst, json")
                whisper = await _event(jason, lambda e: isinstance(e, p.PrivateMessage) and e.user == account)
                assert whisper.text == "psst, json"
                await jason.msg(account, "psst back")
                await irssi.wait_log("jason", "psst back")
                irssi.type("/quit see you")
                gone = await _event(jason, lambda e: isinstance(e, p.LeaveEvent) and e.user == account)
                assert gone.quit and "see you" in (gone.reason or "")

            # irssi has no CHATHISTORY: its account reads the room back over raw IRC after reconnecting
            raw = cast(RawIrc, await RawIrc.connect(irc_port))
            await raw.send("CAP LS 302", "CAP REQ :batch server-time message-tags draft/chathistory", "CAP END",
                           f"PASS {account}:{password}")
            assert " 001 " in await raw.register("reader")
            await raw.send("JOIN #general")
            await raw.expect(" 366 ")
            room = await _history_batch(raw, "CHATHISTORY LATEST #general * 20")
            assert room[-3:] == ["hello from json", "hello from text mode", "hello from irssi"], room
            private = await _history_batch(raw, "CHATHISTORY LATEST jason * 20")
            assert private == ["psst, json", "psst back"], private
            await raw.send("QUIT")
            await raw.expect("ERROR")

            # a ban from an admin's JSON session ends irssi's IRC session
            async with running_irssi(tmp_path / "irssi", irc_port, nick, account, password) as irssi:
                await _event(jason, lambda e: isinstance(e, p.JoinEvent) and e.nick == nick)
                await irssi.open_rawlog()
                assert (await admin.request("ban_user", username=account, reason="spam"))["type"] == "ok"
                gone = await _event(jason, lambda e: isinstance(e, p.LeaveEvent) and e.user == account)
                assert gone.quit
                with trio.fail_after(TIMEOUT):
                    while "banned" not in irssi.raw():
                        await trio.sleep(0.1)
                assert "ERROR :Closing link" in irssi.raw()
