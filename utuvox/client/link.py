"""One connection to the server: a reader task that matches replies to the requests awaiting them, the
requests in flight, and the routes of file transfers.

A :class:`Link` lives as long as its socket. The client makes a new one after each reconnect; requests
still waiting when a link dies fail with :class:`~utuvox.client.errors.Disconnected`.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from typing import Any

import trio

from utuvox.protocol import Reply, Request, json_codec
from utuvox.protocol.core import Goodbye

from .errors import Disconnected
from .transport import Transport, TransportClosed

log = logging.getLogger("utuvox.client")

# Request ids are unique for the whole process, so a late answer to a request abandoned on an earlier
# connection can never be taken for the answer to a new one.
_ids = itertools.count(1)

OnReply = Callable[[Reply], None]


class Pending:
    """A request sent and not answered yet."""

    __slots__ = ("done", "on_reply", "reply", "request", "track")

    def __init__(self, request: Request, track: bool, on_reply: OnReply | None) -> None:
        self.request = request
        self.track = track
        self.on_reply = on_reply
        self.done = trio.Event()
        self.reply: Reply | None = None


class Link:
    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.pending: dict[int, Pending] = {}
        # Frames of a transfer in progress (by ``download_id``), which carry no ``re``.
        self.routes: dict[str, trio.MemorySendChannel[Any]] = {}
        # Downloads given up (cancelled, failed a check): the rest of their frames is dropped.
        self.discard: set[str] = set()
        self.closed = trio.Event()
        self.reason = ""
        self.goodbye: Goodbye | None = None
        self.highest_id = 0

    def close(self, reason: str) -> None:
        if not self.closed.is_set():
            self.reason = reason
            self.closed.set()
            for pending in self.pending.values():
                pending.done.set()  # woken with no reply: the caller raises Disconnected
            for route in self.routes.values():
                route.close()

    async def send(self, request: Request, *, track: bool = True, on_reply: OnReply | None = None) -> Pending:
        """Send ``request`` with a fresh id; :meth:`wait` for its reply later. Sending and waiting are
        separate so that a bulk sender can keep several requests in flight, in order.

        ``track`` says whether the client should learn from the reply (who it is logged in as, which
        rooms it is in); ``on_reply`` runs in the reader as the reply arrives, before any later frame.
        """
        if self.closed.is_set():
            raise Disconnected(f"Connection lost: {self.reason}")
        rid = next(_ids)
        self.highest_id = rid
        request = request.model_copy(update={"id": rid})
        pending = self.pending[rid] = Pending(request, track, on_reply)
        try:
            await self.transport.send(json_codec.encode(request))
        except TransportClosed as exc:
            self.close(str(exc))
        except BaseException:
            self.pending.pop(rid, None)
            raise
        return pending

    async def wait(self, pending: Pending) -> Reply:
        try:
            await pending.done.wait()
        finally:
            if pending.request.id is not None:
                self.pending.pop(pending.request.id, None)  # type: ignore[arg-type]
        if pending.reply is None:
            raise Disconnected(f"Connection lost: {self.reason}")
        return pending.reply

    async def call(self, request: Request, *, track: bool = True, on_reply: OnReply | None = None) -> Reply:
        """Send ``request`` and wait for the reply with the same ``re``."""
        pending = await self.send(request, track=track, on_reply=on_reply)
        return await self.wait(pending)

    def resolve(self, reply: Reply) -> Pending | None:
        """Hand a reply to the request waiting for it; ``None`` if nothing waits for it."""
        pending = self.pending.pop(reply.re, None) if isinstance(reply.re, int) else None
        if pending is not None:
            pending.reply = reply
            if pending.on_reply is not None:
                pending.on_reply(reply)
            pending.done.set()
        return pending

    def is_late_answer(self, reply: Reply) -> bool:
        """A reply to one of our requests that nobody awaits any more (cancelled, or timed out)."""
        return isinstance(reply.re, int) and 0 < reply.re <= self.highest_id

    def route(self, frame: Any) -> bool:
        """Hand a transfer's frame to the transfer; ``False`` if it belongs to none."""
        key = getattr(frame, "download_id", None)
        if not isinstance(key, str) or getattr(frame, "re", None) is not None:
            return False
        if key in self.discard:
            if frame.type in ("download_end", "download_failed"):
                self.discard.discard(key)
            return True
        route = self.routes.get(key)
        if route is None:
            return False
        try:
            route.send_nowait(frame)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            self.routes.pop(key, None)  # type: ignore[arg-type]
        return True

    async def read(self, on_frame: Callable[[Link, Any], None]) -> None:
        """Read frames until the connection ends, handing each to ``on_frame`` in order."""
        try:
            while True:
                data = await self.transport.receive()
                try:
                    frame = json_codec.decode_server_frame(data)
                except Exception as exc:  # a frame this SDK version does not know: skip it, keep going
                    log.warning("ignoring a frame the client cannot read: %s", exc)
                    continue
                if isinstance(frame, Goodbye):
                    self.goodbye = frame
                if not self.route(frame):
                    on_frame(self, frame)
        except TransportClosed as exc:
            reason = self.goodbye.reason if self.goodbye is not None else str(exc)
            self.close(reason)
