"""The one tiny connection interface every transport is adapted to: receive a frame, send frames,
close. TCP (and later the admin socket) frame by lines; WebSocket by messages."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Protocol

import trio

from utuvox.protocol import Code, ProtocolError

from . import websocket as ws


class Connection(Protocol):
    # Read-only for the session: what a connection is and how it frames is fixed by the transport.
    @property
    def transport(self) -> str: ...

    @property
    def address(self) -> str: ...

    @property
    def frame(self) -> Callable[[bytes], bytes] | None:
        """How one encoded frame (a complete line) goes on the wire, or None when the line is sent as it is."""

    async def receive(self) -> bytes | str | None:
        """The next frame, or ``None`` once the peer has gone. Raises ``ProtocolError`` for a frame over
        the size limit; the connection stays usable."""

    def direct_fd(self) -> int | None:
        """A non-blocking file descriptor that framed bytes may be written to right now, or None when
        the transport must go through :meth:`send_raw` (TLS)."""

    async def send_raw(self, data: bytes) -> None:
        """Send framed bytes, waiting for the socket as needed."""

    def attach(self, send_framed: Callable[[bytes], bool]) -> None:
        """Where the connection's own frames go (a WebSocket's pongs and close frames): into the
        session's outbox, in order with everything else. ``send_framed`` says whether it took them."""

    async def aclose(self) -> None: ...


LINGER_SECONDS = 0.5  # how long a closing connection waits for its peer to close too


def _socket_fd(stream: object) -> int | None:
    """The descriptor of a plain socket stream that is still open; None for anything else (TLS)."""
    if not isinstance(stream, trio.SocketStream):
        return None
    fd = stream.socket.fileno()
    return fd if fd >= 0 else None


async def _receive(stream: trio.abc.Stream) -> bytes:
    """The next bytes from the peer: ``b""`` once it is gone, whether it closed, reset or broke."""
    try:
        data = await stream.receive_some(65536)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        return b""
    # A plain socket gives bytes; TLS may give a bytearray, whose lines would be mutable copies.
    return data if data.__class__ is bytes else bytes(data)


class LineConnection:
    """Newline-framed JSON or text over a byte stream (TCP, Unix socket).

    Each read is split into lines at once (``bytes.split`` in C) and the lines are handed out from a
    queue: a pipelining client sends hundreds of frames per read, and per-line buffer surgery would
    cost more than the frames themselves.
    """

    frame: None = None

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
            data = await _receive(self.stream)
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

    def attach(self, send_framed: Callable[[bytes], bool]) -> None:
        pass  # lines need no frames of their own

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


class WebSocketConnection:
    """One JSON request per WebSocket message, framed by :mod:`.websocket`.

    Control frames are answered here as they arrive (a pong for a ping, the close handshake); their
    replies go through the session's outbox (:meth:`attach`), so they never land in the middle of a
    frame the outbox is writing.
    """

    transport = "ws"

    def __init__(self, stream: trio.abc.Stream, address: str, max_frame: int, initial: bytes = b"") -> None:
        # A JSON text frame per line; IRC over WebSocket swaps in its own (text or binary, per subprotocol).
        self.frame: Callable[[bytes], bytes] = ws.text_frame
        self.stream = stream
        self.address = address
        self._max = max_frame
        # Messages up to four frames' worth are read and refused with an error; beyond that the client
        # is not speaking this protocol in good faith and the connection is closed (1009).
        self._reader = ws.FrameReader(max_message=max_frame * 4)
        self._control: Callable[[bytes], bool] | None = None
        self._eof = False  # no more frames will be read: the peer is gone, closed, or broke the protocol
        self._broken = False  # the peer broke the protocol: what it still sends cannot be parsed
        self._close_sent = False
        self._close_code = ws.NORMAL
        self._pong: bytes | None = None  # the payload of a ping still to answer
        self.ping_sent: float | None = None  # when an unanswered ping went out (the watchdog's)
        if initial:
            self._reader.feed(initial)

    def attach(self, send_framed: Callable[[bytes], bool]) -> None:
        self._control = send_framed

    def _send_control(self, data: bytes) -> bool:
        return self._control is not None and self._control(data)

    def ping(self, now: float) -> None:
        """Send a ping unless one is still unanswered; :attr:`ping_sent` is cleared by its pong."""
        if self.ping_sent is None:
            self.ping_sent = now
            self._send_control(ws.frame(ws.PING, b"utuvox"))

    def _close(self, code: int, reason: str = "") -> None:
        if not self._close_sent:
            # If the outbox is closing already, aclose sends the close frame after what is queued.
            self._close_code = code
            self._close_sent = self._send_control(ws.close_frame(code, reason))

    @property
    def partial_bytes(self) -> int:
        return self._reader.pending_bytes

    async def receive(self) -> bytes | str | None:
        reader = self._reader
        while True:
            try:
                item = reader.next()
            except ws.WebSocketError as exc:
                self._close(exc.code, exc.reason)
                self._eof = self._broken = True
                return None
            if item is None:
                if self._pong is not None:
                    self._send_control(ws.frame(ws.PONG, self._pong))
                    self._pong = None
                if self._eof:
                    return None
                data = await _receive(self.stream)
                if not data:
                    self._eof = True
                    return None
                reader.feed(data)
                continue
            opcode, payload = item
            if opcode <= ws.BINARY:
                if self._pong is not None:
                    # A ping that came before this message (between its fragments, say) is answered
                    # before the message's reply (RFC 6455 5.5.2: as soon as practical, in order).
                    self._send_control(ws.frame(ws.PONG, self._pong))
                    self._pong = None
                if len(payload) > self._max:
                    raise ProtocolError(Code.FRAME_TOO_LARGE, f"Frame larger than {self._max} bytes; discarded.")
                return payload
            if opcode == ws.PING:
                # Answered once the read's frames are all handled, and only the last ping of them (RFC
                # 6455 5.5.3 allows it): a client sending pings back to back gets a pong per read, not
                # a write per ping.
                self._pong = payload  # type: ignore[assignment]
            elif opcode == ws.PONG:
                self.ping_sent = None
            else:  # the client closes: answer with its code, and the session ends
                self._close(ws.close_code(payload))  # type: ignore[arg-type]
                self._eof = True
                return None

    def direct_fd(self) -> int | None:
        return _socket_fd(self.stream)

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def aclose(self) -> None:
        """The closing handshake, briefly: our close frame (unless sent already), then wait for the
        client's close frame or end of stream, then close the TCP connection (the server closes first,
        as RFC 6455 asks). The outbox is closed by now, so writing here cannot split its frames."""
        with trio.move_on_after(LINGER_SECONDS), contextlib.suppress(
            trio.BrokenResourceError, trio.ClosedResourceError, OSError
        ):
            if not self._close_sent:
                self._close_sent = True
                await self.stream.send_all(ws.close_frame(self._close_code))
            if self._broken:
                # Frames can no longer be parsed, but unread input at close would make the kernel reset
                # the connection, and a reset can destroy the close frame before the peer reads it: read
                # and drop until the peer closes (as the line transport does).
                while await self.stream.receive_some(65536):
                    pass
            while not self._eof:
                try:
                    item = self._reader.next()
                except ws.WebSocketError:
                    break
                if item is not None:
                    if item[0] == ws.CLOSE:
                        break
                    continue
                data = await self.stream.receive_some(65536)
                if not data:
                    break
                self._reader.feed(bytes(data))
        await self.stream.aclose()
