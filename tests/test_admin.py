"""Administration against the real server: the admin socket (mode 0600, operator requests, the OS user in
the admin log), admin commands in chat (text and JSON), refusals for everyone else, bans that cut live
TCP and WebSocket sessions, room deletion with members inside, tail, and no secret in any log."""

from __future__ import annotations

import getpass
import json
import logging
import re
import socket
import stat
from pathlib import Path

import pytest
import trio

from utuvox.protocol.schema import CLIENT_FRAME, REQUESTS_BY_TYPE, SERVER_FRAME

from .clients import JsonLines, TextLines
from .conftest import login_json, open_ws, running_server

STAMP = r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] "
ADMIN_TYPES = ["delete_room", "add_user", "edit_user", "view_users", "view_room_history", "ban_user", "unban_user",
               "change_admin_key", "who", "kick", "announce", "stats", "admin_log", "tail", "untail"]
# Valid fields for each admin request, so that a refusal can only be about permission.
VALID_FIELDS: dict[str, dict] = {
    "delete_room": {"room": "general"}, "add_user": {"username": "zed", "password": "pw"},
    "edit_user": {"username": "bob", "is_admin": True}, "view_users": {},
    "view_room_history": {"room": "general"}, "ban_user": {"username": "bob"}, "unban_user": {"username": "bob"},
    "change_admin_key": {"new_key": "a-new-key-1234567"}, "who": {}, "kick": {"username": "bob"},
    "announce": {"text": "hi"}, "stats": {}, "admin_log": {}, "tail": {}, "untail": {},
}  # fmt: skip


async def operator(server) -> JsonLines:
    """A JSON client on the admin socket."""
    return JsonLines(await trio.open_unix_socket(str(server.settings.admin_socket_path)))


async def lines_until(client: TextLines, command: str, last: str) -> list[str]:
    """Send ``command`` then /ping; the lines that came back before the pong."""
    await client.send(command)
    await client.send("/ping")
    lines = []
    while not (line := await client.recv_line()).endswith(last):
        lines.append(line)
    return lines


def leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in leaves(sub)]
    return [exc]


def admin_key(server) -> str:
    return Path(server.settings.admin_key_path).read_text().strip()


async def admin_rows(server, **filters) -> list:
    return await server.store.admin_log(limit=1000, **filters)


def test_every_admin_type_is_in_the_schema() -> None:
    for kind in ADMIN_TYPES:
        assert REQUESTS_BY_TYPE[kind].admin_only, kind
        CLIENT_FRAME.validate_python({"type": kind, **VALID_FIELDS[kind]})


# --- the admin socket -----------------------------------------------------------------------------


async def test_admin_socket_is_0600_and_removed_at_shutdown(tmp_path: Path) -> None:
    path = tmp_path / "admin.sock"
    async with running_server(tmp_path) as server:
        mode = path.lstat().st_mode
        assert stat.S_ISSOCK(mode)
        assert stat.S_IMODE(mode) == 0o600
        assert server.settings.admin_socket_path == path
    assert not path.exists()


async def test_a_stale_socket_is_replaced_and_a_regular_file_is_not(tmp_path: Path) -> None:
    path = tmp_path / "admin.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: what a killed server leaves
    async with running_server(tmp_path) as server:
        client = await operator(server)
        assert (await client.request("ping"))["type"] == "pong"
        await client.aclose()

    path.write_text("not a socket")
    with pytest.raises((OSError, BaseExceptionGroup)) as failure:
        async with running_server(tmp_path):
            pass  # pragma: no cover
    assert "not a socket" in " ".join(map(str, leaves(failure.value)))
    assert path.read_text() == "not a socket"


async def test_operator_needs_no_login_and_the_os_user_is_logged(server) -> None:
    op = await operator(server)
    reply = await op.request("add_user", username="alice", password="pw", is_admin=True)
    assert reply == {"type": "ok", "re": 1}
    users = await op.request("view_users")
    assert users["type"] == "user_table"
    assert [(u["name"], u["is_admin"], u["banned"]) for u in users["users"]] == [("alice", True, False)]
    who = await op.request("who")
    assert [(s["transport"], s["operator"]) for s in who["sessions"]] == [("admin", getpass.getuser())]
    help_ = await op.request("help")
    assert any(line.startswith("/ban_user") for line in help_["admin_commands"])

    rows = await admin_rows(server)
    me = f"console:{getpass.getuser()}"
    # Connecting is no admin action (a scripted console run would fill the log): what is done is recorded.
    assert [(r.actor, r.via, r.action, r.target, r.outcome) for r in rows] == [
        (me, "admin", "add_user", "alice", "ok"),
    ]


