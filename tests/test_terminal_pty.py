"""``utuvox client`` as a person uses it: in a pseudo-terminal (pexpect, the screen rendered by pyte),
against a real server, with another user on the SDK to see what arrives. And as a script uses it: exit
statuses and the one line on stderr."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import timedelta, timezone
from pathlib import Path
from typing import Any

import trio

from utuvox.client import Client, connect
from utuvox.protocol import core as p
from utuvox.protocol.admin import Kick
from utuvox.server.app import Server

from .conftest import running_server
from .pty import Pty

TIMEOUT = 15
IST = timezone(timedelta(hours=5, minutes=30))  # TZ=IST-5:30: local time that is not UTC, with no tz database


def url(server: Server) -> str:
    return f"tcp://127.0.0.1:{server.tcp_port}"


async def next_message(client: Client, kind: type = p.MessageEvent) -> Any:
    with trio.fail_after(TIMEOUT):
        while True:
            event = await client.next_event()
            if isinstance(event, kind) and getattr(event, "user", None) != client.user:
                return event


async def start(server: Server, tmp_path: Path, *args: str, columns: int = 100) -> Pty:
    term = Pty.utuvox("client", "--url", url(server), *args, cwd=tmp_path, env={"TZ": "IST-5:30"},
                      columns=columns, rows=40)
    await term.expect("(unknown@outside)>")
    await term.line("/register ann pw")
    await term.expect("(ann@outside)>")
    await term.line("/create hall")
    await term.expect("(ann@hall)>")
    return term


async def test_a_session_at_the_terminal(server: Server, tmp_path: Path) -> None:
    term = await start(server, tmp_path, "--paste-lines", "3")
    try:
        async with connect(url(server)) as bob:
            await bob.register("bob", "pw")
            await bob.join("hall")
            await term.expect("User bob joined room 'hall'")

            # Times are local and short; JSON keeps UTC.
            await bob.message("hi ann")
            [said] = [e for e in bob.drain_events() if isinstance(e, p.MessageEvent)] or [await next_message(bob)]
            await term.expect(f"[{said.ts.astimezone(IST):%H:%M}] bob: hi ann")
            assert said.ts.utcoffset() == timedelta(0)

            # My own message shows once: the line typed is replaced by what the server says.
            await term.line("hello everyone")
            await term.expect("ann: hello everyone")
            assert (await next_message(bob)).text == "hello everyone"
            await term.settle()
            assert sum(row.count("hello everyone") for row in term.screen()) == 1, term.screen()

            # A paste of several lines is several messages, not one line with the newlines garbled.
            await term.send("\x1b[200~one\ntwo\nthree\x1b[201~\r")
            assert [(await next_message(bob)).text for _ in range(3)] == ["one", "two", "three"]
            # More lines than --paste-lines: asked first.
            await term.send("\x1b[200~a\nb\nc\nd\x1b[201~\r")
            await term.expect("Send 4 pasted lines as 4 messages? [y/N]")
            await term.line("n")
            await term.expect("Paste not sent.")
            await term.send("\x1b[200~a\nb\nc\nd\x1b[201~\r")
            await term.expect("Send 4 pasted lines as 4 messages? [y/N]")
            await term.line("y")
            assert [(await next_message(bob)).text for _ in range(4)] == ["a", "b", "c", "d"]

            # IRC habits: /me is an action, the sender of a private message sees it, /j to a room I am in
            # just switches to it, a typo gets a suggestion.
            await term.expect("(ann@hall)>")
            await term.line("/me waves")
            action = await next_message(bob)
            assert (action.text, action.action) == ("waves", True)
            await term.expect("* ann waves")
            await term.line("/msg bob psst")
            await term.expect("[private to bob] ann: psst")
            assert (await next_message(bob, p.PrivateMessage)).text == "psst"
            await term.line("/j hall")
            await term.expect("Now talking in room 'hall'.")
            assert "Chat history" not in await term.settle()
            await term.line("/jion hall")
            await term.expect("Error: Unknown command: /jion. Did you mean /join?")
            await term.line("/history 2")
            await term.expect("Chat history for 'hall':")

            # Tab: a command, then a nick at the start of a message, each followed by what comes next.
            await term.send("/wherea\t")
            await term.line("")
            await term.expect("You are in room 'hall'.")
            await term.send("b\t")
            await term.line("lunch?")
            assert (await next_message(bob)).text == "bob: lunch?"

            # /upload: the current room by default, a quoted path with a space, completed by Tab.
            (tmp_path / "the report.txt").write_text("numbers\n")
            await term.send(f"/upload {tmp_path}/the\t")
            await term.line("")
            await term.expect("uploaded to room 'hall'")
            shared = await next_message(bob, p.FileEvent)
            assert (shared.original, shared.size) == ("the report.txt", 8)
    finally:
        term.close()


async def test_transfers_run_in_the_background(tmp_path: Path) -> None:
    # Small frames make small chunks: the upload lasts long enough to chat during it.
    async with running_server(tmp_path / "data", max_frame_bytes=8192) as server:
        big = tmp_path / "big.bin"
        big.write_bytes(b"x" * 8_000_000)  # 7.6 MiB
        term = await start(server, tmp_path)
        try:
            async with connect(url(server)) as bob:
                await bob.register("bob", "pw")
                await bob.join("hall")
                await term.line(f"/upload {big}")
                await term.line("still chatting")  # at once: the prompt is free while the upload runs
                # The message went out while the upload was still under way: it is in the room before the file.
                first = await next_message(bob, p.MessageEvent | p.FileEvent)
                assert isinstance(first, p.MessageEvent) and first.text == "still chatting", first
                await term.expect(re.compile(r"Uploading big\.bin \[[#-]{30}\] +\d+% [\d.]+ [KM]?i?B/7\.6 MiB"),
                                  since=0)
                assert isinstance(await next_message(bob, p.FileEvent), p.FileEvent)
                await term.expect("File 'big.bin' (7.6 MiB) uploaded to room 'hall'")

                await term.line(f"/upload {big}")
                await term.expect("Uploading big.bin [")
                await term.send("\x03")  # Ctrl-C at the prompt cancels the transfer
                await term.expect("Transfer cancelled.")
                await term.settle()
                assert not any("Uploading big.bin" in row for row in term.screen()), term.screen()
        finally:
            term.close()


async def test_exit_statuses_of_a_script(server: Server, tmp_path: Path) -> None:
    async def client(script: str) -> subprocess.CompletedProcess[bytes]:
        with trio.fail_after(TIMEOUT * 2):
            return await trio.run_process([sys.executable, "-m", "utuvox", "client", "--url", url(server)],
                                          stdin=script.encode(), capture_stdout=True, capture_stderr=True,
                                          cwd=tmp_path, check=False)

    refused = await client("/login nobody wrong\n/create after\n")
    assert refused.returncode == 1
    assert "Error: Invalid username or password." in refused.stdout.decode()
    assert "after" not in refused.stdout.decode()  # the script stopped there

    async with connect(url(server)) as root:
        await root.register("root", "pw", admin_key=server.settings.admin_key_path.read_text().strip())
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "utuvox", "client", "--url", url(server)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
        assert proc.stdin is not None and proc.stdout is not None
        await proc.stdin.send_all(b"/register kim pw\n")
        out = b""
        with trio.fail_after(TIMEOUT):
            while b"Registration successful" not in out:
                out += await proc.stdout.receive_some(4096)
        await root.request(Kick(username="kim", reason="enough"))
        with trio.fail_after(TIMEOUT):
            assert await proc.wait() == 3  # ended by the server: kicked
        await proc.stdin.aclose()


async def test_url_mistakes_are_one_line_and_exit_2(tmp_path: Path) -> None:
    # A long handshake timeout: only the client's own look at the port can end these attempts early.
    async with running_server(tmp_path / "data", handshake_timeout=120) as server:
        tcp, ws = server.tcp_port, server.ws_port
        cases = {
            f"http://127.0.0.1:{tcp}": "is not an UtuVox URL: the scheme must be tcp://, tcps://, ws:// or wss://",
            "tcp://127.0.0.1:99999": "the port in 'tcp://127.0.0.1:99999' is out of range (1-65535)",
            "tcp://127.0.0.1:http": "the port in 'tcp://127.0.0.1:http' is not a number",
            # The WebSocket port answers a plain GET with the web client's page.
            f"tcp://127.0.0.1:{ws}": f"tcp://127.0.0.1:{ws} is a WebSocket (HTTP) port; it answered 'HTTP/1.1 200 OK'",
            f"ws://127.0.0.1:{tcp}": f"ws://127.0.0.1:{tcp} is UtuVox's TCP port, not its WebSocket port",
        }
        for bad, said in cases.items():
            with trio.fail_after(60):
                result = await trio.run_process([sys.executable, "-m", "utuvox", "client", "--url", bad],
                                                stdin=b"", capture_stdout=True, capture_stderr=True,
                                                cwd=tmp_path, check=False)
            err = result.stderr.decode()
            assert result.returncode == 2, (bad, err)
            assert err.startswith("utuvox: ") and said in err and err.count("\n") == 1, (bad, err)


async def test_a_paste_waits_out_the_rate_limit(tmp_path: Path) -> None:
    async with running_server(tmp_path / "data", session_messages_per_second=5, session_messages_burst=2,
                              user_messages_per_second=5, user_messages_burst=2) as server:
        term = await start(server, tmp_path, "--paste-lines", "10")
        try:
            async with connect(url(server)) as bob:
                await bob.register("bob", "pw")
                await bob.join("hall")
                await term.expect("User bob joined room 'hall'")
                lines = [f"line {n}" for n in range(1, 8)]
                await term.send("\x1b[200~" + "\n".join(lines) + "\x1b[201~\r")
                assert [(await next_message(bob)).text for _ in lines] == lines  # none lost, in order
                assert "Error" not in await term.settle()
        finally:
            term.close()
