"""The terminal client's command layer (:class:`utuvox.client.shell.Shell`) driven directly against a
real server: login, rooms, messages, the prompt following what the server confirmed, completion; and
``utuvox client`` itself with piped input."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import trio

from utuvox.client import connect
from utuvox.client.shell import Shell, is_secret
from utuvox.protocol import core as p
from utuvox.server.app import Server

from .test_client_sdk import restartable

TIMEOUT = 10


def url(server: Server) -> str:
    return f"tcp://127.0.0.1:{server.tcp_port}"


def text(lines: list[str]) -> str:
    """The lines without their timestamps."""
    return "\n".join(line.split("] ", 1)[1] for line in lines)


async def test_login_join_message_and_the_prompt(server: Server) -> None:
    async with connect(url(server)) as client:
        shell = Shell(client)
        assert shell.prompt == "(unknown@outside)> "

        assert text(await shell.handle("/register zed pw")) == "Registration successful as user."
        assert shell.prompt == "(zed@outside)> "

        lines = await shell.handle("/create lobby")
        assert "Room 'lobby' created successfully." in text(lines)
        assert text(lines).endswith("You joined room 'lobby'.")
        assert shell.prompt == "(zed@lobby)> "

        assert await shell.handle("hello, lobby") == []  # a message comes back as an event
        with trio.fail_after(TIMEOUT):
            while not isinstance(event := await client.next_event(), p.MessageEvent):
                pass
        assert text(shell.render_event(event)) == "zed: hello, lobby"

        # A refused request leaves the prompt as it was: it changes only on the server's word.
        assert text(await shell.handle("/join nowhere")) == ("Error: Room 'nowhere' does not exist. "
                                                             "Create it with /create nowhere.")
        assert shell.prompt == "(zed@lobby)> "
        assert text(await shell.handle("/bogus")).startswith("Error: Unknown command: /bogus")
        assert text(await shell.handle("/jion x")) == "Error: Unknown command: /jion. Did you mean /join?"
        assert text(await shell.handle("/msg")) == "Error: Usage: /msg <user> <text>"
        assert text(await shell.handle("/history lobby lots")) == ("Error: Limit must be a whole number. "
                                                                   "Usage: /history [room] [n]")
        assert text(await shell.handle("/create no/slash")).startswith("Error: Invalid room: names are 1 to 32")

        await shell.handle("/create patio")
        assert shell.prompt == "(zed@patio)> "
        assert text(await shell.handle("/whereami")) == "You are in room 'patio'. (also in: lobby)"
        assert text(await shell.handle("/leave")) == "You left room 'patio'."
        assert shell.prompt == "(zed@lobby)> "
        assert text(await shell.handle("/list_all_users")) == "Online users: zed"

        assert await shell.handle("   ") == []
        assert text(await shell.handle("/quit")) == "Goodbye."
        assert shell.done


async def test_private_messages_and_other_users(server: Server) -> None:
    async with connect(url(server)) as a, connect(url(server)) as b:
        alice, bob = Shell(a), Shell(b)
        await alice.handle("/register alice pw")
        await bob.handle("/register bob pw")
        # The sender sees what was sent, as the receiver does.
        assert text(await alice.handle("/msg bob see you at noon")) == "[private to bob] alice: see you at noon"
        with trio.fail_after(TIMEOUT):
            event = await b.next_event()
        assert text(bob.render_event(event)) == "[private] alice: see you at noon"
        await alice.handle("/create hall")
        await bob.handle("/join hall")
        await bob.handle("hi all")
        seen = []
        with trio.fail_after(TIMEOUT):
            while not any("bob: hi all" in line for line in seen):
                seen += alice.render_event(await a.next_event())
        assert "User bob joined room 'hall'" in text(seen)


async def test_help_lists_the_client_commands_too(server: Server) -> None:
    async with connect(url(server)) as client:
        lines = text(await Shell(client).handle("/help"))
        assert "Available commands:" in lines and "/join <room>" in lines
        assert "/upload [room] <filepath>" in lines and "/download <" in lines and "/list_files" in lines
        assert "/j = /join" in lines and "/part = /leave" in lines and "/query [user] [text]" in lines


async def test_completion_of_commands_rooms_and_users(server: Server) -> None:
    async with connect(url(server)) as a, connect(url(server)) as b:
        shell = Shell(a)
        # A completed word comes with the space that follows it.
        assert shell.complete("/list_a") == ["/list_all_rooms ", "/list_all_users "]
        assert "/upload " in shell.complete("/up") and shell.complete("/pa") == ["/part "]
        assert shell.complete("/delete_r") == []  # an admin command, and this is no admin
        await b.register("gus", "pw")
        await b.create("garden")
        await shell.handle("/register hal pw")
        await shell.handle("/list_all_rooms")
        await shell.handle("/list_all_users")
        assert shell.complete("/join ga") == ["garden "]
        assert shell.complete("/j ga") == ["garden "]
        assert shell.complete("/msg g") == ["gus "]
        assert shell.complete("/msg gus hel") == []
        assert shell.complete("plain text") == []
        # Nicks inside message text: "gus: " at the start of a line, as IRC clients do, "gus " further on.
        assert shell.complete("G") == ["gus: "]
        assert shell.complete("thanks g") == ["gus "]
        assert shell.complete("/msg gus ask g") == ["gus "]


async def test_upload_and_download_round_trip(server: Server, tmp_path: Path) -> None:
    original = tmp_path / "notes from the meeting.txt"
    original.write_bytes(b"minutes\n" * 20_000)  # several chunks
    bars: dict[str, list[tuple[int, int]]] = {}

    def progress(label: str) -> Callable[[int, int], None]:
        return lambda done, total: bars.setdefault(label, []).append((done, total))

    async with connect(url(server)) as up, connect(f"ws://127.0.0.1:{server.ws_port}") as down:
        uploader = Shell(up, progress=progress)
        downloader = Shell(down, downloads=tmp_path / "downloads", progress=progress)
        await uploader.handle("/register uma pw")
        await uploader.handle("/create docs")
        await downloader.handle("/register dov pw")
        await downloader.handle("/join docs")

        said = text(await uploader.handle(f"/upload docs {original}"))
        assert said.startswith("File '") and "uploaded to room 'docs'" in said
        size = original.stat().st_size
        assert bars[f"Uploading {original.name}"][-1] == (size, size)

        listing = text(await downloader.handle("/list_files"))
        name = next(n for n in downloader.known_files)  # learnt from the listing, for completion
        assert name in listing and downloader.complete("/download " + name[:3]) == [name + " "]
        assert "156.2 KiB" in listing

        said = text(await downloader.handle(f"/download {name}"))
        saved = tmp_path / "downloads" / original.name
        assert said == f"File '{name}' (156.2 KiB) downloaded to {saved}."
        assert saved.read_bytes() == original.read_bytes()
        assert bars[f"Downloading {name}"][-1] == (size, size)

        # A second download never replaces the first.
        await downloader.handle(f"/download {name}")
        assert sorted(x.name for x in (tmp_path / "downloads").iterdir()) == [
            "notes from the meeting (1).txt", "notes from the meeting.txt"]

        assert text(await downloader.handle("/download no_such_thing")).startswith("Error: ")
        assert text(await uploader.handle(f"/upload docs {tmp_path / 'missing.txt'}")).startswith(
            "Error: No such file")


async def test_the_shell_across_a_server_restart(tmp_path: Path) -> None:
    async with restartable(tmp_path) as runner:
        assert runner.server is not None
        old = runner.server
        async with connect(url(old), reconnect=True, retry_initial=0.02, retry_max=0.2) as client:
            shell = Shell(client)
            states: dict[str, trio.Event] = {"disconnected": trio.Event(), "reconnected": trio.Event()}
            shown: list[str] = []

            def on_state(state: str, detail: str) -> None:
                shown.extend(shell.on_state(state, detail))
                if state in states:
                    states[state].set()

            client.on_state.append(on_state)
            await shell.handle("/register rex pw")
            await shell.handle("/create den")
            with trio.fail_after(TIMEOUT):
                await runner.stop()
                await states["disconnected"].wait()
                assert text(await shell.handle("anyone?")).startswith("Error: Not connected to the server")
                await runner.start(port=old.tcp_port, ws_port=old.ws_port)
                await states["reconnected"].wait()
            assert text(shown) == ("Connection lost (Server shutting down.). Reconnecting...\n"
                                   "Reconnected as rex in room 'den'.")
            assert shell.prompt == "(rex@den)> "
            assert await shell.handle("back again") == []
            assert text(await shell.handle("/whereami")) == "You are in room 'den'."


def test_lines_with_passwords_are_secret() -> None:
    assert is_secret("/login bob pw") and is_secret("/REGISTER bob pw") and is_secret("/changepassword a b")
    assert not is_secret("/join general") and not is_secret("login is what I did")


async def test_utuvox_client_with_piped_input(server: Server, tmp_path: Path) -> None:
    script = "/register pia pw\n/create den\nhello from a pipe\n/whoami\n"
    result = await trio.run_process(
        [sys.executable, "-m", "utuvox", "client", "--url", url(server)], stdin=script.encode(),
        capture_stdout=True, capture_stderr=True, cwd=tmp_path, check=False,
    )
    out = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()
    assert "Registration successful as user." in out
    assert "Room 'den' created successfully." in out
    assert "pia: hello from a pipe" in out
    assert "You are logged in as pia." in out
    assert out.rstrip().endswith("Goodbye.")  # the end of the input is Ctrl-D: a clean /quit


def test_utuvox_client_reports_an_unreachable_server(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "utuvox", "client", "--url", "tcp://127.0.0.1:1"],
                            stdin=subprocess.DEVNULL, capture_output=True, cwd=tmp_path, check=False, timeout=30)
    assert result.returncode == 1
    assert result.stderr == b"utuvox: cannot connect to tcp://127.0.0.1:1: Connection refused\n"


async def test_times_are_local_and_short_with_a_line_when_the_day_changes(server: Server) -> None:
    ist = timezone(timedelta(hours=5, minutes=30))
    async with connect(url(server)) as client:
        shell = Shell(client, tz=ist)
        today = datetime.now(ist).replace(hour=12, minute=0, second=0, microsecond=0)
        yesterday = today - timedelta(days=1)
        # 23:50 UTC the day before is 05:20 local: the local date is the one that counts.
        late = datetime(yesterday.year, yesterday.month, yesterday.day, 23, 50, tzinfo=UTC) - timedelta(days=1)
        events = [p.MessageEvent(ts=late, room="r", seq=1, user="bob", text="late"),
                  p.MessageEvent(ts=yesterday, room="r", seq=2, user="bob", text="noon"),
                  p.MessageEvent(ts=today, room="r", seq=3, user="bob", text="today")]
        lines = [line for e in events for line in shell.render_event(e)]
        assert lines == [
            f"--- Day changed to {yesterday:%a %d %b %Y} ---", "[05:20] [r] bob: late",
            "[12:00] [r] bob: noon",
            f"--- Day changed to {today:%a %d %b %Y} ---", "[12:00] [r] bob: today",
        ]
        seconds = Shell(client, tz=UTC, time_format="%Y-%m-%d %H:%M:%S")
        assert seconds.render_event(events[2])[-1] == f"[{today.astimezone(UTC):%Y-%m-%d %H:%M:%S}] [r] bob: today"


async def test_utuvox_client_time_format_and_local_zone(server: Server, tmp_path: Path) -> None:
    result = await trio.run_process(
        [sys.executable, "-m", "utuvox", "client", "--url", url(server), "--time-format", "%H:%M:%S %Z"],
        stdin=b"/whoami\n", capture_stdout=True, capture_stderr=True, cwd=tmp_path, check=False,
        env={**os.environ, "TZ": "IST-5:30"})
    assert result.returncode == 0, result.stderr
    assert re.search(rb"^\[\d\d:\d\d:\d\d IST\] You are not logged in\.$", result.stdout, re.M), result.stdout