# --- refusals -------------------------------------------------------------------------------------


async def test_non_admins_get_forbidden_over_tcp_websocket_and_text(server, connect_json, connect_text) -> None:
    js = await connect_json()
    for kind in ADMIN_TYPES:  # not even logged in
        assert (await js.request(kind, **VALID_FIELDS[kind]))["code"] == "forbidden", kind
    await login_json(js, "bob")
    await js.request("create", room="general")
    for kind in ADMIN_TYPES:
        reply = await js.request(kind, **VALID_FIELDS[kind])
        assert reply["type"] == "error" and reply["code"] == "forbidden", (kind, reply)

    async with open_ws(server.ws_port) as ws:
        await login_json(ws, "carol")
        for kind in ADMIN_TYPES:
            reply = await ws.request(kind, **VALID_FIELDS[kind])
            assert reply["type"] == "error" and reply["code"] == "forbidden", (kind, reply)

    text = await connect_text()
    await text.send("/login carol pw")
    await text.expect("Login successful")
    for line in ["/ban_user bob", "/delete_room general", "/view_users", "/change_admin_key abcdefgh1-abcdefgh"]:
        await text.send(line)
        assert re.match(STAMP + r"Error: Permission denied", await text.recv_line()), line
    help_lines = await lines_until(text, "/help", "Pong.")
    assert any("/list_all_rooms" in line for line in help_lines)
    assert not any("Admin commands" in line or "/ban_user" in line for line in help_lines)

    # Nothing happened: bob is not banned, the room is there, and the admin log is empty of actions.
    assert not (await server.store.get_user("bob")).banned
    assert server.chat.has_room("general")
    assert [r.action for r in await admin_rows(server)] == []


# --- bans -----------------------------------------------------------------------------------------


async def test_ban_cuts_tcp_and_websocket_sessions_at_once_and_refuses_login(server, connect_json) -> None:
    tcp = await connect_json()
    await login_json(tcp, "bob", "bobpw")
    async with open_ws(server.ws_port) as ws:
        await login_json(ws, "bob", "bobpw", register=False)
        op = await operator(server)
        with trio.fail_after(1):
            reply = await op.request("ban_user", username="bob", reason="flooding")
            assert reply["type"] == "ok"
            bye = await tcp.recv_until(lambda f: f["type"] == "bye")
            assert bye["code"] == "banned" and "flooding" in bye["reason"]
            assert await tcp.closed(timeout=1)
            ws_bye = await ws.recv_until(lambda f: f["type"] == "bye")
            assert ws_bye["code"] == "banned"
    assert server.chat.sessions_of("bob") == []

    again = await connect_json()
    refused = await again.request("login", username="bob", password="bobpw")
    assert refused["code"] == "banned" and "flooding" in refused["message"]

    users = {u["name"]: u for u in (await op.request("view_users"))["users"]}
    assert users["bob"]["banned"] and users["bob"]["ban_reason"] == "flooding"
    assert (await op.request("unban_user", username="bob"))["type"] == "ok"
    assert (await again.request("login", username="bob", password="bobpw"))["type"] == "logged_in"
    assert (await op.request("ban_user", username="nobody"))["code"] == "no_such_user"

    rows = await admin_rows(server, action="ban_user")
    assert [(r.target, r.outcome) for r in rows] == [("bob", "ok"), ("nobody", "no_such_user")]
    assert "flooding" in rows[0].detail and "2 session(s)" in rows[0].detail


# --- room deletion --------------------------------------------------------------------------------


