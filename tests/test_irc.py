"""IRC with real peers: WeeChat (headless, driven through its FIFO, read through its logs) and a bot
built on the ``irc`` library, in one room with a JSON SDK user and a text-mode user.

Plus the IRC codec's own checks: bad input, line limits, guests turned off, the JSON side of topics
and private history.
"""

from __future__ import annotations

import base64
import queue
import shutil
import subprocess
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import irc.bot
import irc.client
import pytest
import trio
import trio_websocket

from utuvox.client import connect
from utuvox.protocol import core as p
from utuvox.protocol.irc.lines import format_line, parse

from .clients import JsonLines, TextLines
from .conftest import running_server

TIMEOUT = 10


class RawIrc(TextLines):
    """A bare IRC connection (as ``nc`` would be), for what the frameworks hide: the text client's line
    reading, with CRLF."""

    async def send(self, *lines: str) -> None:  # type: ignore[override]
        await self.stream.send_all("".join(line + "\r\n" for line in lines).encode())

    async def line(self, timeout: float = TIMEOUT) -> str:
        return (await self.recv_line(timeout)).rstrip("\r")

    async def expect(self, pred: Callable[[str], bool] | str, timeout: float = TIMEOUT) -> str:
        check = (lambda text: pred in text) if isinstance(pred, str) else pred
        with trio.fail_after(timeout):
            while True:
                text = await self.line()
                if check(text):
                    return text

    async def register(self, nick: str, *pre: str) -> str:
        """Register; the line that ended it (001, an ERROR, a 433 or 465)."""
        await self.send(*pre, f"NICK {nick}", f"USER {nick} 0 * :{nick} here")
        return await self.expect(lambda t: any(f" {n} " in t for n in ("001", "433", "465")) or t.startswith("ERROR"))


class Bot(irc.bot.SingleServerIRCBot):  # type: ignore[misc]
    """A bot on the ``irc`` framework: answers ``!ping`` in the room and ``hello`` in private."""

    def __init__(self, port: int, account: str, password: str) -> None:
        super().__init__([irc.bot.ServerSpec("127.0.0.1", port, f"{account}:{password}")], account, "a bot",
                         recon=irc.bot.ExponentialBackoff(min_interval=600, max_interval=600))
        self.raw: queue.Queue[str] = queue.Queue()

    def on_welcome(self, conn: Any, event: Any) -> None:
        conn.join("#general")

    def on_pubmsg(self, conn: Any, event: Any) -> None:
        if event.arguments[0] == "!ping":
            conn.privmsg(event.target, f"pong, {event.source.nick}")

    def on_privmsg(self, conn: Any, event: Any) -> None:
        conn.privmsg(event.source.nick, f"hello {event.source.nick}, you said: {event.arguments[0]}")

    def on_all_raw_messages(self, conn: Any, event: Any) -> None:
        self.raw.put(event.arguments[0])

    def on_disconnect(self, conn: Any, event: Any) -> None:
        self.raw.put("*disconnected*")


async def wait_raw(bot: Bot, pred: Callable[[str], bool], timeout: float = TIMEOUT) -> str:
    with trio.fail_after(timeout):
        while True:
            try:
                line = bot.raw.get_nowait()
            except queue.Empty:
                await trio.sleep(0.02)
                continue
            if pred(line):
                return line


@asynccontextmanager
async def running_bot(port: int, account: str, password: str) -> AsyncIterator[Bot]:
    bot = Bot(port, account, password)
    bot._connect()
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            bot.reactor.process_once(0.05)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield bot
    finally:
        stop.set()
        thread.join(2)
        bot.connection.disconnect()


