"""Raw test clients that share no code with the server's transports: a TCP JSON-lines client, a TCP
text-mode client (as ``nc`` would be) and a WebSocket client."""

from __future__ import annotations

import base64
import json
import os
import socket
from typing import Any

import trio
import trio_websocket

TIMEOUT = 5


class _JsonRequests:
    """Reply matching of the raw JSON test clients: a fresh id per request, frames skipped until the one
    that carries it. (These clients share no code with the SDK's ClientProtocol on purpose: they check the
    server from outside, byte for byte, and may send what no SDK would.)"""

    _next_id = 0

    async def send(self, frame: Any) -> None:
        raise NotImplementedError

    async def recv(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        raise NotImplementedError

    async def recv_until(self, pred: Any, timeout: float = TIMEOUT) -> dict[str, Any]:
        """Skip frames until one satisfies ``pred`` (e.g. ``lambda f: f.get('re') == 3``)."""
        with trio.fail_after(timeout):
            while True:
                frame = await self.recv()
                if pred(frame):
                    return frame

    async def request(self, type_: str, **fields: Any) -> dict[str, Any]:
        """Send a request with a fresh id and return the reply carrying that id."""
        self._next_id += 1
        rid = self._next_id
        await self.send({"type": type_, "id": rid, **fields})
        return await self.recv_until(lambda f: f.get("re") == rid)


class JsonLines(_JsonRequests):
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = b""

    @classmethod
    async def connect(cls, port: int) -> JsonLines:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def send(self, frame: dict[str, Any] | bytes) -> None:
        data = frame if isinstance(frame, bytes) else json.dumps(frame).encode() + b"\n"
        await self.stream.send_all(data)

    async def recv(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        with trio.fail_after(timeout):
            while b"\n" not in self.buf:
                data = await self.stream.receive_some(65536)
                if not data:
                    raise EOFError("connection closed")
                self.buf += data
        line, _, self.buf = self.buf.partition(b"\n")
        return json.loads(line)

    async def closed(self, timeout: float = TIMEOUT) -> bool:
        """Read until the server closes the connection; True if it did within the timeout."""
        with trio.move_on_after(timeout):
            try:
                while await self.stream.receive_some(65536):
                    pass
            except (trio.BrokenResourceError, OSError):
                pass
            return True
        return False

    async def aclose(self) -> None:
        await self.stream.aclose()


class TextLines:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = b""

    @classmethod
    async def connect(cls, port: int) -> TextLines:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def send(self, line: str) -> None:
        await self.stream.send_all(line.encode() + b"\n")

    async def recv_line(self, timeout: float = TIMEOUT) -> str:
        with trio.fail_after(timeout):
            while b"\n" not in self.buf:
                data = await self.stream.receive_some(65536)
                if not data:
                    raise EOFError("connection closed")
                self.buf += data
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode()

    async def expect(self, fragment: str, timeout: float = TIMEOUT) -> str:
        """Read lines until one contains ``fragment``; return it."""
        with trio.fail_after(timeout):
            while True:
                line = await self.recv_line()
                if fragment in line:
                    return line

    async def aclose(self) -> None:
        await self.stream.aclose()


class WsJson(_JsonRequests):
    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self.ws = ws

    async def send(self, frame: dict[str, Any] | str) -> None:
        await self.ws.send_message(frame if isinstance(frame, str) else json.dumps(frame))

    async def recv(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        with trio.fail_after(timeout):
            return json.loads(await self.ws.get_message())



async def raw_websocket(port: int, *, receive_buffer: int | None = None) -> trio.SocketStream:
    """A WebSocket connection made by hand, so that nothing reads or answers behind the test's back."""
    sock = trio.socket.socket()
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    await sock.connect(("127.0.0.1", port))
    stream = trio.SocketStream(sock)
    key = base64.b64encode(os.urandom(16)).decode()
    await stream.send_all((f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade"
                           f"\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    with trio.fail_after(TIMEOUT):
        while b"\r\n\r\n" not in head:
            head += await stream.receive_some(1)
    assert head.startswith(b"HTTP/1.1 101")
    return stream


def client_frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bytes = b"\0\0\0\0",
                 masked: bool = True, rsv: int = 0) -> bytes:
    """A client frame built by hand, independently of the server's code (the default zero mask leaves
    the payload as it is)."""
    n = len(payload)
    first = (0x80 if fin else 0) | rsv << 4 | opcode
    mask_bit = 0x80 if masked else 0
    if n < 126:
        head = bytes((first, mask_bit | n))
    elif n < 65536:
        head = bytes((first, mask_bit | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((first, mask_bit | 127)) + n.to_bytes(8, "big")
    if not masked:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def ws_text(payload: bytes, *, mask: bytes = b"\0\0\0\0") -> bytes:
    """A masked client text frame."""
    return client_frame(0x1, payload, mask=mask)


class ServerFrames:
    """Reads the server's (unmasked) frames off a hand-made WebSocket: (opcode, payload) pairs."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = b""

    async def _need(self, n: int) -> None:
        while len(self.buf) < n:
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError("the server closed the connection")
            self.buf += data

    async def next(self, timeout: float = TIMEOUT) -> tuple[int, bytes]:
        with trio.fail_after(timeout):
            await self._need(2)
            opcode, n = self.buf[0] & 0x0F, self.buf[1] & 0x7F
            start = 2
            if n >= 126:
                width = 2 if n == 126 else 8
                await self._need(2 + width)
                n, start = int.from_bytes(self.buf[2:2 + width], "big"), 2 + width
            await self._need(start + n)
            payload, self.buf = self.buf[start:start + n], self.buf[start + n:]
            return opcode, payload


async def register_accounts(port: int, admin_key: str, accounts: dict[str, str]) -> JsonLines:
    """Register ``accounts`` (name: password) on the server at ``port``, and an admin ``root`` whose JSON
    connection is returned (still open, for bans and the like)."""
    admin = await JsonLines.connect(port)
    reply = await admin.request("register", username="root", password="pw", admin_key=admin_key)
    assert reply["type"] == "logged_in", reply
    for name, secret in accounts.items():
        client = await JsonLines.connect(port)
        reply = await client.request("register", username=name, password=secret)
        assert reply["type"] == "logged_in", reply
        await client.aclose()
    return admin