async def test_delete_room_with_members_inside(server, connect_json, connect_text) -> None:
    alice = await connect_text()
    await alice.send(f"/register alice pw {admin_key(server)}")
    await alice.expect("Registration successful as admin.")
    bob = await connect_json()
    await login_json(bob, "bob")
    await bob.request("create", room="general")
    await bob.request("message", text="something to forget")
    await bob.request("create", room="other")
    async with open_ws(server.ws_port) as carol:
        await login_json(carol, "carol")
        await carol.request("join", room="general")

        await alice.send("/delete_room general")
        assert re.match(STAMP + r"Room 'general' deleted\.$", await alice.expect("deleted"))
        for member in (bob, carol):
            event = await member.recv_until(lambda f: f.get("type") == "room_deleted")
            assert event["room"] == "general" and event["by"] == "alice"
        assert (await bob.request("whereami"))["rooms"] == ["other"]
        assert (await carol.request("whereami"))["rooms"] == []
        assert (await carol.request("message", text="still here?"))["code"] == "not_in_room"
        assert (await carol.request("join", room="general"))["code"] == "no_such_room"

    await alice.send("/view_room_history general")
    assert "Error: Room 'general' does not exist." in await alice.recv_line()
    # The name can be used again, and the new room starts with no history.
    fresh = await bob.request("create", room="general")
    assert fresh["created"] and fresh["last_seq"] == 1
    assert [(e["type"], e["seq"]) for e in fresh["history"]] == [("join", 1)]
    assert "something to forget" not in json.dumps(await bob.request("history", room="general"))

    rows = await admin_rows(server, action="delete_room")
    assert [(r.actor, r.via, r.target, r.outcome) for r in rows] == [("alice", "tcp", "general", "ok")]


async def test_delete_room_runs_the_cleanup_hooks(server) -> None:
    deleted: list[str] = []

    async def cleanup(room) -> None:
        deleted.append(room.name)

    server.chat.when_room_deleted(cleanup)
    op = await operator(server)
    assert (await op.request("delete_room", room="nope"))["code"] == "no_such_room"
    js = await JsonLines.connect(server.tcp_port)
    await login_json(js, "bob")
    await js.request("create", room="files")
    assert (await op.request("delete_room", room="FILES"))["type"] == "ok"
    assert deleted == ["files"]


# --- admin commands in chat -----------------------------------------------------------------------


async def test_admin_commands_in_text_mode(server, connect_text) -> None:
    admin = await connect_text()
    await admin.send(f"/register root pw {admin_key(server)}")
    await admin.expect("Registration successful as admin.")
    help_lines = await lines_until(admin, "/help", "Pong.")
    admin_part = help_lines[next(i for i, line in enumerate(help_lines) if line.endswith("] Admin commands:")):]
    assert any(line.endswith("] /delete_room <room> - Delete a room and its history, even with active users.")
               for line in admin_part)
    assert all(f"/{kind}" in "".join(admin_part) for kind in ADMIN_TYPES)

    expected = [
        ("/add_user bob pw", r"User 'bob' added as user\."),
        ("/add_user eve pw 1", r"User 'eve' added as admin\."),
        ("/add_user bob pw", r"Error: Username 'bob' is already taken\."),
        ("/edit_user bob newpw 1", r"User 'bob' updated\."),
        ("/ban_user bob being rude", r"User 'bob' has been banned\."),
        ("/unban_user bob", r"User 'bob' has been unbanned\."),
        ("/ban_user root", r"Error: You cannot ban yourself\."),
        ("/change_admin_key short",
         r"Error: New key must be at least 16 characters\. Usage: /change_admin_key <new_key>"),
        ("/change_admin_key a-brand-new-key-1", r"Admin key changed successfully\."),
        ("/ban_user ghost", r"Error: User 'ghost' does not exist\."),
        ("/announce hello world", r"\[ANNOUNCEMENT\] hello world"),
    ]
    for line, answer in expected:
        await admin.send(line)
        got = await admin.recv_line()
        assert re.match(STAMP + answer, got), (line, got)
    await admin.expect("Announcement sent.")

    await admin.send("/view_users")
    assert re.match(STAMP + "Users:$", await admin.recv_line())
    lines = [(await admin.recv_line()).split("] ", 1)[1] for _ in range(3)]
    assert lines == ["Username: bob, Admin: Yes, Banned: No, Bot: No, Online: No",
                     "Username: eve, Admin: Yes, Banned: No, Bot: No, Online: No",
                     "Username: root, Admin: Yes, Banned: No, Bot: No, Online: Yes"]

    await admin.send("/create lobby")
    await admin.expect("You joined room 'lobby'.")
    await admin.send("hello lobby")
    await admin.expect("root: hello lobby")
    await admin.send("/view_room_history lobby")
    assert re.match(STAMP + "Chat history for 'lobby':$", await admin.expect("Chat history"))
    assert (await admin.recv_line()).endswith("] User root joined room 'lobby'")
    assert (await admin.recv_line()).endswith("] root: hello lobby")

    await admin.send("/stats")
    await admin.expect("Server statistics:")
    assert re.search(r"Messages: 1 ", await admin.expect("Messages:"))
    await admin.send("/who")
    await admin.expect("Connected sessions:")
    assert "root (tcp 127.0.0.1:" in await admin.recv_line()
    await admin.send("/admin_log 2")
    await admin.expect("Admin log:")
    assert re.match(STAMP + "root via tcp: announce -> ok$", await admin.recv_line())
    assert re.match(STAMP + "root via tcp: view_room_history 'lobby' -> ok$", await admin.recv_line())

    # The new key works for registering admins, the old one no longer does.
    other = await TextLines.connect(server.tcp_port)
    await other.send("/register mallory pw a-brand-new-key-1")
    await other.expect("Registration successful as admin.")
    assert admin_key(server) == "a-brand-new-key-1"


