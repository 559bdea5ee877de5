"""One connection to the server, driven with trio: a reader task feeds what arrives to a
:class:`~utuvox.protocol.client_protocol.ClientProtocol` and acts on its events (wakes the request an
answer belongs to, hands a download's frames to the download, passes everything else on).

A :class:`Link` lives as long as its socket. The client makes a new one after each reconnect; requests
still waiting when a link dies fail with :class:`~utuvox.client.errors.Disconnected`.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from typing import Any

import trio

from utuvox.protocol import Reply, Request
from utuvox.protocol import client_protocol as cp
from utuvox.protocol.core import Goodbye

from .errors import BAD_FRAME, Disconnected, UtuVoxError
from .transport import Transport, TransportClosed

log = logging.getLogger("utuvox.client")

# Request ids are unique for the whole process, so a late answer to a request abandoned on an earlier
# connection can never be taken for the answer to a new one.
_ids = itertools.count(1)

OnReply = Callable[[Reply], None]
OnAnswer = Callable[[Request, Reply], None]


class Pending:
    """A request sent and not answered yet."""

    __slots__ = ("abandoned", "done", "failure", "on_reply", "reply", "request", "track")

    def __init__(self, request: Request, track: bool, on_reply: OnReply | None) -> None:
        self.request = request
        self.track = track
        self.on_reply = on_reply
        self.done = trio.Event()
        self.reply: Reply | None = None
        self.failure: UtuVoxError | None = None
        self.abandoned = False  # its waiter gave up (cancelled, timed out): the answer changes nothing


class Link:
    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.protocol = cp.ClientProtocol(transport.framing, ids=_ids)
        # Where each download's frames go (by ``download_id``), set as its ``download_start`` arrives.
        self.routes: dict[str, trio.MemorySendChannel[Any]] = {}
        self.closed = trio.Event()
        self.reason = ""

    @property
    def goodbye(self) -> Goodbye | None:
        return self.protocol.goodbye

    def close(self, reason: str) -> None:
        self._handle(self.protocol.close(reason), None, None)

    async def send(self, request: Request, *, track: bool = True, on_reply: OnReply | None = None) -> Pending:
        """Send ``request`` with a fresh id; :meth:`wait` for its reply later. Sending and waiting are
        separate so that a bulk sender can keep several requests in flight, in order.

        ``track`` says whether the client should learn from the reply (who it is logged in as, which
        rooms it is in); ``on_reply`` runs in the reader as the reply arrives, before any later frame.
        """
        if self.closed.is_set():
            raise Disconnected(f"Connection lost: {self.reason}")
        pending = Pending(request, track, on_reply)
        data = self.protocol.send(request, tag=pending)
        try:
            await self.transport.send(data)
        except TransportClosed as exc:
            self.close(str(exc))
        except BaseException:
            pending.abandoned = True
            raise
        return pending

    async def wait(self, pending: Pending) -> Reply:
        try:
            await pending.done.wait()
        finally:
            if not pending.done.is_set():
                pending.abandoned = True
        if pending.failure is not None:
            raise pending.failure
        assert pending.reply is not None
        return pending.reply

    async def call(self, request: Request, *, track: bool = True, on_reply: OnReply | None = None) -> Reply:
        """Send ``request`` and wait for the reply with the same ``re``."""
        pending = await self.send(request, track=track, on_reply=on_reply)
        return await self.wait(pending)

    def drop_download(self, download_id: str) -> None:
        """The download was given up (cancelled, failed a check): the rest of its frames is dropped."""
        self.routes.pop(download_id, None)
        self.protocol.drop_download(download_id)

    async def read(self, on_frame: Callable[[Link, Any], None], on_answer: OnAnswer | None = None) -> None:
        """Read until the connection ends. Each frame that answers no request goes to ``on_frame``, in
        order; ``on_answer`` hears each tracked, successful answer before its request is woken."""
        try:
            while not self.closed.is_set():
                data = await self.transport.receive()
                self._handle(self.protocol.receive_data(data), on_frame, on_answer)
        except TransportClosed as exc:
            goodbye = self.protocol.goodbye
            self.close(goodbye.reason if goodbye is not None else str(exc))

    def _handle(self, events: list[cp.ClientEvent], on_frame: Callable[[Link, Any], None] | None,
                on_answer: OnAnswer | None) -> None:
        for event in events:
            if isinstance(event, cp.Received):
                if on_frame is not None:
                    on_frame(self, event.frame)
            elif isinstance(event, cp.Answer):
                self._answer(event, on_answer)
            elif isinstance(event, cp.TransferFrame):
                self._transfer(event)
            elif isinstance(event, cp.RequestFailed):
                pending: Pending = event.tag
                pending.failure = (Disconnected(f"Connection lost: {event.reason}") if event.lost
                                   else UtuVoxError(BAD_FRAME, event.reason, re=event.request.id))
                pending.done.set()
            elif isinstance(event, cp.Closed):
                self.reason = event.reason
                self.closed.set()
                for route in self.routes.values():
                    route.close()
            elif isinstance(event, cp.UnknownFrame):
                log.debug("ignoring a frame of unknown type %r", event.type)
            else:  # a frame this SDK version cannot read: skip it, keep going
                log.warning("ignoring a frame the client cannot read: %s", event.reason)

    def _answer(self, event: cp.Answer, on_answer: OnAnswer | None) -> None:
        pending: Pending = event.tag
        reply = event.reply
        if pending.abandoned:
            download_id = getattr(reply, "download_id", None)
            if isinstance(download_id, str):
                self.protocol.drop_download(download_id)
            return
        pending.reply = reply
        if pending.on_reply is not None:
            pending.on_reply(reply)
        if on_answer is not None and pending.track:
            on_answer(event.request, reply)
        pending.done.set()

    def _transfer(self, event: cp.TransferFrame) -> None:
        route = self.routes.get(event.download_id)
        if route is None:
            return
        try:
            route.send_nowait(event.frame)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            self.routes.pop(event.download_id, None)
