"""The client's side of a connection, with no I/O: bytes in, events out; requests in, bytes out.

:class:`ClientProtocol` does what every UtuVox client needs, whatever it reads and writes with (trio
streams, a plain socket and a thread, a test feeding bytes by hand)::

    proto = ClientProtocol(framing="lines")
    sock.sendall(proto.send(Ping(), tag=waiter))       # the request gets a fresh ``id``
    for event in proto.receive_data(sock.recv(65536)):
        ...                                            # Answer(request, reply, tag), Received(frame)...

It cuts the byte stream into frames (JSON lines on TCP and the admin socket; on WebSocket each message
is one frame already), reads them leniently (:mod:`utuvox.protocol.lenient`: fields and types a newer
server adds are ignored), matches each reply to the request in flight with the same ``id`` (any number
may be in flight, answered in any order), follows the downloads those requests started, and when the
connection ends fails every request still waiting, so that none waits forever.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from .base import Event, Reply, Request
from .core import Goodbye
from .errors import ProtocolError
from .files import DownloadEnd, DownloadFailed, DownloadStart
from .json_codec import encode
from .lenient import UnknownFrame, decode

Framing = Literal["lines", "messages"]
# Frames from the server can be larger than what it accepts from clients (a history page, a download
# chunk); this bounds the memory one frame may take.
MAX_FRAME = 16 * 1024 * 1024

__all__ = [
    "MAX_FRAME", "Answer", "BadFrame", "ClientEvent", "ClientProtocol", "Closed", "ConnectionEnded", "Framing",
    "LineFramer", "Received", "RequestFailed", "TransferFrame", "UnknownFrame",
]  # fmt: skip


# --- events ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    """The reply to a request in flight (an ``error`` reply too). ``tag`` is what was given to
    :meth:`ClientProtocol.send` with the request."""

    request: Request
    reply: Reply
    tag: Any


@dataclass(frozen=True, slots=True)
class RequestFailed:
    """A request in flight that will get no usable reply: the connection ended (``lost``), or the
    answer could not be read (``reason`` says why)."""

    request: Request
    tag: Any
    reason: str
    lost: bool


@dataclass(frozen=True, slots=True)
class Received:
    """Anything else the server sent: an event, a goodbye, a reply no request in flight waits for."""

    frame: Reply | Event


@dataclass(frozen=True, slots=True)
class TransferFrame:
    """A frame of a download in progress (``download_chunk``, ``download_end``, ``download_failed``);
    ``tag`` is the tag of the ``download`` request that started it."""

    download_id: str
    frame: Reply
    tag: Any


@dataclass(frozen=True, slots=True)
class BadFrame:
    """A frame that is not valid JSON, or lacks what its type requires. The connection goes on."""

    reason: str
    data: bytes | str


@dataclass(frozen=True, slots=True)
class Closed:
    """The connection is over; ``reason`` says why (the server's goodbye, if it sent one). Always the
    last event, after a :class:`RequestFailed` for each request that was still waiting."""

    reason: str


ClientEvent = Answer | RequestFailed | Received | TransferFrame | UnknownFrame | BadFrame | Closed


class ConnectionEnded(Exception):
    """A request was given to a protocol object whose connection is over."""


# --- framing --------------------------------------------------------------------------------------


class LineFramer:
    """Cuts a byte stream into lines (without their ``\\n``), keeping a partial line for the next
    chunk. A line longer than ``max_frame`` raises ``ValueError``: the stream cannot be trusted after it."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()
        self._scan = 0  # where the search for the next newline resumes: the bytes before it have none

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        lines = []
        start = 0
        while (nl := self._buf.find(b"\n", max(start, self._scan))) >= 0:
            lines.append(bytes(self._buf[start:nl]))
            start = nl + 1
        if start:
            del self._buf[:start]
        self._scan = len(self._buf)
        if self._scan > self.max_frame:
            raise ValueError(f"the server sent a frame larger than {self.max_frame} bytes")
        return lines


# --- the protocol ---------------------------------------------------------------------------------


class ClientProtocol:
    """One connection's client state: the framing, the requests in flight, the downloads under way.

    ``framing``: ``"lines"`` for a byte stream of JSON lines (TCP, the admin socket), ``"messages"``
    when each piece of data given to :meth:`receive_data` is one whole frame (a WebSocket message).
    ``ids``: where request ids come from (by default 1, 2, 3...); a client that reconnects shares one
    source between its connections, so that no answer from an old connection is taken for a new one's.
    """

    def __init__(self, framing: Framing = "lines", *, ids: Iterator[int] | None = None,
                 max_frame: int = MAX_FRAME) -> None:
        if framing not in ("lines", "messages"):
            raise ValueError(f"framing must be 'lines' or 'messages', not {framing!r}")
        self.framing = framing
        self._lines = LineFramer(max_frame) if framing == "lines" else None
        self._ids = ids if ids is not None else itertools.count(1)
        self._in_flight: dict[int, tuple[Request, Any]] = {}
        self._downloads: dict[str, Any] = {}  # download_id -> the tag of its request
        self._dropped: set[str] = set()  # downloads whose remaining frames nobody wants
        self.goodbye: Goodbye | None = None
        self.closed_reason: str | None = None

    # --- state ------------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self.closed_reason is not None

    @property
    def in_flight(self) -> list[Request]:
        """The requests sent and not answered yet, oldest first."""
        return [request for request, _tag in self._in_flight.values()]

    # --- requests out -----------------------------------------------------------------------------

    def send(self, request: Request, *, tag: Any = None) -> bytes:
        """``request`` with a fresh ``id``, as the bytes to write; its reply will come out as an
        :class:`Answer` carrying ``tag``. For the ``"messages"`` framing the bytes are one message's
        text (no newline). Raises :class:`ConnectionEnded` once the connection is over."""
        if self.closed_reason is not None:
            raise ConnectionEnded(self.closed_reason)
        rid = next(self._ids)
        request = request.model_copy(update={"id": rid})
        self._in_flight[rid] = (request, tag)
        data = encode(request)
        return data if self._lines is not None else data[:-1]

    def drop_download(self, download_id: str) -> None:
        """Nobody wants the rest of this download: its remaining frames are left out of the events."""
        if self._downloads.pop(download_id, None) is not None:
            self._dropped.add(download_id)

    # --- data in ----------------------------------------------------------------------------------

    def receive_data(self, data: bytes | str) -> list[ClientEvent]:
        """Take what was read from the connection; return what it means, in order.

        With ``"lines"``, ``data`` is any piece of the stream, and ``b""`` means the server closed it.
        With ``"messages"``, ``data`` is one whole frame. Data after the end is ignored.
        """
        if self.closed_reason is not None:
            return []
        if self._lines is None:
            return self._frame(data)
        if not data:
            return self.close(self.goodbye.reason if self.goodbye is not None else "the server closed the connection")
        assert isinstance(data, bytes), "the 'lines' framing reads bytes"
        try:
            frames = self._lines.feed(data)
        except ValueError as exc:
            return self.close(str(exc))
        events: list[ClientEvent] = []
        for frame in frames:
            events += self._frame(frame)
        return events

    def close(self, reason: str) -> list[ClientEvent]:
        """The connection is over (either side closed it, or it broke): a :class:`RequestFailed` for
        each request still in flight, oldest first, then :class:`Closed`. Only the first call counts."""
        if self.closed_reason is not None:
            return []
        self.closed_reason = reason
        events: list[ClientEvent] = [RequestFailed(request, tag, reason, lost=True)
                                     for request, tag in self._in_flight.values()]
        self._in_flight.clear()
        self._downloads.clear()
        events.append(Closed(reason))
        return events

    def _frame(self, data: bytes | str) -> list[ClientEvent]:
        try:
            frame = decode(data)
        except ProtocolError as exc:
            return [BadFrame(exc.message, data)]
        if isinstance(frame, UnknownFrame):
            waiting = self._take(frame.re)
            if waiting is None:
                return [frame]
            return [RequestFailed(*waiting, f"Unexpected '{frame.type}' in answer to '{waiting[0].type}'.",
                                  lost=False)]
        if isinstance(frame, Goodbye):
            self.goodbye = frame
        if isinstance(frame, Reply):
            download_id = getattr(frame, "download_id", None)
            if frame.re is None and isinstance(download_id, str):
                if download_id in self._dropped:
                    if isinstance(frame, DownloadEnd | DownloadFailed):
                        self._dropped.discard(download_id)
                    return []
                if download_id in self._downloads:
                    tag = self._downloads[download_id]
                    if isinstance(frame, DownloadEnd | DownloadFailed):
                        del self._downloads[download_id]
                    return [TransferFrame(download_id, frame, tag)]
            waiting = self._take(frame.re)
            if waiting is not None:
                request, tag = waiting
                if isinstance(frame, DownloadStart):
                    self._downloads[frame.download_id] = tag
                return [Answer(request, frame, tag)]
        return [Received(frame)]

    def _take(self, re: object) -> tuple[Request, Any] | None:
        # bool is an int to Python, never an id to us
        if isinstance(re, int) and not isinstance(re, bool):
            return self._in_flight.pop(re, None)
        return None
