"""The server side of WebSocket (RFC 6455) as a pure protocol core: the opening handshake and the
frames, with no I/O (the connection in connection.py does the reading and writing).

Why UtuVox frames WebSocket itself instead of serving it through a general-purpose library: a chat
server holds thousands of mostly idle connections and passes small frames. A library connection
brings a reader task, a memory channel, a handshake object and an event machine per connection
(about 13 KiB each, measured), and hands messages over one per turn of the event loop; here a
connection is a byte buffer and a few integers, and a read of hundreds of pipelined frames is parsed
in one pass. HTTP itself is left to h11.

Only what a server needs: client frames must be masked, no extensions are negotiated (so the RSV bits
must be zero), control frames are answered by the caller (pong, close), and a text message must be
valid UTF-8.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from http import HTTPStatus

import h11

from .web import Site

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_HEAD = 16 * 1024  # bytes of HTTP request head a client may send

# Close codes (RFC 6455 section 7.4.1).
NORMAL, PROTOCOL_ERROR, INVALID_DATA, POLICY, TOO_BIG = 1000, 1002, 1007, 1008, 1009
# The codes a client may put in a close frame: 1004-1006 and 1015 are reserved, 1012-2999 unassigned.
_VALID_CLOSE_CODES = set(range(1000, 1004)) | set(range(1007, 1012)) | set(range(3000, 5000))


# --- the opening handshake ------------------------------------------------------------------------


@dataclass(frozen=True)
class Handshake:
    """What to answer a request head: the response bytes, and whether the connection is now a
    WebSocket (``leftover`` then holds any frames the client sent right behind its request)."""

    response: bytes
    accepted: bool
    leftover: bytes = b""
    subprotocol: str | None = None  # an IRCv3 one (text.ircv3.net, binary.ircv3.net): IRC, not JSON


def _reject(status: int, reason: str, message: str, extra: str = "") -> Handshake:
    body = message.encode() + b"\n"
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n")
    return Handshake(head.encode() + body, accepted=False)


IRC_SUBPROTOCOLS = ("text.ircv3.net", "binary.ircv3.net")


def accept_key(key: bytes) -> str:
    return base64.b64encode(hashlib.sha1(key + _GUID).digest()).decode()


class HandshakeReader:
    """Feed it the bytes a new connection sends; once :meth:`feed` returns a :class:`Handshake`, send
    its response (and close the connection unless it was accepted).

    With a ``site``, a GET that asks for no upgrade is answered with the web client's files, and an
    upgrade from a browser (one that sends ``Origin``) is accepted only from an allowed origin."""

    def __init__(self, site: Site | None = None) -> None:
        self._http = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self._site = site

    def feed(self, data: bytes) -> Handshake | None:
        http = self._http
        http.receive_data(data)
        try:
            event = http.next_event()
        except h11.RemoteProtocolError as exc:  # 400, or 431 for a head over MAX_HEAD
            status = exc.error_status_hint
            return _reject(status, HTTPStatus(status).phrase, f"Not a valid HTTP request: {exc}")
        if event is h11.NEED_DATA:
            if not data:
                return _reject(400, "Bad Request", "The request ended early.")
            return None
        if not isinstance(event, h11.Request):
            return _reject(400, "Bad Request", "Expected a WebSocket upgrade request.")
        return self._answer(event, http.trailing_data[0])

    def _answer(self, request: h11.Request, leftover: bytes) -> Handshake:
        headers: dict[bytes, list[bytes]] = {}
        for name, value in request.headers:
            headers.setdefault(name.lower(), []).append(value)

        def tokens(name: bytes) -> set[bytes]:
            return {t.strip().lower() for v in headers.get(name, []) for t in v.split(b",")}

        site = self._site
        if site is not None and b"upgrade" not in headers:
            return Handshake(site.respond(request.method, request.target, headers), accepted=False)
        if request.method != b"GET":
            return _reject(405, "Method Not Allowed", "A WebSocket starts with GET.", "Allow: GET\r\n")
        if b"websocket" not in tokens(b"upgrade") or b"upgrade" not in tokens(b"connection"):
            return _reject(426, "Upgrade Required", "This port speaks WebSocket only (ws:// or wss://).",
                           "Upgrade: websocket\r\n")
        if tokens(b"sec-websocket-version") != {b"13"}:
            return _reject(426, "Upgrade Required", "Unsupported WebSocket version: 13 is spoken here.",
                           "Sec-WebSocket-Version: 13\r\n")
        keys = headers.get(b"sec-websocket-key", [])
        try:
            valid_key = len(keys) == 1 and len(base64.b64decode(keys[0].strip(), validate=True)) == 16
        except (binascii.Error, ValueError):
            valid_key = False
        if not valid_key:
            return _reject(400, "Bad Request", "Missing or malformed Sec-WebSocket-Key.")
        origins = headers.get(b"origin", [])
        hosts = headers.get(b"host")
        if site is not None and origins and not (
            len(origins) == 1 and site.origin_allowed(origins[0], hosts[0] if hosts else None)
        ):
            return _reject(403, "Forbidden", "This origin may not open a WebSocket here.")
        # IRC over WebSocket (IRCv3) when the client asks for it; JSON otherwise.
        offered = [t.strip().decode("ascii", "replace").lower()
                   for v in headers.get(b"sec-websocket-protocol", []) for t in v.split(b",")]
        subprotocol = next((p for p in offered if p in IRC_SUBPROTOCOLS), None)  # the client's first choice
        chosen = f"Sec-WebSocket-Protocol: {subprotocol}\r\n" if subprotocol else ""
        response = ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    f"Sec-WebSocket-Accept: {accept_key(keys[0].strip())}\r\n{chosen}\r\n")
        return Handshake(response.encode(), accepted=True, leftover=leftover, subprotocol=subprotocol)


# --- frames ---------------------------------------------------------------------------------------


class WebSocketError(Exception):
    """The client broke the protocol: close the connection with ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def frame(opcode: int, payload: bytes) -> bytes:
    """A server frame (unmasked, final)."""
    n = len(payload)
    if n < 126:
        return bytes((0x80 | opcode, n)) + payload
    if n < 65536:
        return bytes((0x80 | opcode, 126)) + n.to_bytes(2, "big") + payload
    return bytes((0x80 | opcode, 127)) + n.to_bytes(8, "big") + payload


