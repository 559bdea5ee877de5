"""One session, one order: the replies and echoes a session's requests cause go out in the order of those
requests, on every transport, and a session reads its own writes. Every case sends its requests in one
write (or back to back, without waiting), which is what a pipelining bot or a paste at ``nc`` does."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio

from .clients import TIMEOUT, JsonLines, ServerFrames, TextLines, client_frame, raw_websocket, ws_text
from .conftest import login_json, open_ws, running_server

PONG, PING, CLOSE, TEXT, CONTINUATION = 0xA, 0x9, 0x8, 0x1, 0x0


class RawWs:
    """JSON over a hand-made WebSocket: frames are written back to back in one write, as a pipelining
    client does, and nothing answers pings behind the test's back."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.frames = ServerFrames(stream)

    async def send_many(self, frames: list[dict[str, Any]]) -> None:
        await self.stream.send_all(b"".join(ws_text(json.dumps(f).encode()) for f in frames))

    async def recv(self) -> dict[str, Any]:
        while True:
            opcode, payload = await self.frames.next()
            if opcode == TEXT:
                return json.loads(payload)


class RawJson:
    def __init__(self, client: JsonLines) -> None:
        self.client = client

    async def send_many(self, frames: list[dict[str, Any]]) -> None:
        await self.client.send(b"".join(json.dumps(f).encode() + b"\n" for f in frames))

    async def recv(self) -> dict[str, Any]:
        return await self.client.recv()


async def pipelined_client(transport: str, port: int, ws_port: int) -> RawJson | RawWs:
    if transport == "tcp":
        return RawJson(await JsonLines.connect(port))
    return RawWs(await raw_websocket(ws_port))


async def collect(client: RawJson | RawWs, until_re: int) -> list[dict[str, Any]]:
    """Every frame up to and including the reply to request ``until_re``."""
    frames: list[dict[str, Any]] = []
    with trio.fail_after(TIMEOUT):
        while True:
            frame = await client.recv()
            frames.append(frame)
            if frame.get("re") == until_re:
                return frames


def replies(frames: list[dict[str, Any]]) -> list[tuple[int, str]]:
    return [(f["re"], f["type"]) for f in frames if "re" in f]


@pytest.mark.parametrize("transport", ["tcp", "ws"])
async def test_a_run_of_messages_then_reads_answers_in_request_order(tmp_path: Path, transport: str) -> None:
    async with running_server(tmp_path) as server:
        client = await pipelined_client(transport, server.tcp_port, server.ws_port)
        await client.send_many([{"type": "register", "id": 100, "username": "alice", "password": "pw"},
                                {"type": "create", "id": 101, "room": "general"}])
        await collect(client, 101)
        texts = [f"hello {i}" for i in range(5)]
        requests = [{"type": "message", "id": i + 1, "text": t} for i, t in enumerate(texts)]
        requests += [
            {"type": "history", "id": 6, "room": "general"},
            {"type": "whoami", "id": 7},
            {"type": "join", "id": 8, "room": "general"},
            {"type": "list_users_in_room", "id": 9},
            {"type": "list_all_rooms", "id": 10},
            {"type": "whereami", "id": 11},
            {"type": "message", "id": 12, "text": "after the reads"},
            {"type": "message", "id": 13, "text": "   "},  # refused: its error still waits its turn
            {"type": "ping", "id": 14},
        ]
        await client.send_many(requests)
        frames = await collect(client, 14)

        assert [re for re, _ in replies(frames)] == list(range(1, 15))
        assert [t for _, t in replies(frames)] == ["ok"] * 5 + [
            "history_page", "you_are", "joined", "user_list", "room_list", "you_are_in", "ok", "error", "pong"]
        # Each message's echo comes before its ok, and in the order sent.
        said = [f["text"] for f in frames if f["type"] == "message"]
        assert said == [*texts, "after the reads"]
        for i, text in enumerate(texts):
            echo = next(n for n, f in enumerate(frames) if f["type"] == "message" and f["text"] == text)
            ok = next(n for n, f in enumerate(frames) if f.get("re") == i + 1)
            assert echo < ok
        # Reads see the session's own writes.
        page = next(f for f in frames if f.get("re") == 6)
        assert [e["text"] for e in page["events"] if e["type"] == "message"] == texts
        joined = next(f for f in frames if f.get("re") == 8)
        assert [e["text"] for e in joined["history"] if e["type"] == "message"][-5:] == texts
        assert joined["last_seq"] == page["events"][-1]["seq"]


@pytest.mark.parametrize("transport", ["tcp", "ws"])
async def test_a_message_then_leave_still_echoes_to_the_sender(tmp_path: Path, transport: str) -> None:
    async with running_server(tmp_path) as server:
        client = await pipelined_client(transport, server.tcp_port, server.ws_port)
        await client.send_many([{"type": "register", "id": 100, "username": "alice", "password": "pw"},
                                {"type": "create", "id": 101, "room": "general"}])
        await collect(client, 101)
        await client.send_many([{"type": "message", "id": 1, "text": "second"},
                                {"type": "leave", "id": 2},
                                {"type": "history", "id": 3, "room": "general"}])
        frames = await collect(client, 3)
        kinds = [(f["type"], f.get("re")) for f in frames]
        assert kinds.index(("message", None)) < kinds.index(("ok", 1)) < kinds.index(("left", 2))
        # Left the room: its history is no longer hers to read, and that answer comes last.
        assert frames[-1]["type"] == "error" and frames[-1]["code"] == "not_in_room"


