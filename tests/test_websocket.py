"""The server's WebSocket framing: the pure protocol core (any chunking and fragmentation gives the
same messages, every violation its close code, the opening handshake) and the live server spoken to
with frames made by hand."""

from __future__ import annotations

import base64
import json
import os
import random
import socket

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from utuvox.server import websocket as ws
from utuvox.server.web import Site, load_assets

from .clients import ServerFrames, client_frame, raw_websocket, ws_text

MAX = 4096


def read_all(data: bytes, chunk_sizes: list[int]) -> list[tuple[int, str | bytes]]:
    reader = ws.FrameReader(max_message=MAX)
    out: list[tuple[int, str | bytes]] = []
    pos = 0
    sizes = iter(chunk_sizes)
    while pos < len(data):
        size = next(sizes, len(data))
        reader.feed(data[pos:pos + size])
        pos += size
        while (item := reader.next()) is not None:
            out.append(item)
    assert reader.pending_bytes == 0
    return out


messages = st.lists(
    st.tuples(
        st.one_of(st.text(max_size=300).map(lambda t: (ws.TEXT, t)),
                  st.binary(max_size=300).map(lambda b: (ws.BINARY, b))),
        st.integers(min_value=1, max_value=4),  # fragments
        st.binary(min_size=4, max_size=4),  # mask
        st.booleans(),  # a ping after the first fragment
    ),
    max_size=12,
)