class WeeChat:
    """weechat-headless with a FIFO for commands and logger files for what it saw."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.fifo = home / "fifo"
        self.logs = home / "logs"

    def command(self, buffer: str, text: str) -> None:
        with open(self.fifo, "w") as fifo:
            fifo.write(f"{buffer} *{text}\n")

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.weechatlog"
        return path.read_text(errors="replace") if path.exists() else ""

    async def wait_log(self, name: str, fragment: str, timeout: float = 15) -> None:
        with trio.fail_after(timeout):
            while fragment not in self.log(name):
                await trio.sleep(0.1)


@asynccontextmanager
async def running_weechat(home: Path, port: int, account: str, password: str) -> AsyncIterator[WeeChat]:
    home.mkdir()
    commands = ";".join([
        f"/set fifo.file.path {home}/fifo",
        "/set fifo.file.enabled on",
        f"/set logger.file.path {home}/logs",
        "/set logger.file.flush_delay 0",
        "/set logger.file.mask $plugin.$name.weechatlog",
        f"/server add utuvox 127.0.0.1/{port}",
        "/set irc.server.utuvox.tls off",
        "/set irc.server.utuvox.sasl_mechanism plain",
        f"/set irc.server.utuvox.sasl_username {account}",
        f"/set irc.server.utuvox.sasl_password {password}",
        f"/set irc.server.utuvox.nicks {account}",
        "/set irc.server.utuvox.autojoin #general",
        "/connect utuvox",
    ])
    proc = await trio.lowlevel.open_process(
        ["weechat-headless", "--dir", str(home), "--run-command", commands],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        weechat = WeeChat(home)
        with trio.fail_after(15):
            while not weechat.fifo.exists():
                await trio.sleep(0.05)
        yield weechat
    finally:
        proc.terminate()
        with trio.move_on_after(5):
            await proc.wait()
        if proc.returncode is None:
            proc.kill()


@pytest.mark.skipif(shutil.which("weechat-headless") is None,
                    reason="weechat-headless is not installed (.ci/run installs it)")
async def test_weechat_a_bot_json_and_text_users_share_a_room(tmp_path: Path) -> None:
    async with running_server(tmp_path / "data") as server:
        irc_port, tcp = server.irc_port, server.tcp_port
        admin = await JsonLines.connect(tcp)
        assert (await admin.request("register", username="root", password="pw",
                                    admin_key=server.admin_key.load_or_create()))["type"] == "logged_in"
        for name in ("wendy", "ircbot", "tina"):
            account = await JsonLines.connect(tcp)
            assert (await account.request("register", username=name, password="pw-" + name))["type"] == "logged_in"
            await account.aclose()

        async with connect(f"tcp://127.0.0.1:{tcp}") as jason:
            await jason.register("jason", "pw-jason")
            await jason.create("general")
            await jason.request(p.Topic(room="general", text="all protocols welcome"))
            tina = await TextLines.connect(tcp)
            await tina.send("/login tina pw-tina")
            await tina.expect("Login successful")
            await tina.send("/join general")
            await tina.expect("You joined room 'general'")

            async with running_weechat(tmp_path / "weechat", irc_port, "wendy", "pw-wendy") as wee, \
                    running_bot(irc_port, "ircbot", "pw-ircbot") as bot:
                await wee.wait_log("irc.utuvox.#general", "all protocols welcome")  # 332 on join
                await wait_raw(bot, lambda t: " 366 " in t)
                # talk both ways: SDK -> IRC, IRC -> SDK and text mode
                await jason.message("hello from json", room="general")
                await wee.wait_log("irc.utuvox.#general", "hello from json")
                await wait_raw(bot, lambda t: "PRIVMSG #general :hello from json" in t)
                wee.command("irc.utuvox.#general", "hello from weechat")
                await tina.expect("wendy: hello from weechat")
                await _event(jason, lambda e: getattr(e, "text", None) == "hello from weechat")
                await tina.send("!ping")
                await tina.expect("ircbot: pong, tina")
                await wee.wait_log("irc.utuvox.#general", "pong, tina")
                # private messages both ways: SDK <-> bot, WeeChat <-> SDK
                await jason.msg("ircbot", "are you there?")
                reply = await _event(jason, lambda e: getattr(e, "type", "") == "msg")
                assert reply.user == "ircbot" and "you said: are you there?" in reply.text
                wee.command("irc.server.utuvox", "/msg jason psst, json")
                whisper = await _event(jason, lambda e: getattr(e, "type", "") == "msg")
                assert (whisper.user, whisper.text) == ("wendy", "psst, json")
                await jason.msg("wendy", "psst back")
                await wee.wait_log("irc.utuvox.jason", "psst back")
                # stored for both people: the JSON private history holds the conversation
                page = await (await _json_login(tcp, "wendy")).request("private_history", user="jason")
                assert [m["text"] for m in page["messages"]] == ["psst, json", "psst back"]

            # CHATHISTORY after a reconnect, in a batch a bot can skip
            raw = await RawIrc.connect(irc_port)
            await raw.send("CAP LS 302", "CAP REQ :batch server-time message-tags draft/chathistory", "CAP END",
                           "PASS wendy:pw-wendy")
            await raw.register("wendy")
            await raw.send("JOIN #general", "CHATHISTORY LATEST #general * 10")
            start = await raw.expect("BATCH +")
            assert start.endswith("chathistory #general")
            lines = []
            while not (line := await raw.line()).startswith(":") or " BATCH -" not in line:
                lines.append(line)
            texts = [parse(x).params[-1] for x in lines]
            assert texts[:3] == ["hello from json", "hello from weechat", "!ping"], texts
            assert all("msgid=general:" in x and "time=" in x for x in lines)

            # a ban ends the IRC session
            async with running_bot(irc_port, "ircbot", "pw-ircbot") as bot:
                await wait_raw(bot, lambda t: " 366 " in t)
                assert (await admin.request("ban_user", username="ircbot", reason="spam"))["type"] == "ok"
                assert "banned" in await wait_raw(bot, lambda t: t.startswith("ERROR"))
                await wait_raw(bot, lambda t: t == "*disconnected*")
            again = await RawIrc.connect(irc_port)
            await again.send("PASS ircbot:pw-ircbot")
            assert " 465 " in await again.register("ircbot")


async def _json_login(port: int, name: str) -> JsonLines:
    client = await JsonLines.connect(port)
    assert (await client.request("login", username=name, password="pw-" + name))["type"] == "logged_in"
    return client


async def _event(client: Any, pred: Callable[[Any], bool]) -> Any:
    with trio.fail_after(TIMEOUT):
        while True:
            event = await client.next_event()
            if pred(event):
                return event


async def test_guests_nicks_accounts_and_bad_input(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server:
        port = server.irc_port
        json = await JsonLines.connect(server.tcp_port)
        await json.request("register", username="val", password="pw")
        guest = await RawIrc.connect(port)
        await guest.register("visitor")
        # an account's name is its own: a guest cannot take it
        await guest.send("NICK val")
        await guest.expect(" 433 visitor val ")
        # a logged-in account may keep another nick; 330 names the account
        owner = await RawIrc.connect(port)
        await owner.send("CAP LS 302", "CAP REQ :sasl", "AUTHENTICATE PLAIN")
        await owner.expect("AUTHENTICATE +")
        await owner.send("AUTHENTICATE " + base64.b64encode(b"val\0val\0pw").decode())
        await owner.expect(" 903 ")
        await owner.send("CAP END")
        await owner.register("nick2")
        await guest.send("WHOIS nick2")
        assert (await guest.expect(" 330 ")).split()[3:5] == ["nick2", "val"]
        # the account's own name as its nick (irssi's PASS account:password), while it is signed in over JSON
        # and as nick2 too; still no one else's
        again = await RawIrc.connect(port)
        assert " 001 " in await again.register("val", "PASS val:pw")
        await guest.send("NICK val")
        await guest.expect(" 433 visitor val ")
        # rooms: created on JOIN; the JSON side sees the guest marked, the nick beside the account
        await json.request("create", room="lobby")
        await owner.send("JOIN #lobby", "PRIVMSG #lobby :from nick2")
        event = await json.recv_until(lambda f: f.get("type") == "message")
        assert (event["user"], event["nick"]) == ("val", "nick2")
        await guest.send("JOIN #lobby", "PRIVMSG #lobby :from a guest")
        event = await json.recv_until(lambda f: f.get("type") == "message")
        assert (event["user"], event.get("guest")) == ("visitor", True)
        # a long message from another transport reaches IRC in several lines of at most 512 bytes
        long_text = "é" * 700 + "!"
        assert (await json.request("message", room="lobby", text=long_text))["type"] == "ok"
        parts = []
        while "".join(parts) != long_text:
            line = await owner.expect(lambda t: t.startswith(":val!") and " PRIVMSG #lobby " in t)
            assert len(line.encode()) + 2 <= 512
            parts.append(parse(line).params[1])
        assert len(parts) > 2
        await guest.send("JOIN #bad!name", "FROBNICATE", "PRIVMSG #lobby :" + "x" * 600)
        await guest.expect(" 479 ")
        await guest.expect(" 421 visitor FROBNICATE ")
        await guest.expect(" 417 ")
        # invalid UTF-8 is refused, CRLF and bare LF both end a line, and the connection goes on
        await guest.stream.send_all(b"PRIVMSG #lobby :\xff\xfe\r\nPING :lf-only\n")
        await guest.expect("INVALID_UTF8")
        await guest.expect("PONG")
        await guest.send("QUIT :bye")
        assert (await guest.expect("ERROR")).startswith("ERROR")
        await owner.expect(lambda t: " QUIT " in t and t.startswith(":visitor!"))


async def test_guests_refused_when_turned_off(tmp_path: Path) -> None:
    async with running_server(tmp_path, irc_guests=False) as server:
        raw = await RawIrc.connect(server.irc_port)
        assert "requires an account" in await raw.register("visitor")


async def test_topics_and_private_history_over_json_and_text(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server:
        alice = await JsonLines.connect(server.tcp_port)
        await alice.request("register", username="alice", password="pw")
        await alice.request("create", room="den")
        bob = await JsonLines.connect(server.tcp_port)
        await bob.request("register", username="bob", password="pw")
        await bob.request("join", room="den")
        refused = await bob.request("topic", room="den", text="mine now")
        assert refused["code"] == "forbidden"
        assert (await alice.request("topic", room="den", text="cozy"))["type"] == "ok"
        event = await bob.recv_until(lambda f: f.get("type") == "topic")
        assert (event["topic"], event["user"]) == ("cozy", "alice")
        assert (await bob.request("join", room="den"))["topic"] == "cozy"
        for text in ("one", "two", "three"):
            await alice.request("msg", to="bob", text=text)
        page = await bob.request("private_history", user="alice", limit=2)
        assert [m["text"] for m in page["messages"]] == ["two", "three"] and page["more"]
        older = await bob.request("private_history", user="alice", before=page["messages"][0]["seq"])
        assert [m["text"] for m in older["messages"]] == ["one"]
        text = await TextLines.connect(server.tcp_port)
        await text.send("/login bob pw")
        await text.expect("Login successful")
        await text.send("/history @alice")
        await text.expect("Private messages with alice")
        await text.expect("alice: one")
        # history by time
        first = (await alice.request("history", room="den"))["events"][0]
        later = await alice.request("history", room="den", after_ts=first["ts"])
        assert all(e["seq"] > first["seq"] for e in later["events"]) and later["events"]


def test_line_format_round_trip() -> None:
    line = format_line("PRIVMSG", "#a", "hi there; \\ ok", source="n!u@h", tags={"+x": "a b;c\\"})
    parsed = parse(line.rstrip("\r\n"))
    assert (parsed.command, parsed.params, parsed.tags, parsed.source) == (
        "PRIVMSG", ["#a", "hi there; \\ ok"], {"+x": "a b;c\\"}, "n!u@h")


async def test_irc_over_websocket(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server:
        url = f"ws://127.0.0.1:{server.ws_port}"
        async with trio_websocket.open_websocket_url(url, subprotocols=["text.ircv3.net"]) as ws:
            assert ws.subprotocol == "text.ircv3.net"
            for line in ("NICK webby", "USER webby 0 * :Web", "JOIN #web", "PING :done"):
                await ws.send_message(line)
            seen = []
            with trio.fail_after(TIMEOUT):
                while not seen or "PONG" not in seen[-1]:
                    seen.append(await ws.get_message())
            assert any(" 001 webby " in m for m in seen) and any(m.startswith(":webby!") and " JOIN #web" in m
                                                                 for m in seen)
            assert not any("\r" in m or "\n" in m for m in seen)  # a message per line, no CR LF
        async with trio_websocket.open_websocket_url(url) as ws:  # no subprotocol: JSON as before
            await ws.send_message('{"type": "ping", "id": 1}')
            assert '"pong"' in await ws.get_message()


async def test_floods_are_limited_and_silent_connections_closed(tmp_path: Path) -> None:
    async with running_server(tmp_path, session_requests_per_second=5, session_requests_burst=5,
                              login_timeout=0.5) as server:
        flooder = await RawIrc.connect(server.irc_port)
        await flooder.register("flooder")
        await flooder.send(*[f"PING :n{i}" for i in range(30)])
        assert "RATE_LIMITED" in await flooder.expect("FAIL")
        mute = await RawIrc.connect(server.irc_port)
        await mute.send("NICK mute")  # and never USER: registration never ends
        assert "Not logged in" in await mute.expect("ERROR")


async def test_whox_names_accounts_of_every_transport(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server:
        json = await JsonLines.connect(server.tcp_port)
        await json.request("register", username="val", password="pw")
        await json.request("create", room="lobby")
        guest = await RawIrc.connect(server.irc_port)
        await guest.register("visitor")
        await guest.send("JOIN #lobby", "WHO #lobby %afnt,42", "WHO val %rn")
        replies = []
        while " 315 " not in (line := await guest.expect(lambda t: " 354 " in t or " 315 " in t)):
            replies.append(parse(line).params[1:])
        # fields in the specification's order (t n f a), whatever order they were asked in
        assert sorted(replies) == [["42", "val", "H@", "val"], ["42", "visitor", "H", "0"]]
        assert parse(await guest.expect(" 354 ")).params[1:] == ["val", "val"]
        await guest.expect(" 315 visitor val ")


async def test_a_pong_follows_the_messages_before_its_ping_and_precedes_those_after(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server:
        json = await JsonLines.connect(server.tcp_port)
        await json.request("register", username="val", password="pw")
        await json.request("create", room="lobby")
        bot = await RawIrc.connect(server.irc_port)
        await bot.send("CAP REQ :echo-message")
        assert " 001 " in await bot.register("pipebot", "CAP END")
        await bot.send("JOIN #lobby")
        await bot.expect(" 366 ")
        # A pipelining bot: messages, a PING, more messages, another PING, all in one write.
        before = [f"PRIVMSG #lobby :before {i}" for i in range(50)]
        after = [f"PRIVMSG #lobby :after {i}" for i in range(50)]
        # A line refused at once (no such channel) is answered in its place too, not ahead of the others,
        # and so are the lines the reading itself refuses: one too long (417), one not UTF-8 (FAIL).
        crlf = "\r\n"
        await bot.stream.send_all((crlf.join([*before, "PING :middle", "PRIVMSG #nowhere :lost",
                                              "PRIVMSG #lobby :" + "x" + "y" * 600, *after]) + crlf).encode()
                                  + b"PRIVMSG #lobby :caf\xe9\r\n" + b"PING :end\r\n")
        seen: list[str] = []
        while not seen or "end" not in seen[-1]:
            text = await bot.line()
            if " PRIVMSG #lobby :" in text:
                seen.append(text.rsplit(":", 1)[1])
            elif " PONG " in text:
                seen.append("PONG " + text.rsplit(" ", 1)[1].lstrip(":"))
            elif " 403 " in text or " 417 " in text:
                seen.append(text.split(" ")[1])
            elif "INVALID_UTF8" in text:
                seen.append("INVALID_UTF8")
        expected = [f"before {i}" for i in range(50)] + ["PONG middle"] + [f"after {i}" for i in range(50)]
        assert seen == [*expected[:51], "403", "417", *expected[51:], "INVALID_UTF8", "PONG end"]
        # Everything the PONGs vouched for is stored, in that order.
        page = await json.request("history", room="lobby", limit=200)
        texts = [e["text"] for e in page["events"] if e["type"] == "message"]
        assert texts == [t for t in expected if not t.startswith("PONG")]


async def test_an_action_is_a_ctcp_action_on_irc_and_an_action_everywhere_else(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server:
        json = await JsonLines.connect(server.tcp_port)
        await json.request("register", username="val", password="pw")
        await json.request("create", room="lobby")
        text = await TextLines.connect(server.tcp_port)
        await text.send("/register tex pw-tex")
        await text.send("/join lobby")
        await text.expect("You joined room 'lobby'")
        ircer = await RawIrc.connect(server.irc_port)
        await ircer.send("CAP REQ :echo-message")
        assert " 001 " in await ircer.register("carol", "CAP END")
        await ircer.send("JOIN #lobby")
        await ircer.expect(" 366 ")
        # /me from IRC: an action for JSON and text mode, the same CTCP ACTION back to its sender
        await ircer.send("PRIVMSG #lobby :\x01ACTION waves at everyone\x01")
        event = await json.recv_until(lambda f: f.get("type") == "message")
        assert (event["user"], event["text"], event.get("action")) == ("carol", "waves at everyone", True)
        await text.expect("* carol waves at everyone")
        echo = await ircer.expect(lambda t: " PRIVMSG #lobby " in t)
        assert parse(echo).params[1] == "\x01ACTION waves at everyone\x01"
        # /me from JSON reaches IRC as a CTCP ACTION; an ordinary message does not
        await json.request("message", room="lobby", text="nods", action=True)
        await json.request("message", room="lobby", text="just text")
        assert parse(await ircer.expect(":val!")).params[1] == "\x01ACTION nods\x01"
        assert parse(await ircer.expect(":val!")).params[1] == "just text"
        # a NOTICE is never an action, whatever it holds
        await ircer.send("NOTICE #lobby :\x01ACTION is not an action\x01")
        event = await json.recv_until(lambda f: f.get("type") == "message" and f.get("user") == "carol")
        assert (event["text"], event.get("action"), event.get("notice")) == (
            "\x01ACTION is not an action\x01", None, True)
