"""Lean load-generating clients: non-blocking sockets on one ``selectors`` loop per process.

A client here never parses a frame it does not have to. Each benchmark message carries a marker
(``MARK``) in its text, and receivers count the marker in the raw bytes they read, which works the
same for JSON lines, text-mode lines, WebSocket frames and IRC lines, and ignores every frame that is
not a benchmark message (joins, acknowledgements). Latency probes put the send time after the marker,
and only they are parsed.

A :class:`Dialect` knows the bytes of each request for one way of speaking (JSON over TCP, text mode,
JSON over WebSocket, IRC) and the patterns that show a step of the setup succeeded or failed.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import json
import os
import selectors
import socket
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

HOST = "127.0.0.1"
RECEIVER, SENDER, PROBE = 0, 1, 2
MARK = b"~@"  # starts the text of every benchmark message; appears nowhere else on the wire
_TILDE = MARK[0]
_AT = MARK[1]
# Reads go into one preallocated buffer: a fresh 256 KiB bytes object per recv() would cost an
# mmap and munmap each time, more than the read itself.
RECV_SIZE = 1 << 18
SETUP_RECV = 1 << 15
PASSWORD = "benchpw1"


class BenchError(RuntimeError):
    """The benchmark could not run as asked (a server refused, a setup step failed, a deadline passed)."""


@dataclass(frozen=True, slots=True)
class Step:
    """Bytes to send, then a pattern whose arrival means the step succeeded."""

    send: bytes
    wait: bytes


# --- dialects -----------------------------------------------------------------------------------


class Dialect:
    """The bytes of each request in one way of speaking. Subclasses fill in the details."""

    name = ""
    # Failure patterns: if one arrives during setup, the setup step failed.
    errors: tuple[bytes, ...] = ()
    # Whether the server echoes a message to its sender (UtuVox does, IRC does not).
    echoes = True

    def connect_steps(self, nick: str) -> list[Step]:
        return []

    def login(self, user: str, *, register: bool = True) -> Step:
        raise NotImplementedError

    def enter(self, room: str, *, create: bool = False) -> Step:
        raise NotImplementedError

    def message(self, text: str) -> bytes:
        raise NotImplementedError

    def ack_pattern(self, sender_id: int) -> bytes:
        """What arrives once per message of this sender that the server committed."""
        raise NotImplementedError

    def ping(self) -> Step:
        """A request whose answer arrives after the answers to everything sent before it."""
        raise NotImplementedError

    def history(self, room: str, before: int | None, limit: int) -> bytes:
        raise NotImplementedError


class JsonDialect(Dialect):
    name = "json"
    errors = (b'"type":"error"',)

    def frame(self, obj: dict[str, object]) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode() + b"\n"

    def login(self, user: str, *, register: bool = True) -> Step:
        kind = "register" if register else "login"
        return Step(self.frame({"type": kind, "username": user, "password": PASSWORD}), b'"type":"logged_in"')

    def enter(self, room: str, *, create: bool = False) -> Step:
        return Step(self.frame({"type": "create" if create else "join", "room": room}), b'"type":"joined"')

    def message(self, text: str) -> bytes:
        return self.frame({"type": "message", "text": text})

    def ack_pattern(self, sender_id: int) -> bytes:
        return b'"type":"ok"'

    def ping(self) -> Step:
        return Step(self.frame({"type": "ping"}), b'"type":"pong"')

    def history(self, room: str, before: int | None, limit: int) -> bytes:
        obj: dict[str, object] = {"type": "history", "room": room, "limit": limit}
        if before is not None:
            obj["before"] = before
        return self.frame(obj)


def ws_frame(payload: bytes) -> bytes:
    """A client-to-server text frame. The masking key is zero: legal (the server must unmask with
    whatever key it gets) and it lets the payload go out as is, without an XOR pass in Python."""
    n = len(payload)
    if n < 126:
        head = bytes((0x81, 0x80 | n))
    elif n < 1 << 16:
        head = bytes((0x81, 0xFE)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x81, 0xFF)) + n.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


class WsDialect(JsonDialect):
    """JSON over WebSocket: the same objects, one per text frame, after an HTTP upgrade."""

    name = "ws"
    errors = (b'"type":"error"', b"HTTP/1.1 4", b"HTTP/1.1 5")

    def __init__(self, port: int) -> None:
        self.port = port

    def frame(self, obj: dict[str, object]) -> bytes:
        return ws_frame(json.dumps(obj, separators=(",", ":")).encode())

    def connect_steps(self, nick: str) -> list[Step]:
        key = base64.b64encode(os.urandom(16)).decode()
        request = (f"GET / HTTP/1.1\r\nHost: {HOST}:{self.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
        return [Step(request.encode(), b"\r\n\r\n")]


class TextDialect(Dialect):
    """Text mode, as ``nc`` speaks it. A message is acknowledged by its own echo: text mode sends no
    ``ok`` for a message, and the echo goes out only after the commit."""

    name = "text"
    errors = (b"] Error: ",)

    def login(self, user: str, *, register: bool = True) -> Step:
        kind = "register" if register else "login"
        return Step(f"/{kind} {user} {PASSWORD}\n".encode(), b" successful")

    def enter(self, room: str, *, create: bool = False) -> Step:
        return Step(f"/{'create' if create else 'join'} {room}\n".encode(), f"You joined room '{room}'".encode())

    def message(self, text: str) -> bytes:
        return text.encode() + b"\n"

    def ack_pattern(self, sender_id: int) -> bytes:
        return MARK + f"{sender_id}~".encode()

    def ping(self) -> Step:
        return Step(b"/ping\n", b"] Pong.")

    def history(self, room: str, before: int | None, limit: int) -> bytes:
        # Text mode has no 'before': it always shows the newest events.
        return f"/history {room} {limit}\n".encode()


class IrcDialect(Dialect):
    """IRC, for the side-by-side runs against ngircd. Load clients become operators and set user mode
    +F (relaxed flood protection). IRC has no acknowledgement: a PING after a burst of messages is
    answered once the server has handled them all, so a PONG acknowledges ``ack_every`` messages."""

    name = "irc"
    # Any 4xx numeric from the server is an error reply; the server's name anchors it (a bare " 403 "
    # also turns up in "There are 403 users").
    errors = (b"ERROR :", b".utuvox.local 4", b":utuvox 4")
    echoes = False
    oper_name = "bench"
    oper_password = "bench"

    def __init__(self, channel: str = "#bench", *, oper: bool = True) -> None:
        self.channel = channel
        self.oper = oper  # ngircd: become an operator to lift flood control; UtuVox's rates are settings

    def connect_steps(self, nick: str) -> list[Step]:
        return [Step(f"NICK {nick}\r\nUSER {nick} 0 * :{nick}\r\n".encode(), b" 001 ")]

    def login(self, user: str, *, register: bool = True) -> Step:
        if not self.oper:  # UtuVox: a guest (a nick alone) may join and talk
            return Step(b"PING :login\r\n", b" PONG ")
        return Step(f"OPER {self.oper_name} {self.oper_password}\r\nMODE {user} +F\r\n".encode(), b" 381 ")

    def enter(self, room: str, *, create: bool = False) -> Step:
        self.channel = "#" + room
        return Step(f"JOIN {self.channel}\r\n".encode(), b" 366 ")

    def message(self, text: str) -> bytes:
        return f"PRIVMSG {self.channel} :{text}\r\n".encode()

    def ack_pattern(self, sender_id: int) -> bytes:
        return b" PONG "

    def ping(self) -> Step:
        return Step(b"PING :bench\r\n", b" PONG ")


def make_dialect(transport: str, ws_port: int = 0, target: str = "utuvox") -> Dialect:
    if transport == "json":
        return JsonDialect()
    if transport == "text":
        return TextDialect()
    if transport == "ws":
        return WsDialect(ws_port)
    if transport == "irc":
        return IrcDialect(oper=target == "ngircd")
    raise ValueError(f"unknown transport {transport!r}")


# --- connections --------------------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class Conn:
    """One client connection and its counters. ``steps`` is the setup still to walk."""

    name: str
    steps: list[Step]
    role: int = 0  # RECEIVER, SENDER or PROBE, for the scenario's own dispatch
    sock: socket.socket | None = None
    step: int = 0
    buf: bytes = b""
    ready: bool = False
    error: str | None = None
    count: int = 0  # benchmark messages received
    tilde: bool = False  # the last byte read was the first byte of MARK
    acks: int = 0
    tail: bytes = b""  # the end of the last read, for patterns split across two reads
    out: bytes = b""  # bytes accepted for sending but not yet taken by the kernel
    sent: int = 0
    last: float = 0.0  # when the last benchmark message arrived
    closed: bool = False
    connected: bool = False
    port: int = 0  # the node to connect to (0: the loop's)
    extra: dict[str, object] = field(default_factory=dict)

    def fileno(self) -> int:
        assert self.sock is not None
        return self.sock.fileno()


def count_mark(conn: Conn, buf: bytearray, n: int) -> int:
    """Count MARK in ``buf[:n]``, including one split across the previous read and this one."""
    found = buf.count(MARK, 0, n)
    if conn.tilde and buf[0] == _AT:
        found += 1
    conn.tilde = buf[n - 1] == _TILDE
    return found


def probe_times(conn: Conn, data: bytes | bytearray) -> list[int]:
    """The send times (``monotonic_ns``) that latency probes carry after the marker (``~@<id>~<ns>~``),
    in a stream read piece by piece; ``conn.buf`` carries an unfinished probe to the next read."""
    buf = conn.buf + data if conn.buf else data
    times = []
    pos = 0
    while True:
        at = buf.find(MARK, pos)
        if at < 0:
            conn.buf = bytes(buf[-1:]) if buf[-1:] == MARK[:1] else b""
            return times
        sep = buf.find(b"~", at + 2)
        end = buf.find(b"~", sep + 1) if sep >= 0 else -1
        if end < 0:
            conn.buf = bytes(buf[at:])
            return times
        times.append(int(buf[sep + 1:end]))
        pos = end + 1


def count_pattern(conn: Conn, data: bytes, pattern: bytes) -> int:
    """Count ``pattern`` in a stream read piece by piece; ``conn.tail`` carries the last few bytes."""
    k = len(pattern) - 1
    found = data.count(pattern)
    if conn.tail:
        # A match here must straddle the boundary: neither side alone is long enough to hold one.
        found += (conn.tail + data[:k]).count(pattern)
    conn.tail = data[-k:] if k else b""
    return found


def _open(conn: Conn, port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    err = sock.connect_ex((HOST, port))
    if err not in (0, errno.EINPROGRESS):
        sock.close()
        raise BenchError(f"cannot connect to {HOST}:{port}: {os.strerror(err)}")
    conn.sock = sock


def send_now(conn: Conn, data: bytes) -> None:
    """Send on a non-blocking socket; what the kernel does not take waits in ``conn.out``."""
    assert conn.sock is not None
    if conn.out:
        conn.out += data
        return
    try:
        n = conn.sock.send(data)
    except BlockingIOError:
        n = 0
    if n < len(data):
        conn.out = data[n:]


def flush(conn: Conn) -> bool:
    """Push ``conn.out``; True when it is empty."""
    if conn.out:
        assert conn.sock is not None
        try:
            n = conn.sock.send(conn.out)
        except BlockingIOError:
            return False
        conn.out = conn.out[n:]
    return not conn.out


def service(sel: selectors.BaseSelector, conn: Conn, mask: int, rbuf: bytearray) -> int | None:
    """Serve one ready connection: push its pending output if writable, then read into ``rbuf`` if
    readable. Returns the bytes read, ``0`` when the peer closed (the connection is then unregistered and
    marked closed), or ``None`` when there is nothing to read."""
    assert conn.sock is not None
    if mask & selectors.EVENT_WRITE and flush(conn):
        sel.modify(conn.sock, selectors.EVENT_READ, conn)
    if not mask & selectors.EVENT_READ:
        return None
    try:
        n = conn.sock.recv_into(rbuf)
    except BlockingIOError:
        return None
    except ConnectionError:
        n = 0
    if not n:
        sel.unregister(conn.sock)
        conn.closed = True
    return n


class Loop:
    """One selector loop for many connections, with the setup walk shared by every scenario."""

    def __init__(self, port: int, dialect: Dialect) -> None:
        self.port = port
        self.dialect = dialect
        self.sel = selectors.DefaultSelector()
        self.conns: list[Conn] = []
        self.rbuf = bytearray(RECV_SIZE)

    def close(self) -> None:
        for conn in self.conns:
            if conn.sock is not None:
                with contextlib.suppress(KeyError, ValueError):
                    self.sel.unregister(conn.sock)
                conn.sock.close()
                conn.sock = None
        self.conns.clear()
        self.sel.close()

    def establish(self, conns: Iterable[Conn], *, parallel: int, deadline: float) -> float:
        """Connect each connection and walk its setup steps, at most ``parallel`` in progress at once
        (a listen backlog would otherwise overflow and stall connections for a second on SYN retry;
        ngircd registers clients one after another). Connections already set up keep being read, so
        the join events they receive meanwhile never pile up in the server. Returns the seconds taken.
        """
        started = time.monotonic()
        waiting = deque(conns)
        active = 0
        while waiting or active:
            while waiting and active < parallel:
                conn = waiting.popleft()
                _open(conn, conn.port or self.port)
                self.conns.append(conn)
                self.sel.register(conn.sock, selectors.EVENT_WRITE, conn)  # type: ignore[arg-type]
                active += 1
            now = time.monotonic()
            if now > deadline:
                raise BenchError(f"setup did not finish in time: {active + len(waiting)} connections left")
            for key, mask in self.sel.select(min(0.5, deadline - now)):
                conn = key.data
                if conn is None:
                    continue
                if mask & selectors.EVENT_WRITE:
                    if not conn.connected:
                        err = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                        if err:
                            raise BenchError(f"{conn.name}: cannot connect: {os.strerror(err)}")
                        conn.connected = True
                        send_now(conn, conn.steps[0].send)
                    if flush(conn):
                        self.sel.modify(conn.sock, selectors.EVENT_READ, conn)
                    continue
                data = self._recv(conn)
                if conn.ready:
                    continue
                conn.buf += data
                if not data:
                    raise BenchError(f"{conn.name}: the server closed the connection during setup: {conn.buf[-300:]!r}")
                if self.advance(conn):
                    active -= 1
        return time.monotonic() - started

    def _recv(self, conn: Conn) -> bytes:
        try:
            return conn.sock.recv(SETUP_RECV)  # type: ignore[union-attr]
        except BlockingIOError:
            return b"\0"  # nothing after all; a NUL never completes a pattern
        except ConnectionError:
            return b""

    def advance(self, conn: Conn) -> bool:
        """Move through the steps whose pattern arrived; True when the last one is done."""
        while True:
            wait = conn.steps[conn.step].wait
            at = conn.buf.find(wait)
            if at < 0:
                for bad in self.dialect.errors:
                    where = conn.buf.find(bad)
                    if where >= 0:
                        line_end = conn.buf.find(b"\n", where)
                        start = conn.buf.rfind(b"\n", 0, where) + 1
                        raise BenchError(f"{conn.name}: setup step refused: "
                                         f"{conn.buf[start:line_end if line_end > 0 else None][:300]!r}")
                return False
            conn.buf = conn.buf[at + len(wait):]
            conn.step += 1
            if conn.step == len(conn.steps):
                conn.ready = True
                conn.buf = b""
                return True
            send_now(conn, conn.steps[conn.step].send)
            if conn.out:
                self.sel.modify(conn.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, conn)

    def drain(self, *, quiet: float = 0.3, limit: float = 30.0) -> None:
        """Read and drop whatever arrives until nothing has for ``quiet`` seconds (the join events of a
        big room take a while to reach everyone), so measurement starts on a calm server."""
        end = time.monotonic() + limit
        while time.monotonic() < end:
            events = self.sel.select(quiet)
            if not events:
                return
            for key, _mask in events:
                if key.data is not None:
                    self._recv(key.data)
        raise BenchError(f"the server kept sending for {limit:.0f} s after setup")


def setup_steps(dialect: Dialect, user: str, room: str | None, *, create: bool = False,
                register: bool = True) -> list[Step]:
    steps = [*dialect.connect_steps(user), dialect.login(user, register=register)]
    if room is not None:
        steps.append(dialect.enter(room, create=create))
    return steps


def pin_to(cpu: int) -> None:
    """Pin this process to one core, when the machine has it (the server runs on the other)."""
    try:
        if cpu in os.sched_getaffinity(0) or cpu < (os.cpu_count() or 1):
            os.sched_setaffinity(0, {cpu})
    except (AttributeError, OSError):
        pass


def probe_text(sender_id: int, size: int) -> str:
    """A benchmark message's text: MARK, the sender, the send time (filled in per message), padding."""
    head = f"{MARK.decode()}{sender_id}~{time.monotonic_ns()}~"
    return head + "x" * max(0, size - len(head))


class BlockingClient:
    """A plain blocking client for request-and-answer timings (history) and small setups."""

    def __init__(self, port: int, dialect: Dialect, name: str, timeout: float = 30.0) -> None:
        self.dialect = dialect
        self.name = name
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def step(self, step: Step) -> bytes:
        """Send a step and wait for its pattern; returns everything that arrived up to and with it."""
        self.sock.sendall(step.send)
        return self.wait(step.wait)

    def wait(self, pattern: bytes) -> bytes:
        while True:
            at = self.buf.find(pattern)
            if at >= 0:
                got, self.buf = self.buf[: at + len(pattern)], self.buf[at + len(pattern):]
                return got
            for bad in self.dialect.errors:
                if bad in self.buf:
                    raise BenchError(f"{self.name}: refused: {self.buf[-300:]!r}")
            data = self.sock.recv(SETUP_RECV)
            if not data:
                raise BenchError(f"{self.name}: connection closed: {self.buf[-300:]!r}")
            self.buf += data

    def close(self) -> None:
        self.sock.close()