async def test_admin_status_changes_take_effect_in_live_sessions(server, connect_json) -> None:
    bob = await connect_json()
    await login_json(bob, "bob")
    assert (await bob.request("view_users"))["code"] == "forbidden"
    op = await operator(server)
    assert (await op.request("edit_user", username="bob", is_admin=True))["type"] == "ok"
    notice = await bob.recv_until(lambda f: f.get("type") == "notice")
    assert "from a regular user to an admin" in notice["text"]
    assert (await bob.request("view_users"))["type"] == "user_table"
    assert (await bob.request("whoami"))["is_admin"] is True
    assert (await op.request("edit_user", username="bob", is_admin=False, bot=True))["type"] == "ok"
    assert (await bob.request("view_users"))["code"] == "forbidden"
    assert (await bob.request("whoami"))["is_bot"] is True
    assert (await op.request("edit_user", username="bob"))["code"] == "bad_request"
    assert (await op.request("edit_user", username="ghost", is_admin=True))["code"] == "no_such_user"


# --- operators' tools -----------------------------------------------------------------------------


async def test_who_kick_announce_stats(server, connect_json) -> None:
    bob = await connect_json()
    await login_json(bob, "bob")
    await bob.request("create", room="general")
    await bob.request("message", text="one")
    async with open_ws(server.ws_port) as bob_ws:
        await login_json(bob_ws, "bob", register=False)
        outsider = await connect_json()
        await login_json(outsider, "dora")
        op = await operator(server)

        sessions = (await op.request("who"))["sessions"]
        rows = {(s.get("user"), s["transport"]): s for s in sessions}
        assert rows[("bob", "tcp")]["rooms"] == ["general"]
        assert rows[("bob", "ws")]["rooms"] == []
        assert ("dora", "tcp") in rows and (None, "admin") in rows

        assert (await op.request("announce", text="maintenance at noon", room="general"))["room"] == "general"
        event = await bob.recv_until(lambda f: f.get("type") == "announce")
        assert event["room"] == "general" and event["by"] == f"console:{getpass.getuser()}"
        assert (await op.request("announce", text="to everyone"))["type"] == "ok"
        for client in (outsider, bob_ws, bob):
            event = await client.recv_until(lambda f: f.get("type") == "announce" and f["text"] == "to everyone")
            assert "room" not in event
        assert (await op.request("announce", text="x", room="nope"))["code"] == "no_such_room"

        stats = await op.request("stats")
        assert stats["type"] == "server_stats"
        assert stats["connections"] == 4 and stats["by_transport"] == {"tcp": 2, "ws": 1, "admin": 1}
        assert stats["messages"] == 1 and stats["rooms"] == 1 and stats["users_online"] == 2
        assert stats["bytes_sent"] > 0 and stats["uptime"] >= 0

        kicked = await op.request("kick", session=rows[("bob", "ws")]["id"], reason="one too many")
        assert kicked == {"type": "kicked", "re": kicked["re"], "user": "bob", "session": rows[("bob", "ws")]["id"],
                          "count": 1}
        bye = await bob_ws.recv_until(lambda f: f["type"] == "bye")
        assert bye["code"] == "kicked" and "one too many" in bye["reason"]
        assert (await op.request("kick", username="bob"))["count"] == 1
        assert await bob.closed(timeout=1)
        assert (await op.request("kick", username="bob"))["code"] == "user_offline"
        assert (await op.request("kick", session=99999))["code"] == "user_offline"
        assert (await op.request("kick"))["code"] == "bad_request"
        assert (await login_json(await connect_json(), "bob", register=False))["type"] == "logged_in"