def text_frame(line: bytes) -> bytes:
    """One encoded line (JSON and its newline) as a text frame. Built once per event for everybody
    (see Wire.framed): server frames are not masked, so every member gets the same bytes."""
    return frame(TEXT, line[:-1])


def close_frame(code: int, reason: str = "") -> bytes:
    return frame(CLOSE, code.to_bytes(2, "big") + reason.encode()[:120])


# For each byte value k, the table that XORs a byte with k: bytes.translate applies one in C.
_XOR_TABLES = [bytes(b ^ k for b in range(256)) for k in range(256)]


def unmask(payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    if n < 1024:
        # One XOR of two integers, in C: the cheapest way for a chat-sized frame.
        mask = int.from_bytes((key * (n // 4 + 1))[:n], "little")
        return (int.from_bytes(payload, "little") ^ mask).to_bytes(n, "little")
    # Large frames (file chunks): every fourth byte shares a key byte, so four translations over strided
    # slices do it, two to three times faster than the integers at 60 KB.
    data = bytearray(payload)
    for i in range(4):
        data[i::4] = data[i::4].translate(_XOR_TABLES[key[i]])
    return bytes(data)


class FrameReader:
    """Client frames in, messages and control frames out.

    :meth:`next` returns ``(opcode, payload)``: ``TEXT`` with a ``str`` (validated UTF-8), ``BINARY``
    with bytes, or a control frame (``PING``, ``PONG``, ``CLOSE``) with its bytes; ``None`` when more
    bytes are needed. Fragmented messages come out whole. Raises :class:`WebSocketError` on a
    protocol violation (the connection must then be closed with its code).
    """

    def __init__(self, max_message: int) -> None:
        self._max = max_message
        self._buf = b""
        self._pos = 0
        # Reads that arrived while a large frame is incomplete, joined once the frame is whole: joining
        # at every read would copy a 256 KiB frame dozens of times.
        self._later: list[bytes] = []
        self._later_len = 0
        self._need = 0  # bytes the incomplete frame at _pos needs in all (0: unknown, a header is short)
        self._parts: list[bytes] = []  # fragments of a message in progress
        self._parts_len = 0
        self._opcode = 0  # the opcode of the message in progress

    def feed(self, data: bytes) -> None:
        left = len(self._buf) - self._pos
        if self._need and left + self._later_len + len(data) < self._need:
            self._later.append(data)
            self._later_len += len(data)
            return
        if left:
            self._buf = b"".join([self._buf[self._pos:], *self._later, data])
        else:
            self._buf = data
        self._later.clear()
        self._later_len = 0
        self._need = 0
        self._pos = 0

    @property
    def pending_bytes(self) -> int:
        """Bytes of a frame or a fragmented message that has not fully arrived."""
        return len(self._buf) - self._pos + self._later_len + self._parts_len

    def next(self) -> tuple[int, str | bytes] | None:
        while True:
            buf, pos = self._buf, self._pos
            avail = len(buf) - pos
            if avail < 2:
                return None
            b0, b1 = buf[pos], buf[pos + 1]
            if b0 & 0x70:
                raise WebSocketError(PROTOCOL_ERROR, "Reserved bits set (no extension was negotiated).")
            if not b1 & 0x80:
                raise WebSocketError(PROTOCOL_ERROR, "Client frames must be masked.")
            n = b1 & 0x7F
            start = pos + 6
            if n == 126:
                if avail < 8:
                    return None
                n = int.from_bytes(buf[pos + 2:pos + 4], "big")
                start = pos + 8
            elif n == 127:
                if avail < 14:
                    return None
                n = int.from_bytes(buf[pos + 2:pos + 10], "big")
                if n >> 63:
                    raise WebSocketError(PROTOCOL_ERROR, "Frame length out of range.")
                start = pos + 14
            opcode, fin = b0 & 0x0F, b0 & 0x80
            if opcode >= CLOSE:
                if opcode > PONG:
                    raise WebSocketError(PROTOCOL_ERROR, f"Unknown opcode {opcode}.")
                if not fin or n > 125:
                    raise WebSocketError(PROTOCOL_ERROR, "Control frames must be final and at most 125 bytes.")
            elif opcode > BINARY:
                raise WebSocketError(PROTOCOL_ERROR, f"Unknown opcode {opcode}.")
            elif self._parts_len + n > self._max:
                raise WebSocketError(TOO_BIG, f"Message larger than {self._max} bytes.")
            if len(buf) < start + n:
                self._need = start + n - pos
                return None
            payload = unmask(buf[start:start + n], buf[start - 4:start])
            self._pos = start + n
            if opcode >= CLOSE:
                return opcode, payload
            if opcode == CONTINUATION:
                if not self._opcode:
                    raise WebSocketError(PROTOCOL_ERROR, "Continuation frame without a message to continue.")
            elif self._opcode:
                raise WebSocketError(PROTOCOL_ERROR, "New message before the previous one was finished.")
            else:
                self._opcode = opcode
            if not fin:
                self._parts.append(payload)
                self._parts_len += n
                continue
            if self._parts:
                payload = b"".join([*self._parts, payload])
                self._parts.clear()
                self._parts_len = 0
            opcode, self._opcode = self._opcode, 0
            if opcode == BINARY:
                return BINARY, payload
            try:
                return TEXT, payload.decode()
            except UnicodeDecodeError:
                raise WebSocketError(INVALID_DATA, "Text message is not valid UTF-8.") from None


def close_code(payload: bytes) -> int:
    """The code to answer a client's close frame with: its own code, or a protocol error for a
    malformed one."""
    if not payload:
        return NORMAL
    if len(payload) < 2:
        return PROTOCOL_ERROR
    code = int.from_bytes(payload[:2], "big")
    try:
        payload[2:].decode()
    except UnicodeDecodeError:
        return INVALID_DATA
    return code if code in _VALID_CLOSE_CODES else PROTOCOL_ERROR
