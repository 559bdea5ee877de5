"""Hostile input against the real server over real sockets.

The fuzz tests drive whole sessions (JSON lines, text mode, WebSocket) with random and mutated frames:
Hypothesis generates each example in a worker thread and hands it to the trio loop that runs the server
(``trio.from_thread.run``), so every example is a fresh connection to one live server. Each must end with
the connection still answering a ping, or closed: never a hang, never an internal error, every malformed
frame answered with an error. The example counts bound the time (a few seconds in all).

Then the specific cases: look-alike user names, terminal escapes on their way to a text-mode reader,
oversize and deeply nested JSON, a frame trickled byte by byte (slowloris), a connection that never logs
in, and a WebSocket client that never reads.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio_websocket
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from utuvox.client import connect
from utuvox.protocol.schema import REQUEST_TYPES
from utuvox.protocol.text_codec import COMMANDS
from utuvox.server.app import Server

from .clients import JsonLines, TextLines, WsJson, client_frame, raw_websocket, ws_text
from .conftest import login_json, open_ws, running_server

TIMEOUT = 5
PROBE = {"type": "ping", "id": "probe"}


def run_examples(strategy: st.SearchStrategy[Any], check: Callable[[Any], Awaitable[None]], examples: int) -> None:
    """In a worker thread: run ``check`` on the trio loop for each example Hypothesis draws."""

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def one(example: Any) -> None:
        trio.from_thread.run(check, example)

    one()


# --- strategies -----------------------------------------------------------------------------------

REQUEST_NAMES = [m.model_fields["type"].default for m in REQUEST_TYPES]
FIELDS = ["id", "room", "text", "username", "password", "to", "limit", "before", "admin_key", "bot", "name",
          "size", "sha256", "upload_id", "offset", "data", "reason", "is_admin", "new_password", "type"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70) | st.floats()
    | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
requests_like = st.builds(
    lambda kind, fields: {"type": kind, **fields},
    st.sampled_from(REQUEST_NAMES) | st.text(max_size=12),
    st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=5),
)


def _mutate(data: bytes, cuts: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for position, byte in cuts:
        if out:
            out[position % len(out)] = byte
    return bytes(out)


def _nested(depth: int, kind: str) -> bytes:
    if kind == "list":
        return b"[" * depth + b"]" * depth
    return b'{"type": "message", "text": ' + b'{"a": ' * depth + b"1" + b"}" * depth + b"}"


json_lines = st.one_of(
    st.binary(max_size=200),  # noise
    requests_like.map(lambda f: json.dumps(f).encode()),  # well-formed JSON, mostly wrong requests
    st.builds(_mutate, requests_like.map(lambda f: json.dumps(f).encode()),  # ...with bytes flipped
              st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4)),
    st.builds(_nested, st.integers(1, 30_000), st.sampled_from(["list", "object"])),  # deep nesting
    st.integers(65_000, 140_000).map(lambda n: b'{"type": "message", "text": "' + b"x" * n + b'"}'),  # oversize
    st.sampled_from([b'{"type": "ping", "id": "\\ud800"}', b'{"type": "login", "username": "a\\u0000"}',
                     b"\xff\xfe{}", b"{}", b"[]", b"null", b'"str"', b'{"type": null}', b'{"type": "ping"}' * 3]),
)


# --- session fuzz: JSON lines over TCP ------------------------------------------------------------


async def test_fuzzed_json_sessions_get_errors_or_are_closed(server: Server) -> None:
    async def check(frames: list[bytes]) -> None:
        client = await JsonLines.connect(server.tcp_port)
        try:
            # A ping first makes this a JSON session whatever the fuzz starts with; the last fuzz frame gets
            # its newline, so the probe is a frame of its own.
            payload = (b'{"type": "ping"}\n' + b"\n".join(frames) + b"\n" + json.dumps(PROBE).encode() + b"\n")
            with contextlib.suppress(trio.BrokenResourceError):
                await client.send(payload)
            replies: list[dict[str, Any]] = []
            with trio.fail_after(TIMEOUT):  # a hang fails the example
                while True:
                    try:
                        frame = await client.recv()
                    except (EOFError, trio.BrokenResourceError, OSError):
                        break  # closed: allowed (a quit, a disconnect for flooding)
                    replies.append(frame)
                    if frame.get("re") == "probe":
                        assert frame["type"] == "pong"
                        break
            assert all(isinstance(r, dict) and "type" in r for r in replies)
            assert not [r for r in replies if r.get("code") == "internal_error"], replies
            lines = payload.split(b"\n")[1:-2]  # each line of the fuzz, as the server splits them
            not_objects = sum(1 for line in lines if not _is_object(line))
            answered = replies[-1].get("re") == "probe" if replies else False
            if answered:  # the session survived: every line that is not even a JSON object got an error
                assert sum(r["type"] == "error" for r in replies) >= not_objects, (lines, replies)
        finally:
            await client.aclose()

    await trio.to_thread.run_sync(run_examples, st.lists(json_lines, min_size=1, max_size=6), check, 120)
    after = await JsonLines.connect(server.tcp_port)
    assert (await after.request("ping"))["type"] == "pong"


def _is_object(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except (ValueError, RecursionError):
        return False


# --- session fuzz: text mode ----------------------------------------------------------------------

text_lines = st.one_of(
    st.text(max_size=120).map(lambda t: t.replace("\n", " ")),
    st.builds(lambda cmd, rest: f"/{cmd} {rest}".replace("\n", " "),
              st.sampled_from(sorted(COMMANDS)) | st.text(max_size=10), st.text(max_size=60)),
    st.sampled_from(["\x1b[2J\x1b[H", "\x1b]0;title\x07", "\x9b31m", "a\rb\x08c", "\u202eevil", "/login \x00 \x00"]),
)


async def test_fuzzed_text_sessions_stay_clean(server: Server) -> None:
    async def check(lines: list[str]) -> None:
        client = await TextLines.connect(server.tcp_port)
        try:
            # "/whoami" first: a line that does not start with "{" makes this a text-mode session at once.
            payload = ("/whoami\n" + "\n".join(lines) + "\n/ping\n").encode("utf-8", "surrogatepass")
            with contextlib.suppress(trio.BrokenResourceError):
                await client.stream.send_all(payload)
            received = b""
            with trio.fail_after(TIMEOUT):
                while b"] Pong." not in received:
                    try:
                        data = await client.stream.receive_some(65536)
                    except (trio.BrokenResourceError, OSError):
                        break
                    if not data:
                        break
                    received += data
            text = received.decode("utf-8")  # always valid UTF-8
            # Nothing that a terminal would act on: no C0 but the newline, no DEL, no C1.
            assert not [c for c in text if (ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) < 0xA0], text
            assert "Internal server error" not in text
        finally:
            await client.aclose()

    await trio.to_thread.run_sync(run_examples, st.lists(text_lines, min_size=1, max_size=6), check, 100)


# --- session fuzz: WebSocket ----------------------------------------------------------------------

ws_messages = st.one_of(
    json_lines.map(lambda b: b.decode("utf-8", "replace")),
    st.binary(max_size=100),  # binary messages where text is expected
    requests_like.map(json.dumps),
)


async def test_fuzzed_websocket_sessions_get_errors_or_are_closed(server: Server) -> None:
    async def check(messages: list[str | bytes]) -> None:
        replies: list[dict[str, Any]] = []
        with trio.fail_after(TIMEOUT):
            try:
                async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{server.ws_port}") as ws:
                    for message in messages:
                        await ws.send_message(message)
                    await ws.send_message(json.dumps(PROBE))
                    while True:
                        frame = json.loads(await ws.get_message())
                        replies.append(frame)
                        if frame.get("re") == "probe":
                            assert frame["type"] == "pong"
                            break
            except trio_websocket.ConnectionClosed:
                pass  # closed (a message over the WebSocket limit, a quit): allowed
        assert not [r for r in replies if r.get("code") == "internal_error"], replies

    await trio.to_thread.run_sync(run_examples, st.lists(ws_messages, min_size=1, max_size=4), check, 40)
    async with open_ws(server.ws_port) as ws:
        assert (await ws.request("ping"))["type"] == "pong"


# --- look-alike names -----------------------------------------------------------------------------

LOOKALIKES = [
    "\u0430dmin",  # Cyrillic a
    "\uff41\uff44\uff4d\uff49\uff4e",  # fullwidth "admin"
    "ad\u200bmin",  # zero-width space
    "admin\u200d",  # zero-width joiner
    "\u202eadmin",  # right-to-left override
    "admi\u0301n",  # combining accent
    "\u0391dmin",  # Greek capital alpha
    "adm\u0131n",  # dotless i
    "admin\u00a0",  # no-break space
    "admin\n",
]


async def test_look_alike_names_are_refused(server: Server, connect_json, connect_text) -> None:
    js = await connect_json()
    await login_json(js, "admln")  # "admin" itself is reserved for the server
    for name in LOOKALIKES:
        reply = await js.request("register", username=name, password="pw")
        assert reply["type"] == "error" and reply["code"] == "bad_request", (name, reply)
        assert "letters, digits" in reply["message"]
        other = await connect_json()
        assert (await other.request("login", username=name, password="pw"))["code"] == "bad_request"
    for name in ("ADMLN", "Admln", "aDmLn"):  # case does not make a new name
        other = await connect_json()
        assert (await other.request("register", username=name, password="pw"))["code"] == "name_taken"
    for name in ("ADMIN", "Admin", "aDmIn"):  # nor does it get around a reserved one
        other = await connect_json()
        reply = await other.request("register", username=name, password="pw")
        assert reply["code"] == "bad_request" and "reserved" in reply["message"], reply
    await js.request("create", room="general")
    assert (await js.request("join", room="g\u0435neral"))["code"] == "bad_request"  # rooms too
    text = await connect_text()
    await text.recv_line()
    await text.send("/register \u0430dmin pw")
    assert "Error: Invalid username: names are 1 to 32 characters" in await text.recv_line()


# --- terminal escapes -----------------------------------------------------------------------------


async def test_escapes_never_reach_a_text_mode_terminal(server: Server, connect_json, connect_text) -> None:
    evil = "\x1b[2J\x1b]0;owned\x07red\x1b[31m\r\x08 \x9b6n \u0085end"
    js = await connect_json()
    await login_json(js, "mallory")
    await js.request("create", room="general")
    text = await connect_text()
    await text.recv_line()
    await text.send("/register victim pw")
    await text.send("/join general")
    await text.expect("You joined room 'general'")
    assert (await js.request("message", text=evil))["type"] == "ok"
    assert (await js.request("msg", to="victim", text=evil))["type"] == "ok"
    await text.send("/history general")
    await text.send("/ping")
    raw = text.buf  # what the line reader already took in
    with trio.fail_after(TIMEOUT):
        while b"] Pong." not in raw:
            raw += await text.stream.receive_some(65536)
    shown = raw.decode()
    assert "mallory: \ufffd[2J\ufffd]0;owned\ufffdred\ufffd[31m\ufffd\ufffd \ufffd6n \ufffdend" in shown
    assert "[private] mallory: " in shown and shown.count("owned") == 3  # live, private, and in history
    assert not [c for c in shown if (ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) < 0xA0]
    # JSON clients get the text exactly as sent: escaping is the text renderer's job.
    history = await js.request("history", room="general")
    assert history["events"][-1]["text"] == evil


# --- oversize and deeply nested JSON --------------------------------------------------------------


async def test_oversize_and_deeply_nested_json(server: Server, connect_json) -> None:
    js = await connect_json()
    assert (await js.request("ping"))["type"] == "pong"  # a JSON session (a first "[" would mean text mode)
    await js.send(b"[" * 70_000 + b"]" * 4_000 + b"\n")  # over the frame limit, and deep
    assert (await js.recv())["code"] == "frame_too_large"
    await js.send(b"[" * 30_000 + b"]" * 30_000 + b"\n")
    assert (await js.recv())["code"] == "bad_json"
    await js.send(b'{"type": "message", "id": 7, "text": ' + b'{"a": ' * 5_000 + b"1" + b"}" * 5_001 + b"\n")
    reply = await js.recv()
    assert reply["code"] in ("bad_json", "bad_request")
    assert (await js.request("ping"))["type"] == "pong"  # the session goes on
    async with open_ws(server.ws_port) as ws:
        await ws.send("[" * 30_000 + "]" * 30_000)
        assert (await ws.recv())["code"] == "bad_json"
        await ws.send(json.dumps({"type": "message", "text": "x" * 100_000}))
        assert (await ws.recv())["code"] == "frame_too_large"
        assert (await ws.request("ping"))["type"] == "pong"
    async with open_ws(server.ws_port) as ws:  # beyond what the WebSocket layer takes at all: closed
        # The server may close (1009, too big) as soon as it reads the frame's length, while the
        # client is still sending the rest.
        with pytest.raises(trio_websocket.ConnectionClosed) as closed:
            await ws.send("x" * (server.settings.max_frame_bytes * 4 + 1))
            await ws.recv()
        assert closed.value.reason.code == 1009
    assert (await js.request("ping"))["type"] == "pong"


# --- slowloris, and connections that never log in --------------------------------------------------


async def test_a_frame_trickled_byte_by_byte_is_cut_off(tmp_path: Path) -> None:
    async with running_server(tmp_path, frame_timeout=1.0) as srv:
        slow = await JsonLines.connect(srv.tcp_port)
        await login_json(slow, "slow")
        steady = await JsonLines.connect(srv.tcp_port)
        await login_json(steady, "steady")

        async def trickle(client: JsonLines, data: bytes, gap: float) -> None:
            with contextlib.suppress(trio.BrokenResourceError, OSError):
                for byte in data:
                    await client.stream.send_all(bytes([byte]))
                    await trio.sleep(gap)

        async with trio.open_nursery() as nursery:
            # Slow but whole frames are fine: each of these takes 0.3 s, five of them 1.5 s.
            async def steady_lines() -> None:
                for i in range(5):
                    await trickle(steady, json.dumps({"type": "ping", "id": i}).encode() + b"\n", 0.3 / 25)
            nursery.start_soon(steady_lines)
            nursery.start_soon(trickle, slow, b'{"type": "ping", "id": "never", "padding": "' + b"z" * 200, 0.05)
            bye = await slow.recv_until(lambda f: f.get("type") == "bye", timeout=10)
            assert bye["code"] == "timeout" and "took longer than 1 s to arrive" in bye["reason"]
            assert await slow.closed()
        pongs = [await steady.recv() for _ in range(5)]
        assert [p["re"] for p in pongs] == [0, 1, 2, 3, 4]

        text = await TextLines.connect(srv.tcp_port)
        await text.recv_line()
        await text.stream.send_all(b"/log")  # and never the rest of the line
        assert "Disconnected: A frame took longer" in await text.expect("Disconnected", timeout=10)

        # Over WebSocket: the first fragment of a message, and never the last one.
        ws = await raw_websocket(srv.ws_port)
        await ws.send_all(ws_text(b'{"type": "register", "username": "wsslow", "password": "pw"}'))
        await ws.send_all(client_frame(0x1, b'{"ty', fin=False))  # the first fragment: more to come
        received = b""
        with trio.fail_after(10):
            while b"took longer than 1 s to arrive" not in received:
                data = await ws.receive_some(65536)
                assert data, "closed without a goodbye"
                received += data
        await ws.aclose()


async def test_connections_that_never_log_in_are_closed(tmp_path: Path) -> None:
    async with running_server(tmp_path, login_timeout=0.5) as srv:
        idle, member = await JsonLines.connect(srv.tcp_port), await JsonLines.connect(srv.tcp_port)
        assert (await idle.request("ping"))["type"] == "pong"
        await login_json(member, "member")
        bye = await idle.recv_until(lambda f: f.get("type") == "bye", timeout=5)
        assert bye["code"] == "timeout" and "Not logged in within 0.5 s" in bye["reason"]
        assert await idle.closed()
        await trio.sleep(0.5)
        assert (await member.request("ping"))["type"] == "pong"  # logged in: stays


async def test_silent_connections_are_closed_when_asked_for(tmp_path: Path) -> None:
    async with running_server(tmp_path, idle_timeout=0.6) as srv:
        silent, chatty = await JsonLines.connect(srv.tcp_port), await JsonLines.connect(srv.tcp_port)
        await login_json(silent, "silent")
        await login_json(chatty, "chatty")
        for _ in range(6):  # 1.2 s of a request every 0.2 s
            await trio.sleep(0.2)
            assert (await chatty.request("ping"))["type"] == "pong"
        bye = await silent.recv_until(lambda f: f.get("type") == "bye", timeout=5)
        assert bye["code"] == "timeout" and "Nothing received for 0.6 s" in bye["reason"]


# --- a WebSocket client that never reads ----------------------------------------------------------


async def test_a_websocket_client_that_never_reads_is_cut_off(tmp_path: Path) -> None:
    async with running_server(tmp_path, send_queue_frames=200) as srv:
        sender = await JsonLines.connect(srv.tcp_port)
        await login_json(sender, "alice")
        await sender.request("create", room="general")
        stuck = await raw_websocket(srv.ws_port, receive_buffer=4096)
        await stuck.send_all(ws_text(b'{"type": "register", "username": "stuck", "password": "pw"}'))
        await stuck.send_all(ws_text(b'{"type": "join", "room": "general"}'))
        with trio.fail_after(TIMEOUT):
            while not any(s.user and s.user.name == "stuck" and s.rooms for s in srv.chat.all_sessions()):
                await trio.sleep(0.01)
        # From here the WebSocket client reads nothing; alice goes on talking.
        body = "z" * 3000
        with trio.fail_after(30):
            sent = 0
            while any(s.transport == "ws" for s in srv.chat.all_sessions()):
                for _ in range(50):
                    await sender.send({"type": "message", "text": f"{sent} {body}", "id": sent})
                    sent += 1
                while (await sender.recv()).get("re") != sent - 1:
                    pass
        members = await sender.request("list_users_in_room")
        assert [u["name"] for u in members["users"]] == ["alice"]
        assert (await sender.request("message", text="still going"))["type"] == "ok"
        await stuck.aclose()


async def test_a_websocket_that_does_not_answer_pings_is_dropped(tmp_path: Path) -> None:
    async with running_server(tmp_path, keepalive_interval=0.3, keepalive_timeout=1.0) as srv:
        mute = await raw_websocket(srv.ws_port)
        await mute.send_all(ws_text(json.dumps({"type": "register", "username": "mute", "password": "pw"}).encode()))
        received = b""
        with trio.fail_after(TIMEOUT):
            while b"\x89" not in received:  # a ping frame (opcode 9), which this client leaves unanswered
                received += await mute.receive_some(65536)
        with trio.fail_after(TIMEOUT):
            while any(s.transport == "ws" for s in srv.chat.all_sessions()):
                await trio.sleep(0.05)
        async with open_ws(srv.ws_port) as ws:  # a real client answers pings and stays
            await login_json(ws, "talker")
            await trio.sleep(1.5)
            assert (await ws.request("ping"))["type"] == "pong"
        await mute.aclose()


async def test_quiet_json_clients_get_keepalives_and_text_mode_sees_nothing(tmp_path: Path) -> None:
    async with running_server(tmp_path, keepalive_interval=0.3) as srv:
        js = await JsonLines.connect(srv.tcp_port)
        await login_json(js, "quiet")
        keepalive = await js.recv(timeout=5)
        assert keepalive["type"] == "keepalive" and keepalive["ts"].endswith("Z") and set(keepalive) == {"type", "ts"}
        ws_client: WsJson
        async with open_ws(srv.ws_port) as ws_client:
            await login_json(ws_client, "quiet-ws")
            text = await TextLines.connect(srv.tcp_port)
            await text.recv_line()  # the welcome
            await text.send("/register quiet-text pw")
            await text.recv_line()
            with trio.move_on_after(1.0):
                line = await text.recv_line(timeout=2)
                raise AssertionError(f"text mode got {line!r}")
            assert (await ws_client.request("ping"))["type"] == "pong"
        # The SDK takes keepalives in and never hands them to the application.
        async with connect(f"tcp://127.0.0.1:{srv.tcp_port}", keepalive=None) as sdk:
            await sdk.register("quiet-sdk", "pw")
            await trio.sleep(1.0)
            assert sdk.connected and sdk.drain_events() == []