async def test_tail_follows_every_room_even_new_ones(server, connect_json) -> None:
    op = await operator(server)
    assert (await op.request("tail"))["type"] == "ok"
    bob = await connect_json()
    await login_json(bob, "bob")
    await bob.request("create", room="later")
    await bob.request("message", text="seen by the operator")
    join = await op.recv_until(lambda f: f.get("type") == "join")
    assert join["room"] == "later" and join["user"] == "bob"
    message = await op.recv_until(lambda f: f.get("type") == "message")
    assert message["text"] == "seen by the operator"

    assert (await op.request("untail"))["type"] == "ok"
    await bob.request("message", text="not seen")
    assert (await op.request("tail", room="other"))["code"] == "no_such_room"
    assert (await op.request("ping"))["type"] == "pong"  # the untailed message never arrived before this
    assert op.buf == b""


async def test_admin_log_filters(server) -> None:
    op = await operator(server)
    await op.request("add_user", username="bob", password="pw")
    await op.request("ban_user", username="bob")
    await op.request("ban_user", username="ghost")
    page = await op.request("admin_log", action="ban_user")
    assert [(e["target"], e["outcome"]) for e in page["entries"]] == [("bob", "ok"), ("ghost", "no_such_user")]
    me = f"console:{getpass.getuser()}"
    assert {e["actor"] for e in (await op.request("admin_log", actor=me))["entries"]} == {me}
    assert (await op.request("admin_log", actor="nobody"))["entries"] == []
    assert (await op.request("admin_log", since="2999-01-01T00:00:00Z"))["entries"] == []
    assert len((await op.request("admin_log", limit=2))["entries"]) == 2


async def test_no_password_or_key_in_the_admin_log_or_the_server_log(server, connect_text, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    secrets_used = ["Pw-added-7731", "Pw-edited-5512", "Key-changed-9904-abcdef", "Pw-chat-3318",
                    "Key-chat-2270-abcdefgh"]
    op = await operator(server)
    await op.request("add_user", username="bob", password=secrets_used[0], is_admin=True)
    await op.request("edit_user", username="bob", new_password=secrets_used[1])
    await op.request("change_admin_key", new_key=secrets_used[2])
    await op.request("change_admin_key", new_key="bad key with spaces")

    admin = await connect_text()
    await admin.send(f"/login bob {secrets_used[1]}")
    await admin.expect("Login successful")
    await admin.send(f"/add_user carol {secrets_used[3]} 1")
    await admin.expect("added as admin")
    await admin.send(f"/change_admin_key {secrets_used[4]}")
    await admin.expect("Admin key changed")

    rows = await admin_rows(server)
    assert {"add_user", "edit_user", "change_admin_key"} <= {r.action for r in rows}
    assert {r.actor for r in rows} == {f"console:{getpass.getuser()}", "bob"}
    stored = json.dumps([list(map(str, (r.actor, r.action, r.target, r.outcome, r.detail))) for r in rows])
    logged = caplog.text
    assert "add_user" in logged  # the server did log the actions
    for secret in secrets_used:
        assert secret not in stored
        assert secret not in logged


# --- docs -----------------------------------------------------------------------------------------


def test_protocol_doc_administration_examples_validate() -> None:
    doc = (Path(__file__).parent.parent / "docs" / "PROTOCOL.md").read_text(encoding="utf-8")
    section = doc[doc.index("## Administration"):]
    blocks = re.findall(r"```json\n(.*?)```", section, re.S)
    examples = [line for block in blocks for line in block.splitlines() if line.strip()]
    assert len(examples) > 20
    seen = set()
    for line in examples:
        frame = json.loads(line)
        request = frame["type"] in REQUESTS_BY_TYPE and "re" not in frame and "ts" not in frame
        adapter = CLIENT_FRAME if request else SERVER_FRAME
        adapter.validate_json(line)
        seen.add(frame["type"])
    assert set(ADMIN_TYPES) <= seen
