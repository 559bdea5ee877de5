"""The server core against real sockets: text mode, JSON lines and WebSocket in one room, history,
persistence, sessions, slow readers and bad input."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import trio

from .clients import JsonLines, ServerFrames, client_frame, raw_websocket, ws_text
from .conftest import login_json, open_ws, running_server


async def test_text_json_and_websocket_clients_share_a_room(server, connect_json, connect_text) -> None:
    text = await connect_text()
    assert "Welcome to UtuVox" in await text.recv_line()
    await text.send("/register alice pw")
    assert (await text.recv_line()).endswith("] Registration successful as user.")
    await text.send("/create general")
    assert (await text.recv_line()).endswith("] Room 'general' created successfully.")
    assert (await text.expect("You joined")).endswith("] You joined room 'general'.")

    js = await connect_json()
    await login_json(js, "bob")
    joined = await js.request("join", room="general")
    assert joined["type"] == "joined" and joined["room"] == "general"
    assert [e["type"] for e in joined["history"]] == ["join", "join"]
    assert joined["history"][-1]["user"] == "bob"

    async with open_ws(server.ws_port) as ws:
        await login_json(ws, "carol")
        await ws.request("join", room="general")
        assert (await text.expect("carol")).endswith("] User carol joined room 'general'")

        await text.send("hello from text")
        for client in (js, ws):
            event = await client.recv_until(lambda f: f.get("type") == "message")
            assert event["user"] == "alice" and event["text"] == "hello from text" and event["room"] == "general"
            assert event["ts"].endswith("Z") and isinstance(event["seq"], int)

        ok = await js.request("message", text="hi from json")
        assert ok["type"] == "ok" and ok["room"] == "general" and ok["seq"] > event["seq"]
        assert (await text.expect("hi from json")).endswith("] bob: hi from json")
        from_json = await ws.recv_until(lambda f: f.get("type") == "message")
        assert from_json["seq"] == ok["seq"]

        await ws.request("message", text="hi from ws")
        assert (await text.expect("hi from ws")).endswith("] carol: hi from ws")

        await text.send("/list_users_in_room")
        assert (await text.expect("Users in room")).endswith("] Users in room 'general': alice, bob, carol")


async def test_json_client_never_sees_a_text_line(connect_json) -> None:
    js = await connect_json()
    await js.send({"type": "ping", "id": 1})
    assert await js.recv() == {"type": "pong", "re": 1}
    await js.send(b"/help\n")  # text in a JSON session is a JSON error, not a text answer
    assert (await js.recv())["code"] == "bad_json"


async def test_text_client_gets_welcome_without_saying_anything(connect_text) -> None:
    text = await connect_text()
    line = await text.recv_line(timeout=1)
    assert line.startswith("[") and "Welcome to UtuVox" in line


async def test_history_survives_restart(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        js = await JsonLines.connect(srv.tcp_port)
        await login_json(js, "alice")
        await js.request("create", room="general")
        seqs = [(await js.request("message", text=f"m{i}"))["seq"] for i in range(60)]
        await js.aclose()
    async with running_server(tmp_path) as srv:
        js = await JsonLines.connect(srv.tcp_port)
        await login_json(js, "alice", register=False)
        joined = await js.request("join", room="general")
        texts = [e.get("text") for e in joined["history"] if e["type"] == "message"]
        assert len(joined["history"]) == 50
        assert texts[-1] == "m59"
        page = await js.request("history", room="general", before=joined["history"][0]["seq"], limit=100)
        older = page["events"]
        assert [e["seq"] for e in older] == list(range(1, joined["history"][0]["seq"]))
        assert page["more"] is False
        ok = await js.request("message", text="after restart")
        assert ok["seq"] > seqs[-1]
        dup = await js.request("register", username="ALICE", password="x")
        assert dup["type"] == "error"


async def test_two_sessions_of_one_user(server, connect_json) -> None:
    a1, a2, b = await connect_json(), await connect_json(), await connect_json()
    await login_json(a1, "alice")
    assert (await a2.request("login", username="alice", password="pw"))["type"] == "logged_in"
    await login_json(b, "bob")
    await b.request("create", room="general")
    await a1.request("join", room="general")
    joined2 = await a2.request("join", room="general")
    # the second session of alice does not announce alice a second time
    assert [e["user"] for e in joined2["history"] if e["type"] == "join"] == ["bob", "alice"]
    users = await b.request("list_all_users")
    assert [u["name"] for u in users["users"]] == ["alice", "bob"]
    in_room = await b.request("list_users_in_room")
    assert [u["name"] for u in in_room["users"]] == ["alice", "bob"]

    assert (await b.request("msg", to="alice", text="psst"))["type"] == "ok"
    for s in (a1, a2):
        pm = await s.recv_until(lambda f: f.get("type") == "msg")
        assert pm["user"] == "bob" and pm["text"] == "psst" and pm["to"] == "alice"

    await b.request("message", text="to both")
    for s in (a1, a2):
        assert (await s.recv_until(lambda f: f.get("type") == "message"))["text"] == "to both"

    # one session leaving does not make alice leave the room while the other stays
    await a1.request("leave")
    in_room = await b.request("list_users_in_room")
    assert [u["name"] for u in in_room["users"]] == ["alice", "bob"]
    await a2.aclose()
    leave = await b.recv_until(lambda f: f.get("type") == "leave")
    assert leave["user"] == "alice"


async def test_several_rooms_and_current_room(server, connect_text, connect_json) -> None:
    text = await connect_text()
    await text.send("/register alice pw")
    await text.send("/create general")
    await text.send("/create random")
    await text.expect("You joined room 'random'")
    await text.send("/whereami")
    assert (await text.expect("You are in")).endswith("You are in room 'random'. (also in: general)")
    js = await connect_json()
    await login_json(js, "bob")
    await js.request("join", room="general")
    await js.request("message", text="in general")
    assert (await text.expect("in general")).endswith("] [general] bob: in general")
    await text.send("/leave")
    assert (await text.expect("You left")).endswith("You left room 'random'.")
    await js.request("message", text="again")
    assert (await text.expect("again")).endswith("] bob: again")


async def test_bad_input_gets_clear_errors_and_the_session_survives(server, connect_json, connect_text) -> None:
    js = await connect_json()
    for frame, code in [
        (b"{not json}\n", "bad_json"),
        (b'{"type": "teleport", "id": 1}\n', "unknown_type"),
        (b'{"type": "login", "id": 2}\n', "bad_request"),
        (b'{"type": "join", "room": "a b", "id": 3}\n', "bad_request"),
        (b'{"type": "join", "room": "general", "id": 4}\n', "not_logged_in"),
        (b'{"type": "message", "text": "x", "id": 5}\n', "not_logged_in"),
        (b'{"type": "register", "username": "bad name", "password": "pw", "id": 6}\n', "bad_request"),
        (b'{"type": "register", "username": "e\\u001b[1m", "password": "pw", "id": 7}\n', "bad_request"),
    ]:
        await js.send(frame)
        reply = await js.recv()
        assert reply["type"] == "error" and reply["code"] == code, (frame, reply)
        assert reply["message"]
    await js.send(b'{"type": "message", "text": "' + b"x" * 70_000 + b'"}\n')
    assert (await js.recv())["code"] == "frame_too_large"
    await login_json(js, "alice")  # still usable after every error above
    assert (await js.request("login", username="alice", password="pw"))["code"] == "already_logged_in"
    assert (await js.request("message", text="hi"))["code"] == "not_in_room"
    await js.request("create", room="general")
    assert (await js.request("create", room="GENERAL"))["code"] == "room_exists"
    assert (await js.request("join", room="nowhere"))["code"] == "no_such_room"
    assert (await js.request("message", text="   "))["code"] == "empty"
    assert (await js.request("message", text="y" * 4001))["code"] == "too_long"
    assert (await js.request("msg", to="ghost", text="boo"))["code"] == "no_such_user"

    other = await connect_json()
    assert (await other.request("register", username="Alice", password="pw"))["code"] == "name_taken"
    assert (await other.request("login", username="alice", password="wrong"))["code"] == "auth_failed"
    assert (await other.request("login", username="nobody", password="pw"))["code"] == "auth_failed"
    assert (await other.request("register", username="x", password="pw", admin_key="guess"))["code"] == "forbidden"
    history = await js.request("history", room="general")
    assert [e["type"] for e in history["events"]] == ["join"]  # nothing bad was stored

    text = await connect_text()
    await text.recv_line()
    await text.send("/join general")
    assert "Error: You must log in first" in await text.recv_line()
    await text.send("/frobnicate")
    assert "Error: Unknown command: /frobnicate" in await text.recv_line()
    await text.send("/register bob")
    assert "Usage: /register <username> <password> [admin_key]" in await text.recv_line()
    await text.send("/whoami")
    assert (await text.recv_line()).endswith("You are not logged in.")


async def test_admin_key_registers_an_admin(server, connect_text, tmp_path: Path) -> None:
    key = (tmp_path / "admin_key.txt").read_text().strip()
    assert f"Admin key: {key}" in server.startup_lines
    assert (tmp_path / "admin_key.txt").stat().st_mode & 0o777 == 0o600
    text = await connect_text()
    await text.send(f"/register root pw {key}")
    assert (await text.expect("Registration")).endswith("Registration successful as admin.")


async def test_changepassword(server, connect_json) -> None:
    js = await connect_json()
    await login_json(js, "alice", "old")
    assert (await js.request("changepassword", old_password="nope", new_password="new"))["code"] == "auth_failed"
    assert (await js.request("changepassword", old_password="old", new_password="new"))["type"] == "ok"
    other = await connect_json()
    assert (await other.request("login", username="alice", password="old"))["code"] == "auth_failed"
    assert (await other.request("login", username="alice", password="new"))["type"] == "logged_in"


async def test_slow_reader_is_cut_off_and_the_room_goes_on(tmp_path: Path) -> None:
    # Bursts from group commit can queue hundreds of frames at once, so the limit must stay well above that.
    async with running_server(tmp_path, send_queue_frames=2500) as srv:
        sender, fast = await JsonLines.connect(srv.tcp_port), await JsonLines.connect(srv.tcp_port)
        await login_json(sender, "alice")
        await sender.request("create", room="general")
        await login_json(fast, "bob")
        await fast.request("join", room="general")

        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow = JsonLines(trio.SocketStream(trio.socket.from_stdlib_socket(raw)))
        await slow.stream.socket.connect(("127.0.0.1", srv.tcp_port))
        await login_json(slow, "carol")
        await slow.request("join", room="general")
        # carol now stops reading; bob keeps reading everything
        count, body = 5000, "z" * 3900

        async def read_all() -> list[int]:
            seqs = []
            while len(seqs) < count:
                frame = await fast.recv(timeout=30)
                if frame.get("type") == "message":
                    seqs.append(frame["seq"])
            return seqs

        async with trio.open_nursery() as nursery:
            result: list[list[int]] = []

            async def reader() -> None:
                result.append(await read_all())

            async def drain_sender() -> None:
                acks = 0
                while acks < count:
                    acks += (await sender.recv(timeout=30)).get("type") == "ok"

            nursery.start_soon(reader)
            nursery.start_soon(drain_sender)
            for i in range(count):
                await sender.send({"type": "message", "text": f"{i} {body}", "id": i})
        seqs = result[0]
        assert seqs == sorted(seqs) and len(set(seqs)) == count
        # carol reads nothing, so her goodbye cannot get out: she is gone after a grace, and bob is told once
        # her leave is stored.
        left = await fast.recv_until(lambda f: f.get("type") == "leave", timeout=10)
        assert left["user"] == "carol"
        assert [u["name"] for u in (await fast.request("list_users_in_room"))["users"]] == ["alice", "bob"]
        events, before = [], None
        while True:  # page back through the whole history
            page = await fast.request("history", room="general", limit=500, **({"before": before} if before else {}))
            events = page["events"] + events
            if not page["more"]:
                break
            before = page["events"][0]["seq"]
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        assert [e["user"] for e in events if e["type"] == "leave"] == ["carol"]
        raw.close()


async def test_message_acknowledgements_echo_any_kind_of_id(server, connect_json) -> None:
    js = await connect_json()
    await login_json(js, "alice")
    await js.request("create", room="general")
    for rid in [7, "plain", 'quote " and \\ backslash', "ünïcødé ✓", ""]:
        await js.send({"type": "message", "text": "hi", "id": rid})
        ok = await js.recv_until(lambda f: f.get("type") == "ok")
        assert ok["re"] == rid and ok["room"] == "general" and isinstance(ok["seq"], int)
    await js.send({"type": "message", "text": "no id"})
    ok = await js.recv_until(lambda f: f.get("type") == "ok")
    assert "re" not in ok and ok["room"] == "general"


async def test_a_websocket_client_may_pipeline_many_messages_in_one_write(server, connect_json) -> None:
    """Far more frames than the server's WebSocket queue holds arrive in one write, masked, with a ping
    among them: every message is acknowledged once, in order, and delivered in order; the ping is
    answered."""
    member = await connect_json()
    await login_json(member, "bob")
    ws = await raw_websocket(server.ws_port)
    frames = ServerFrames(ws)
    mask = b"\x5a\xa5\x3c\xc3"
    register = json.dumps({"type": "register", "username": "alice", "password": "pw"}).encode()
    await ws.send_all(ws_text(register, mask=mask) + ws_text(b'{"type": "create", "room": "general"}', mask=mask))
    while json.loads((await frames.next())[1])["type"] != "joined":
        pass
    await member.request("join", room="general")
    count = 1000
    burst = [ws_text(json.dumps({"type": "message", "id": i, "text": f"m{i}"}).encode(), mask=mask)
             for i in range(count)]
    burst.insert(count // 2, client_frame(0x9, b"are you there", mask=mask))
    await ws.send_all(b"".join(burst))

    acked: list[int] = []
    seqs: list[int] = []
    pong = b""
    while len(acked) < count:
        opcode, payload = await frames.next()
        if opcode == 0xA:
            pong = payload
            continue
        reply = json.loads(payload)
        if reply["type"] == "ok":
            acked.append(reply["re"])
            seqs.append(reply["seq"])
    assert acked == list(range(count))
    assert seqs == sorted(set(seqs))
    assert pong == b"are you there"
    texts = [(await member.recv_until(lambda f: f.get("type") == "message"))["text"] for _ in range(count)]
    assert texts == [f"m{i}" for i in range(count)]
    await ws.aclose()


async def test_messages_sent_right_before_a_quit_are_acknowledged_before_the_goodbye(server, connect_json) -> None:
    client = await connect_json()
    await login_json(client, "alice")
    await client.request("create", room="general")
    burst = b"".join(json.dumps({"type": "message", "id": i, "text": f"last words {i}"}).encode() + b"\n"
                     for i in range(200))
    await client.send(burst + b'{"type": "quit", "id": "bye"}\n')
    acked = []
    while (frame := await client.recv())["type"] != "bye":
        if frame["type"] == "ok":
            acked.append(frame["re"])
    assert acked == list(range(200))
    assert await client.closed()
