"""``utuvox-console`` as operators run it: a subprocess on the admin socket of a real server, with -c
commands, a script file and piped input, checking its output and its exit status."""

from __future__ import annotations

import getpass
import json
import re
import subprocess
import sys
from pathlib import Path

import trio

from utuvox.client import connect

from .conftest import FAST_HASH, login_json, open_ws, running_server
from .processes import serve, stop
from .pty import Pty

FAST = {f"UTUVOX_{k.upper()}": str(v) for k, v in FAST_HASH.items()}

CONSOLE = str(Path(sys.executable).with_name("utuvox-console"))


async def console(server, *commands: str, stdin: bytes | None = None,
                  args: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    argv = [CONSOLE, "--socket", str(server.settings.admin_socket_path), *args]
    for command in commands:
        argv += ["-c", command]
    with trio.fail_after(30):
        return await trio.run_process(argv, stdin=stdin, capture_stdout=True, capture_stderr=True, check=False)


def out(result: subprocess.CompletedProcess) -> str:
    return result.stdout.decode()


async def test_commands_run_in_order_and_print_tables(server) -> None:
    result = await console(server, "add_user alice pw-alice --admin", "add_user bob pw-bob", "add_user bot7 pw --bot",
                           "view_users", "rooms", "stats")
    assert result.returncode == 0, result.stderr
    text = out(result)
    assert "User 'alice' added as admin." in text and "User 'bob' added as user." in text
    header = next(line for line in text.splitlines() if line.lstrip().startswith("User "))
    assert header.split() == ["User", "Admin", "Bot", "Banned", "Ban", "reason", "Online", "Created", "(UTC)"]
    admin_at = header.index("Admin")
    rows = {line.split()[0]: line for line in text.splitlines() if line.split()[:1] in (["alice"], ["bob"], ["bot7"])}
    assert rows["alice"][admin_at:admin_at + 3] == "yes"
    assert rows["bob"][admin_at:admin_at + 3].strip() == ""
    assert (await server.store.get_user("bot7")).is_bot
    assert "No rooms." in text
    assert "Uptime" in text and "Messages per second" in text
    assert "pw-alice" not in text


async def test_a_failed_command_stops_the_run_with_status_1(server) -> None:
    result = await console(server, "ban_user ghost", "add_user never pw")
    assert result.returncode == 1
    assert "User 'ghost' does not exist. [no_such_user]" in result.stderr.decode()
    assert await server.store.get_user("never") is None  # the run stopped at the failure

    for bad in ["no_such_command", "ban_user", "view_room_history nowhere", "kick #x", "add_user 'bad name' pw"]:
        result = await console(server, bad)
        assert result.returncode == 1, (bad, result)
        assert result.stderr, bad
    help_ = await console(server, "view_users -h")
    assert help_.returncode == 0 and "--banned" in out(help_)


async def test_piped_commands_and_script_files(server, tmp_path: Path) -> None:
    result = await console(server, stdin=b"add_user carol pw\nview_users --json\nwho\n")
    assert result.returncode == 0, result.stderr
    users = json.loads(next(line for line in out(result).splitlines() if line.startswith("[{")))
    assert [u["name"] for u in users] == ["carol"]  # -j: the data itself, not the frame around it
    assert "console:" + getpass.getuser() in out(result)
    assert not out(result).endswith("\n\n")  # no blank line at the end of piped input

    result = await console(server, stdin=b"unban_user nobody\nadd_user dave pw\n")
    assert result.returncode == 1
    assert await server.store.get_user("dave") is None

    script = tmp_path / "script.txt"
    script.write_text("# set up\nadd_user erin pw\n\nban_user erin too loud\nview_users --banned\n")
    result = await console(server, args=(str(script),))
    assert result.returncode == 0, result.stderr
    assert "User 'erin' has been banned." in out(result)
    assert "too loud" in out(result)


async def test_ban_from_the_console_cuts_tcp_and_websocket_sessions(server, connect_json) -> None:
    tcp = await connect_json()
    await login_json(tcp, "bob", "bobpw")
    async with open_ws(server.ws_port) as ws:
        await login_json(ws, "bob", "bobpw", register=False)
        result = await console(server, "ban_user bob spamming links")
        assert result.returncode == 0, result.stderr
        assert "User 'bob' has been banned." in out(result)
        with trio.fail_after(1):
            assert (await tcp.recv_until(lambda f: f["type"] == "bye"))["code"] == "banned"
            assert (await ws.recv_until(lambda f: f["type"] == "bye"))["code"] == "banned"
        assert await tcp.closed(timeout=1)
    again = await connect_json()
    assert (await again.request("login", username="bob", password="bobpw"))["code"] == "banned"

    rows = await server.store.admin_log(action="ban_user")
    assert [(r.actor, r.via, r.target, r.outcome) for r in rows] == [
        (f"console:{getpass.getuser()}", "admin", "bob", "ok")]


async def test_delete_room_with_members_from_the_console(server, connect_json) -> None:
    bob = await connect_json()
    await login_json(bob, "bob")
    await bob.request("create", room="general")
    await bob.request("message", text="hello")
    history = await console(server, "view_room_history general")
    assert history.returncode == 0
    assert "hello" in out(history) and "join" in out(history)

    result = await console(server, "delete_room general")
    assert result.returncode == 0, result.stderr
    assert "Room 'general' deleted." in out(result)
    event = await bob.recv_until(lambda f: f.get("type") == "room_deleted")
    assert event["by"] == f"console:{getpass.getuser()}"
    assert (await bob.request("whereami"))["rooms"] == []
    assert (await console(server, "view_room_history general")).returncode == 1
    assert (await bob.request("create", room="general"))["created"] is True


async def test_who_kick_announce_and_admin_log(server, connect_json) -> None:
    bob = await connect_json()
    await login_json(bob, "bob")
    await bob.request("create", room="general")
    result = await console(server, "who", "announce -r general tea is ready", "kick bob go home")
    assert result.returncode == 0, result.stderr
    text = out(result)
    who_row = next(line for line in text.splitlines() if " bob " in line)
    assert "tcp" in who_row and "127.0.0.1:" in who_row and "general" in who_row
    assert "Announcement sent to room 'general'." in text
    assert "User 'bob' kicked (1 session)." in text
    assert (await bob.recv_until(lambda f: f.get("type") == "announce"))["text"] == "tea is ready"
    bye = await bob.recv_until(lambda f: f["type"] == "bye")
    assert bye["code"] == "kicked" and "go home" in bye["reason"]

    log = await console(server, "admin_log --action kick", "admin_log --since 1h --admin nobody")
    assert log.returncode == 0
    lines = out(log).splitlines()
    kick_row = next(line for line in lines if " kick " in line)
    assert f"console:{getpass.getuser()}" in kick_row and "bob" in kick_row and " ok " in kick_row
    assert "No matching entries." in lines[-1]


async def test_tail_prints_events_until_it_has_enough(server, connect_json) -> None:
    argv = [CONSOLE, "--socket", str(server.settings.admin_socket_path), "-c", "tail --count 3"]
    async with trio.open_nursery() as nursery:
        proc = await nursery.start(lambda task_status: trio.run_process(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False, task_status=task_status))
        seen = b""
        with trio.fail_after(20):
            while b"Tailing every room" not in seen:
                seen += await proc.stdout.receive_some(4096)
            bob = await connect_json()
            await login_json(bob, "bob")
            await bob.request("create", room="later")
            await bob.request("message", text="tailed message")
            await bob.request("leave")
            while chunk := await proc.stdout.receive_some(4096):
                seen += chunk
            assert await proc.wait() == 0
    text = seen.decode()
    assert "User bob joined room 'later'" in text
    assert "[later] bob: tailed message" in text
    assert "User bob left room 'later'" in text


async def test_cannot_connect_is_a_clear_failure(tmp_path: Path) -> None:
    argv = [CONSOLE, "--socket", str(tmp_path / "nothing.sock"), "-c", "who"]
    result = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)
    assert result.returncode == 1
    assert "cannot connect" in result.stderr.decode()


