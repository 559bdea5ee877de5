"""Raw test clients that share no code with the server's transports: a TCP JSON-lines client, a TCP
text-mode client (as ``nc`` would be) and a WebSocket client."""

from __future__ import annotations

import json
from typing import Any

import trio
import trio_websocket

TIMEOUT = 5


class JsonLines:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = b""
        self._next_id = 0

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


class WsJson:
    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self.ws = ws
        self._next_id = 0

    async def send(self, frame: dict[str, Any] | str) -> None:
        await self.ws.send_message(frame if isinstance(frame, str) else json.dumps(frame))

    async def recv(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        with trio.fail_after(timeout):
            return json.loads(await self.ws.get_message())

    async def recv_until(self, pred: Any, timeout: float = TIMEOUT) -> dict[str, Any]:
        with trio.fail_after(timeout):
            while True:
                frame = await self.recv()
                if pred(frame):
                    return frame

    async def request(self, type_: str, **fields: Any) -> dict[str, Any]:
        self._next_id += 1
        rid = self._next_id
        await self.send({"type": type_, "id": rid, **fields})
        return await self.recv_until(lambda f: f.get("re") == rid)
