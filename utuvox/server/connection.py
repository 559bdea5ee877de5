"""The one tiny connection interface every transport is adapted to: receive a frame, send frames,
close. TCP (and later the admin socket) frame by lines; WebSocket by messages."""

from __future__ import annotations

from collections import deque
from typing import Protocol

import trio
import trio_websocket

from utuvox.protocol import Code, ProtocolError


class Connection(Protocol):
    transport: str
    address: str

    async def receive(self) -> bytes | str | None:
        """The next frame, or ``None`` once the peer has gone. Raises ``ProtocolError`` for a frame over
        the size limit; the connection stays usable."""

    async def send_batch(self, frames: list[bytes]) -> None:
        """Send encoded frames (each a complete line) in as few writes as the transport allows."""

    async def aclose(self) -> None: ...


class LineConnection:
    """Newline-framed JSON or text over a byte stream (TCP, Unix socket).

    Each read is split into lines at once (``bytes.split`` in C) and the lines are handed out from a
    queue: a pipelining client sends hundreds of frames per read, and per-line buffer surgery would
    cost more than the frames themselves.
    """

    def __init__(self, stream: trio.abc.Stream, transport: str, address: str, max_frame: int,
                 initial: bytes = b"") -> None:
        self.stream = stream
        self.transport = transport
        self.address = address
        self._max = max_frame
        self._lines: deque[bytes] = deque()
        self._partial = b""  # the start of a line whose newline has not arrived yet
        self._discarding = False  # skipping the rest of an oversize line
        self._eof = False
        if initial:
            self._feed(initial)

    def _too_large(self) -> ProtocolError:
        return ProtocolError(Code.FRAME_TOO_LARGE, f"Frame larger than {self._max} bytes; discarded.")

    def _feed(self, data: bytes) -> None:
        parts = (self._partial + data).split(b"\n") if self._partial else data.split(b"\n")
        self._partial = parts.pop()
        if self._discarding and parts:
            parts[0] = b""  # the tail of the oversize line: dropped, marked by an empty entry
        self._lines.extend(parts)

    async def receive(self) -> bytes | None:
        while True:
            if self._lines:
                line = self._lines.popleft()
                if self._discarding:
                    self._discarding = False
                    continue
                if len(line) > self._max:
                    raise self._too_large()
                return line
            if len(self._partial) > self._max:
                self._partial = b""
                if not self._discarding:
                    self._discarding = True
                    raise self._too_large()
            if self._eof:
                return None
            try:
                data = await self.stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                data = b""
            if not data:
                self._eof = True
                if self._partial and not self._discarding:
                    line, self._partial = self._partial, b""  # a last line without its newline still counts
                    self._lines.append(line)
                continue
            self._feed(data)

    async def send_batch(self, frames: list[bytes]) -> None:
        await self.stream.send_all(frames[0] if len(frames) == 1 else b"".join(frames))

    async def aclose(self) -> None:
        await self.stream.aclose()


class WebSocketConnection:
    """One JSON frame per WebSocket text message."""

    transport = "ws"

    def __init__(self, ws: trio_websocket.WebSocketConnection, address: str, max_frame: int) -> None:
        self.ws = ws
        self.address = address
        self._max = max_frame

    async def receive(self) -> bytes | str | None:
        try:
            message = await self.ws.get_message()
        except trio_websocket.ConnectionClosed:
            return None
        if len(message) > self._max:
            raise ProtocolError(Code.FRAME_TOO_LARGE, f"Frame larger than {self._max} bytes; discarded.")
        return message

    async def send_batch(self, frames: list[bytes]) -> None:
        try:
            for frame in frames:
                await self.ws.send_message(frame[:-1].decode())
        except trio_websocket.ConnectionClosed as exc:
            raise trio.BrokenResourceError("WebSocket closed") from exc

    async def aclose(self) -> None:
        await self.ws.aclose()