async def test_console_change_admin_key(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server:
        result = await console(server, "change_admin_key --generate", "change_admin_key my-own-admin-key-42")
        assert result.returncode == 0, result.stderr
        generated = next(line for line in out(result).splitlines() if line.startswith("New admin key: "))
        assert len(generated.split(": ", 1)[1]) >= 24
        assert (tmp_path / "admin_key.txt").read_text().strip() == "my-own-admin-key-42"
        rows = await server.store.admin_log(action="change_admin_key")
        assert len(rows) == 2 and all("my-own-admin-key-42" not in str(r) for r in rows)


async def test_console_at_a_terminal_reconnects_by_itself_and_exit_leaves(tmp_path: Path) -> None:
    first = await serve(tmp_path, env=FAST)
    proc = first.proc
    console_pty = Pty([CONSOLE, "--socket", str(tmp_path / "admin.sock")], cwd=tmp_path, columns=80)
    try:
        await console_pty.expect("(console:")
        async with connect(f"tcp://127.0.0.1:{first.port}") as bob:
            await bob.sign_in("bob", "pw", register=True)
            await bob.create("general")
            await console_pty.line("who")
            # 80 columns: an address keeps its port on one line, however the other columns fold.
            await console_pty.expect(re.compile(r"127\.0\.0\.1:\d+"))
            row = next(line for line in console_pty.seen[console_pty.mark:].splitlines() if " bob " in line)
            assert re.search(r"127\.0\.0\.1:\d+ ", row), row
            assert all(len(line) <= 80 for line in console_pty.seen[console_pty.mark:].splitlines())
        await stop(proc)
        await console_pty.expect("Disconnected: Server shutting down.")
        proc = (await serve(tmp_path, "--port", str(first.port), "--ws-port", str(first.ws_port), env=FAST)).proc
        await console_pty.line("rooms")  # the next command connects again by itself
        await console_pty.expect("Reconnected to")
        await console_pty.expect(re.compile(r"general\s+0"))
        await console_pty.line("unban_user bob")
        await console_pty.expect("Error: User 'bob' is not banned. [bad_request]")
        await console_pty.line("exit")
        assert await console_pty.wait() == 0
    finally:
        console_pty.close()
        await stop(proc)


async def test_scripted_runs_leave_no_connect_rows(server) -> None:
    for _ in range(3):
        assert (await console(server, "who")).returncode == 0
    result = await console(server, "admin_log -j")
    assert json.loads(out(result)) == []
    refused = await console(server, "add_user zed pw", "unban_user zed")
    assert refused.returncode == 1 and "Error: User 'zed' is not banned. [bad_request]" in refused.stderr.decode()
    rows = json.loads(out(await console(server, "admin_log -j")))
    assert [(r["action"], r["outcome"] == "ok") for r in rows] == [("add_user", True), ("unban_user", False)]


async def test_a_directory_for_a_socket_is_named(tmp_path: Path) -> None:
    result = await trio.run_process([CONSOLE, "--socket", str(tmp_path), "-c", "who"], capture_stdout=True,
                                    capture_stderr=True, check=False)
    assert result.returncode == 2
    assert result.stderr.decode() == (f"utuvox-console: {tmp_path} is a directory, not the admin socket; give the "
                                      "socket itself (DATA_DIR/admin.sock).\n")
