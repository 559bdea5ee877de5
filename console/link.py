"""The console's connection to the admin socket: JSON lines over a plain Unix socket, driven by
blocking calls and one thread.

Requests go out from the command loop (the main thread, or cmd2's completion thread); one reader thread
feeds what the server sends to a :class:`~utuvox.protocol.client_protocol.ClientProtocol`, which matches
each reply to the request waiting for it (by ``re``); everything else (events, a goodbye) goes to
``on_event``. Only ``utuvox.protocol`` is shared with the server.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from utuvox.protocol import Frame, Reply, Request
from utuvox.protocol import client_protocol as cp
from utuvox.protocol.core import Error, Goodbye

R = TypeVar("R", bound=Reply)

REQUEST_TIMEOUT = 30.0


class ServerError(Exception):
    """The server refused a request: a stable ``code`` and a sentence for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Disconnected(Exception):
    """There is no connection to the server (any more). ``sent``: whether the request had been sent (and
    may have been carried out) before the connection was found gone."""

    def __init__(self, reason: str, *, sent: bool = False) -> None:
        super().__init__(reason)
        self.sent = sent


class _Slot:
    __slots__ = ("abandoned", "done", "failure", "reply")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.reply: Frame | None = None
        self.failure: ServerError | None = None
        self.abandoned = False  # its request stopped waiting: a late answer is shown as an event


class AdminLink:
    def __init__(self, path: Path | str, *, on_event: Callable[[Frame], None] = lambda frame: None,
                 on_close: Callable[[str], None] = lambda reason: None) -> None:
        self.path = str(path)
        self.on_event = on_event
        self.on_close = on_close
        self.closed = True
        self.close_reason = "not connected"
        self._sock: socket.socket | None = None
        self._protocol = cp.ClientProtocol("lines")
        self._lock = threading.Lock()  # the protocol's state, shared by the reader and the senders
        self._send_lock = threading.Lock()

    def connect(self) -> None:
        """Connect (raises ``OSError`` when the server is not there) and start reading."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self.closed = False
        self.close_reason = "connection closed"
        threading.Thread(target=self._read, args=(sock,), name="admin-socket-reader", daemon=True).start()

    def close(self) -> None:
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def request(self, req: Request, response: type[R] | None = None, *, timeout: float = REQUEST_TIMEOUT) -> Any:
        """Send ``req`` and wait for its answer. Raises :class:`ServerError` for an ``error`` reply and
        :class:`Disconnected` when the connection is gone. ``response`` checks the reply's type."""
        if self.closed or self._sock is None:
            raise Disconnected(self.close_reason)
        slot = _Slot()
        with self._lock:
            try:
                data = self._protocol.send(req, tag=slot)
            except cp.ConnectionEnded:
                raise Disconnected(self.close_reason) from None
        try:
            try:
                with self._send_lock:
                    self._sock.sendall(data)
            except OSError as exc:
                raise Disconnected(f"cannot send: {exc.strerror or exc}") from None
            deadline = time.monotonic() + timeout
            # Short waits, so that Ctrl-C in the main thread is seen at once.
            while not slot.done.wait(0.1):
                if self.closed:
                    raise Disconnected(self.close_reason, sent=True)
                if time.monotonic() > deadline:
                    raise Disconnected(f"no answer from the server in {timeout:.0f} s", sent=True)
        finally:
            slot.abandoned = True
        if slot.failure is not None:
            raise slot.failure
        reply = slot.reply
        if reply is None:
            raise Disconnected(self.close_reason, sent=True)
        if isinstance(reply, Error):
            raise ServerError(reply.code, reply.message)
        if response is not None and not isinstance(reply, response):
            raise ServerError("unexpected_reply", f"Unexpected answer from the server: {reply.type}.")
        return reply

    def _read(self, sock: socket.socket) -> None:
        try:
            while not self._protocol.closed:
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                with self._lock:
                    events = self._protocol.receive_data(data)
                for event in events:
                    self._handle(event)
        finally:
            self.closed = True
            with self._lock:
                events = self._protocol.close(self.close_reason)
            for event in events:
                self._handle(event)
            self.on_close(self.close_reason)

    def _handle(self, event: cp.ClientEvent) -> None:
        if isinstance(event, cp.Answer):
            slot: _Slot = event.tag
            if slot.abandoned:
                self.on_event(event.reply)
                return
            slot.reply = event.reply
            slot.done.set()
        elif isinstance(event, cp.RequestFailed):
            slot = event.tag
            if not event.lost:
                slot.failure = ServerError("unexpected_reply", event.reason)
            slot.done.set()
        elif isinstance(event, cp.Received):
            if isinstance(event.frame, Goodbye):
                self.close_reason = event.frame.reason
            self.on_event(event.frame)
        elif isinstance(event, cp.Closed):
            self.closed = True
        # Frames this console cannot read (cp.BadFrame, cp.UnknownFrame) are skipped.