@pytest.mark.parametrize("transport", ["tcp", "ws"])
async def test_a_private_message_reaches_its_target_after_the_room_message_before_it(
        tmp_path: Path, transport: str) -> None:
    async with running_server(tmp_path) as server:
        bob = await JsonLines.connect(server.tcp_port)
        await login_json(bob, "bob")
        await bob.request("create", room="general")
        alice = await pipelined_client(transport, server.tcp_port, server.ws_port)
        await alice.send_many([{"type": "register", "id": 100, "username": "alice", "password": "pw"},
                               {"type": "join", "id": 101, "room": "general"}])
        await collect(alice, 101)
        await bob.recv_until(lambda f: f["type"] == "join" and f["user"] == "alice")
        burst = [{"type": "message", "id": i, "text": f"room {i}"} for i in range(1, 21)]
        await alice.send_many([*burst, {"type": "msg", "id": 21, "to": "bob", "text": "private"}])
        frames = await collect(alice, 21)
        assert [re for re, _ in replies(frames)] == list(range(1, 22))

        seen: list[str] = []
        with trio.fail_after(TIMEOUT):
            while "private" not in seen:
                frame = await bob.recv()
                if frame["type"] in ("message", "msg"):
                    seen.append(frame["text"])
        assert seen == [f"room {i}" for i in range(1, 21)] + ["private"]


async def test_text_mode_history_after_a_line_shows_the_line_in_order(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server:
        alice = await TextLines.connect(server.tcp_port)
        await alice.send("/register alice pw")
        await alice.expect("Registration successful")
        await alice.send("/create general")
        await alice.expect("You joined room 'general'")
        await alice.stream.send_all(b"hello world\n/history general\n/whoami\nsecond\n/leave\n")
        lines: list[str] = []
        with trio.fail_after(TIMEOUT):
            while not any("You left room" in line or "left room 'general'" in line for line in lines):
                lines.append(await alice.recv_line())
        said = next(n for n, line in enumerate(lines) if line.endswith("alice: hello world"))
        header = next(n for n, line in enumerate(lines) if "Chat history for 'general'" in line)
        whoami = next(n for n, line in enumerate(lines) if "You are logged in as alice" in line)
        second = next(n for n, line in enumerate(lines) if line.endswith("alice: second"))
        assert said < header < whoami < second
        # The history, between its header and the whoami line, holds the line just said.
        assert any("hello world" in line for line in lines[header + 1:whoami])


async def test_websocket_ping_between_fragments_is_answered_before_the_message(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server:
        stream = await raw_websocket(server.ws_port)
        frames = ServerFrames(stream)
        request = json.dumps({"type": "ping", "id": 1}).encode()
        half = len(request) // 2
        await stream.send_all(client_frame(TEXT, request[:half], fin=False)
                              + client_frame(PING, b"are you there")
                              + client_frame(CONTINUATION, request[half:]))
        first = await frames.next()
        second = await frames.next()
        assert first == (PONG, b"are you there")
        assert second[0] == TEXT and json.loads(second[1]) == {"type": "pong", "re": 1}


async def test_websocket_ping_after_pending_messages_is_not_held_back_but_replies_are(tmp_path: Path) -> None:
    """A control frame is answered at once; a request behind pending writes waits for them."""
    async with running_server(tmp_path) as server:
        async with open_ws(server.ws_port) as ws:
            await login_json(ws, "alice")
            await ws.request("create", room="general")
        stream = await raw_websocket(server.ws_port)
        client = RawWs(stream)
        await client.send_many([{"type": "login", "id": 1, "username": "alice", "password": "pw"},
                                {"type": "join", "id": 2, "room": "general"}])
        with trio.fail_after(TIMEOUT):
            while (await client.recv()).get("re") != 2:
                pass
        messages = b"".join(ws_text(json.dumps({"type": "message", "id": i, "text": f"m{i}"}).encode())
                            for i in range(3, 53))
        await stream.send_all(messages + client_frame(PING, b"p") + ws_text(b'{"type":"ping","id":53}'))
        order: list[object] = []
        with trio.fail_after(TIMEOUT):
            while not order or order[-1] != 53:
                opcode, payload = await client.frames.next()
                if opcode == PONG:
                    order.append("pong-frame")
                elif opcode == TEXT and "re" in (frame := json.loads(payload)):
                    order.append(frame["re"])
        assert order.count("pong-frame") == 1
        assert [x for x in order if x != "pong-frame"] == list(range(3, 54))
        # The control frame's pong is written before the reply to the request that followed it.
        assert order.index("pong-frame") < order.index(53)


async def test_websocket_protocol_error_close_frame_survives_unread_input(tmp_path: Path) -> None:
    """After a protocol error the server drains what the client still sends before closing, so the
    close frame is read rather than lost to a TCP reset."""
    async with running_server(tmp_path) as server:
        stream = await raw_websocket(server.ws_port)
        unmasked = client_frame(TEXT, b'{"type":"ping"}', masked=False)
        garbage = b"\x00" * 300_000
        send_errors: list[Exception] = []

        async def send() -> None:
            try:
                await stream.send_all(unmasked + garbage)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                send_errors.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            # Read only after the server has had every chance to close: a reset would arrive by then.
            await trio.sleep(1.0)
            frames = ServerFrames(stream)
            opcode, payload = await frames.next()
            with trio.fail_after(TIMEOUT):
                rest = frames.buf + b"".join([chunk async for chunk in stream])
        assert opcode == CLOSE
        assert int.from_bytes(payload[:2], "big") == 1002
        assert rest == b""
        # Everything the client wrote was taken: the server closed with nothing unread, so no reset
        # (which loses the close frame on many systems, and breaks a client that is still writing).
        assert send_errors == []
