"""The one tiny connection interface every transport is adapted to: receive a frame, send frames,
close. TCP (and later the admin socket) frame by lines; WebSocket by messages."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
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

    # How one encoded frame (a complete line) goes on the wire, or None when the line is sent as it is.
    frame: Callable[[bytes], bytes] | None

    def direct_fd(self) -> int | None:
        """A non-blocking file descriptor that framed bytes may be written to right now, or None when
        the transport must go through :meth:`send_raw` (TLS, or a WebSocket mid-way through a write)."""

    async def send_raw(self, data: bytes) -> None:
        """Send framed bytes, waiting for the socket as needed."""

    async def aclose(self) -> None: ...


LINGER_SECONDS = 0.5  # how long a closing connection waits for its peer to close too


def _socket_fd(stream: object) -> int | None:
    """The descriptor of a plain socket stream that is still open; None for anything else (TLS)."""
    if not isinstance(stream, trio.SocketStream):
        return None
    fd = stream.socket.fileno()
    return fd if fd >= 0 else None


def websocket_text_frame(line: bytes) -> bytes:
    """One line as a WebSocket text frame. Server-to-client frames are unmasked, so a frame is a header
    and the payload: cheap to build here, and built once per event for everybody (see Wire.framed),
    instead of one library call per message per member."""
    payload = line[:-1]
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return b"\x81\x7e" + n.to_bytes(2, "big") + payload
    return b"\x81\x7f" + n.to_bytes(8, "big") + payload


class LineConnection:
    """Newline-framed JSON or text over a byte stream (TCP, Unix socket).

    Each read is split into lines at once (``bytes.split`` in C) and the lines are handed out from a
    queue: a pipelining client sends hundreds of frames per read, and per-line buffer surgery would
    cost more than the frames themselves.
    """

    frame = None

    def __init__(self, stream: trio.abc.Stream, transport: str, address: str, max_frame: int,
                 initial: bytes = b"") -> None:
        self.stream = stream
        self.transport = transport
        self.address = address
        self._max = max_frame
        # The lines of the last read and how many were handed out: a list and an index (a deque would
        # cost 600 bytes per idle connection).
        self._lines: list[bytes] = []
        self._next = 0
        # The start of a line whose newline has not arrived yet, in the pieces it came in: a large frame
        # (an upload chunk) spans several reads, and joining once at its newline copies it once.
        self._pieces: list[bytes] = []
        self._partial_len = 0
        self._discarding = False  # skipping the rest of an oversize line
        self._eof = False
        if initial:
            self._feed(initial)

    def _too_large(self) -> ProtocolError:
        return ProtocolError(Code.FRAME_TOO_LARGE, f"Frame larger than {self._max} bytes; discarded.")

    def _feed(self, data: bytes) -> None:
        if b"\n" not in data:
            self._pieces.append(data)
            self._partial_len += len(data)
            return
        parts = data.split(b"\n")
        if self._pieces:
            parts[0] = b"".join([*self._pieces, parts[0]])
            self._pieces.clear()
        last = parts.pop()
        self._pieces = [last] if last else []
        self._partial_len = len(last)
        if self._discarding:
            parts[0] = b""  # the tail of the oversize line: dropped, marked by an empty entry
        if self._next < len(self._lines):
            parts[:0] = self._lines[self._next:]
        self._lines = parts
        self._next = 0

    async def receive(self) -> bytes | None:
        while True:
            lines = self._lines
            if self._next < len(lines):
                line = lines[self._next]
                self._next += 1
                if self._next == len(lines):  # let go of the read's lines: an idle connection keeps none
                    self._lines, self._next = [], 0
                if self._discarding:
                    self._discarding = False
                    continue
                if len(line) > self._max:
                    raise self._too_large()
                return line
            if self._partial_len > self._max:
                self._pieces.clear()
                self._partial_len = 0
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
                if self._pieces and not self._discarding:
                    self._lines, self._next = [b"".join(self._pieces)], 0  # a last line without its newline counts
                    self._pieces.clear()
                    self._partial_len = 0
                continue
            self._feed(data)

    @property
    def partial_bytes(self) -> int:
        """Bytes of a frame whose newline has not arrived yet (the keepalive watchdog times them)."""
        return self._partial_len

    def direct_fd(self) -> int | None:
        return _socket_fd(self.stream)

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def aclose(self) -> None:
        """Close gracefully: after our last bytes (a ``bye``), say we are done writing and read whatever
        the peer still sends until it closes too, briefly. Closing a socket that has unread input makes
        the kernel reset the connection, and a reset can destroy the ``bye`` before the client reads it."""
        if not self._eof:
            with trio.move_on_after(LINGER_SECONDS), contextlib.suppress(
                trio.BrokenResourceError, trio.ClosedResourceError, OSError
            ):
                if isinstance(self.stream, trio.SocketStream):
                    await self.stream.send_eof()
                while await self.stream.receive_some(65536):
                    pass
        await self.stream.aclose()


class _EagerSend:
    """trio-websocket's reader task hands over each message with ``await channel.send``, a checkpoint
    even when the queue has room, so a pipelining client's messages come in one per turn of the event
    loop, each turn costing more than the message. Put in place of the reader's channel, this sends
    without a checkpoint while the queue has room; the reader then parses a whole read (hundreds of
    frames) in one go, as the line reader does. A full queue still makes the reader wait."""

    def __init__(self, channel: trio.MemorySendChannel[str | bytes]) -> None:
        self._channel = channel

    async def send(self, value: str | bytes) -> None:
        try:
            self._channel.send_nowait(value)
        except trio.WouldBlock:
            await self._channel.send(value)

    def __getattr__(self, name: str) -> object:
        return getattr(self._channel, name)


class WebSocketConnection:
    """One JSON frame per WebSocket text message.

    Sending goes around trio-websocket's one-call-per-message path (see websocket_text_frame) but
    through its stream and its lock, so frames never interleave with the ones it writes itself."""

    frame = staticmethod(websocket_text_frame)

    transport = "ws"

    def __init__(self, ws: trio_websocket.WebSocketConnection, address: str, max_frame: int) -> None:
        self.ws = ws
        self.address = address
        self._max = max_frame
        ws._send_channel = _EagerSend(ws._send_channel)  # type: ignore[assignment]

    async def receive(self) -> bytes | str | None:
        # Take what the library's reader has already queued without a checkpoint each: a pipelining
        # client's messages are then handled in one go, as a TCP client's lines are, instead of one per
        # turn of the event loop (and one pass of the flusher per message).
        try:
            message = self.ws._recv_channel.receive_nowait()
        except trio.WouldBlock:
            try:
                message = await self.ws.get_message()
            except trio_websocket.ConnectionClosed:
                return None
        except (trio.ClosedResourceError, trio.EndOfChannel):
            return None
        if len(message) > self._max:
            raise ProtocolError(Code.FRAME_TOO_LARGE, f"Frame larger than {self._max} bytes; discarded.")
        return message

    def direct_fd(self) -> int | None:
        ws = self.ws
        if ws._close_reason is not None or ws._stream_lock.locked():
            return None  # closing, or the library is writing (a pong, a close frame): go through its lock
        return _socket_fd(ws._stream)

    async def send_raw(self, data: bytes) -> None:
        ws = self.ws
        if ws._close_reason is not None:
            raise trio.BrokenResourceError("WebSocket closed")
        async with ws._stream_lock:
            await ws._stream.send_all(data)

    async def aclose(self) -> None:
        await self.ws.aclose()