@settings(max_examples=200, deadline=None)
@given(messages, st.lists(st.integers(min_value=1, max_value=64), max_size=200))
def test_any_chunking_and_fragmentation_gives_the_same_messages(msgs, chunk_sizes) -> None:
    stream = b""
    expected: list[tuple[int, str | bytes]] = []
    for (opcode, value), fragments, mask, ping in msgs:
        payload = value.encode() if isinstance(value, str) else value
        cut = [payload[i * len(payload) // fragments:(i + 1) * len(payload) // fragments] for i in range(fragments)]
        for i, piece in enumerate(cut):
            stream += client_frame(opcode if i == 0 else ws.CONTINUATION, piece, fin=i == fragments - 1, mask=mask)
            if ping and i == 0:  # in the middle of the message, or right after a message of one frame
                stream += client_frame(ws.PING, b"hi", mask=mask)
        if ping and fragments > 1:
            expected.append((ws.PING, b"hi"))
        expected.append((opcode, value))
        if ping and fragments == 1:
            expected.append((ws.PING, b"hi"))
    assert read_all(stream, chunk_sizes) == expected


def test_a_character_split_across_fragments_is_still_valid_text() -> None:
    snowman = "☃".encode()
    data = client_frame(ws.TEXT, snowman[:1], fin=False) + client_frame(ws.CONTINUATION, snowman[1:])
    assert read_all(data, []) == [(ws.TEXT, "☃")]


@pytest.mark.parametrize(("data", "code"), [
    (client_frame(ws.TEXT, b"hi", masked=False), ws.PROTOCOL_ERROR),
    (client_frame(ws.TEXT, b"hi", rsv=4), ws.PROTOCOL_ERROR),
    (client_frame(0x3, b"hi"), ws.PROTOCOL_ERROR),
    (client_frame(0xB, b"hi"), ws.PROTOCOL_ERROR),
    (client_frame(ws.PING, b"hi", fin=False), ws.PROTOCOL_ERROR),
    (client_frame(ws.PING, b"x" * 126), ws.PROTOCOL_ERROR),
    (client_frame(ws.CONTINUATION, b"hi"), ws.PROTOCOL_ERROR),
    (client_frame(ws.TEXT, b"a", fin=False) + client_frame(ws.TEXT, b"b"), ws.PROTOCOL_ERROR),
    (client_frame(ws.TEXT, b"\xff\xfe"), ws.INVALID_DATA),
    (client_frame(ws.TEXT, b"a" * 3000, fin=False) + client_frame(ws.CONTINUATION, b"b" * 3000), ws.TOO_BIG),
])
def test_each_violation_fails_with_its_close_code(data: bytes, code: int) -> None:
    reader = ws.FrameReader(max_message=MAX)
    reader.feed(data)
    with pytest.raises(ws.WebSocketError) as failed:
        while reader.next() is not None:
            pass
    assert failed.value.code == code


def test_a_message_too_big_is_refused_from_its_header_alone() -> None:
    reader = ws.FrameReader(max_message=MAX)
    reader.feed(client_frame(ws.TEXT, b"x" * (MAX + 1))[:14])  # the header only; the payload never came
    with pytest.raises(ws.WebSocketError) as failed:
        reader.next()
    assert failed.value.code == ws.TOO_BIG


@pytest.mark.parametrize(("payload", "answer"), [
    (b"", 1000), (b"\x03", 1002), (b"\x03\xe8bye", 1000), (b"\x0f\xa0app", 4000),
    (b"\x03\xed", 1002), (b"\x03\xe7", 1002), (b"\x03\xe8\xff", 1007),
])
def test_a_close_frame_is_answered_with_its_own_code_or_a_protocol_error(payload: bytes, answer: int) -> None:
    assert ws.close_code(payload) == answer


REQUEST = (b"GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def test_the_handshake_answers_with_the_key_of_the_rfc_example_and_keeps_what_follows() -> None:
    reader = ws.HandshakeReader()
    assert reader.feed(REQUEST[:40]) is None
    answer = reader.feed(REQUEST[40:] + b"\x81\x80")
    assert answer is not None and answer.accepted
    assert answer.response.startswith(b"HTTP/1.1 101 ")
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in answer.response
    assert answer.leftover == b"\x81\x80"


@pytest.mark.parametrize(("request_head", "status", "header"), [
    (REQUEST.replace(b"GET", b"POST"), b"405", b"Allow: GET"),
    (REQUEST.replace(b"Upgrade: websocket\r\n", b""), b"426", b"Upgrade: websocket"),
    (REQUEST.replace(b"Connection: Upgrade", b"Connection: keep-alive"), b"426", b"Upgrade: websocket"),
    (REQUEST.replace(b"Version: 13", b"Version: 8"), b"426", b"Sec-WebSocket-Version: 13"),
    (REQUEST.replace(b"dGhlIHNhbXBsZSBub25jZQ==", b"short"), b"400", b"Content-Length"),
    (b"\x16\x03\x01\x02\x00garbage\r\n\r\n", b"400", b"Content-Length"),
])
def test_a_request_that_is_not_a_websocket_upgrade_is_refused(request_head: bytes, status: bytes, header: bytes):
    answer = ws.HandshakeReader().feed(request_head)
    assert answer is not None and not answer.accepted
    assert answer.response.split(b" ")[1] == status
    assert header in answer.response


def test_a_request_head_that_never_ends_is_refused() -> None:
    reader = ws.HandshakeReader()
    answer = None
    for _ in range(100):
        answer = reader.feed(b"GET / HTTP/1.1\r\nX-Filler: " + b"a" * 1000 + b"\r\n")
        if answer is not None:
            break
    assert answer is not None and not answer.accepted
    assert answer.response.startswith(b"HTTP/1.1 431 Request Header Fields Too Large")


# --- the live server --------------------------------------------------------------------------------


async def frames_until_close(frames: ServerFrames) -> list[tuple[int, bytes]]:
    seen = []
    while True:
        opcode, payload = await frames.next()
        seen.append((opcode, payload))
        if opcode == ws.CLOSE:
            return seen


async def test_plain_http_on_the_websocket_port_gets_the_web_client_and_other_upgrades_426(server) -> None:
    async def ask(head: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", server.ws_port), timeout=5) as sock:
            sock.sendall(head)
            answer = b""
            while chunk := await trio.to_thread.run_sync(sock.recv, 4096):
                answer += chunk
        return answer

    page = await ask(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert page.startswith(b"HTTP/1.1 200 OK\r\n") and b"<title>UtuVox</title>" in page
    answer = await ask(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 426 Upgrade Required\r\n")
    assert answer.endswith(b"This port speaks WebSocket only (ws:// or wss://).\n")


async def test_fragmented_and_binary_messages_and_pings_on_a_live_connection(server) -> None:
    stream = await raw_websocket(server.ws_port)
    frames = ServerFrames(stream)
    request = json.dumps({"type": "register", "id": 1, "username": "frag", "password": "pw"}).encode()
    await stream.send_all(client_frame(ws.TEXT, request[:10], fin=False)
                          + client_frame(ws.PING, b"between")
                          + client_frame(ws.CONTINUATION, request[10:20], fin=False)
                          + client_frame(ws.CONTINUATION, request[20:])
                          + client_frame(ws.BINARY, b'{"type": "whoami", "id": 2}'))
    got = [await frames.next() for _ in range(3)]
    assert (ws.PONG, b"between") in got
    replies = [json.loads(payload) for opcode, payload in got if opcode == ws.TEXT]
    assert [r["type"] for r in replies] == ["logged_in", "you_are"] and replies[1]["re"] == 2
    await stream.aclose()


async def test_pings_back_to_back_get_one_pong_for_the_last_of_them(server) -> None:
    stream = await raw_websocket(server.ws_port)
    frames = ServerFrames(stream)
    await stream.send_all(b"".join(client_frame(ws.PING, str(i).encode()) for i in range(500))
                          + client_frame(ws.TEXT, b'{"type": "ping", "id": 1}'))
    pongs: list[bytes] = []
    answered = False
    while not (answered and pongs and pongs[-1] == b"499"):
        opcode, payload = await frames.next()
        if opcode == ws.PONG:
            pongs.append(payload)
        else:
            answered = answered or json.loads(payload) == {"type": "pong", "re": 1}
    assert len(pongs) < 50  # one per read of the server's, not one per ping
    await stream.aclose()


@pytest.mark.parametrize(("bad", "code"), [
    (client_frame(ws.TEXT, b'{"type": "\xff"}'), ws.INVALID_DATA),
    (client_frame(ws.TEXT, b'{"type": "ping"}', masked=False), ws.PROTOCOL_ERROR),
])
async def test_a_protocol_violation_closes_with_its_code(server, bad: bytes, code: int) -> None:
    stream = await raw_websocket(server.ws_port)
    await stream.send_all(bad)
    seen = await frames_until_close(ServerFrames(stream))
    assert int.from_bytes(seen[-1][1][:2], "big") == code
    with trio.fail_after(5):
        assert await stream.receive_some(100) == b""  # and the server closes the TCP connection
    await stream.aclose()


async def test_the_close_handshake_both_ways(server) -> None:
    # The client closes: the server answers with the same code and closes the TCP connection.
    stream = await raw_websocket(server.ws_port)
    await stream.send_all(client_frame(ws.CLOSE, (4000).to_bytes(2, "big") + b"done"))
    seen = await frames_until_close(ServerFrames(stream))
    assert seen[-1] == (ws.CLOSE, (4000).to_bytes(2, "big"))
    with trio.fail_after(5):
        assert await stream.receive_some(100) == b""
    await stream.aclose()
    # The server closes (a quit): the goodbye, then a close frame; the client's answer ends it at once.
    stream = await raw_websocket(server.ws_port)
    frames = ServerFrames(stream)
    await stream.send_all(ws_text(b'{"type": "quit"}', mask=os.urandom(4)))
    seen = await frames_until_close(frames)
    assert json.loads(seen[0][1])["type"] == "bye"
    assert seen[-1] == (ws.CLOSE, (1000).to_bytes(2, "big"))
    await stream.send_all(client_frame(ws.CLOSE, (1000).to_bytes(2, "big")))
    with trio.fail_after(0.4):  # well inside the half-second the server would otherwise wait
        assert await stream.receive_some(100) == b""
    await stream.aclose()


async def test_frames_sent_right_behind_the_upgrade_request_are_not_lost(server) -> None:
    key = base64.b64encode(os.urandom(16)).decode()
    stream = await trio.open_tcp_stream("127.0.0.1", server.ws_port)
    await stream.send_all(f"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                          f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
                          + client_frame(ws.TEXT, b'{"type": "ping", "id": "early"}'))
    head = b""
    with trio.fail_after(5):
        while b"\r\n\r\n" not in head:
            head += await stream.receive_some(1)
    assert head.startswith(b"HTTP/1.1 101 ")
    opcode, payload = await ServerFrames(stream).next()
    assert opcode == ws.TEXT and json.loads(payload) == {"type": "pong", "re": "early"}
    await stream.aclose()


@pytest.mark.parametrize("size", [0, 1, 5, 1023, 1024, 1027, 70_000])
def test_unmasking_gives_back_the_payload_at_every_size(size: int) -> None:
    payload, key = os.urandom(size), os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    assert ws.unmask(masked, key) == payload


@settings(max_examples=500, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=30))
def test_any_bytes_give_frames_or_a_protocol_error_and_nothing_else(chunks: list[bytes]) -> None:
    reader = ws.FrameReader(max_message=MAX)
    try:
        for chunk in chunks:
            reader.feed(chunk)
            while (item := reader.next()) is not None:
                opcode, payload = item
                assert opcode in (ws.TEXT, ws.BINARY, ws.PING, ws.PONG, ws.CLOSE)
                assert isinstance(payload, str if opcode == ws.TEXT else bytes)
    except ws.WebSocketError as exc:
        assert exc.code in (ws.PROTOCOL_ERROR, ws.INVALID_DATA, ws.TOO_BIG)
    assert reader.pending_bytes >= 0


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_any_request_head_gets_an_answer_or_a_wait_for_more(data: bytes) -> None:
    for reader in (ws.HandshakeReader(), ws.HandshakeReader(SITE)):
        answer = reader.feed(data)
        if answer is None:
            continue
        assert answer.response.startswith(b"HTTP/1.1 ")
        assert answer.accepted == answer.response.startswith(b"HTTP/1.1 101 ")


SITE = Site(load_assets())


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([b"GET", b"HEAD", b"POST"]), st.text(max_size=60).map(str.encode),
       st.lists(st.tuples(st.sampled_from([b"Host", b"Origin", b"Upgrade", b"Connection", b"If-None-Match",
                                           b"Accept-Encoding"]), st.binary(max_size=40)), max_size=5))
def test_any_plain_request_gets_a_page_or_a_clear_refusal(method: bytes, target: bytes,
                                                          headers: list[tuple[bytes, bytes]]) -> None:
    head = method + b" /" + target.replace(b" ", b"") + b" HTTP/1.1\r\n"
    head += b"".join(name + b": " + value.replace(b"\r", b"").replace(b"\n", b"") + b"\r\n" for name, value in headers)
    answer = ws.HandshakeReader(SITE).feed(head + b"\r\n")
    assert answer is not None and not answer.accepted
    status = int(answer.response.split(b" ")[1])
    assert status in (200, 304, 400, 404, 405, 426), answer.response[:200]
    if status == 200:
        assert b"Content-Security-Policy: default-src 'self'" in answer.response


async def test_garbage_after_the_upgrade_ends_only_that_connection(server, connect_json) -> None:
    rng = random.Random(6455)
    for _ in range(20):
        stream = await raw_websocket(server.ws_port)
        garbage = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
        await stream.send_all(garbage)
        await stream.send_eof()
        with trio.fail_after(5):  # the server ends the connection (with a close frame, or at our end of input)
            while await stream.receive_some(65536):
                pass
        await stream.aclose()
    client = await connect_json()
    assert (await client.request("ping"))["type"] == "pong"
