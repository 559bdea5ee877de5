"""A session as the chat layer sees it: who is on it and where, and a peer to send to.

The server adapts each connection (TCP, WebSocket, admin socket) to :class:`Peer`; the chat layer
never sees a socket.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

import trio

from utuvox.protocol import Event, Reply, Request, utc_now

from .wire import Wire


class Peer(Protocol):
    def deliver(self, wire: Wire) -> None:
        """Queue an event for this session. Never blocks; a peer that cannot keep up is closed."""

    def send(self, frame: Reply | Event, request: Request | None = None) -> None:
        """Queue a reply (``request`` is what it answers) or a one-off event."""

    def acknowledge(self, request: Request, room: str, seq: int) -> None:
        """Queue the ``ok`` of a stored message: ``send(Ok(re=request.id, room=room, seq=seq), request)``,
        made without a model because every message a server takes in gets one."""

    async def send_paced(self, frame: Reply | Event) -> None:
        """Queue a frame, waiting while the queue is full (back-pressure, for bulk transfers)."""

    def close(self, reason: str, code: str) -> None:
        """Say goodbye with ``reason`` and close the connection once what is queued is sent."""


@dataclass(frozen=True, slots=True)
class Identity:
    name: str
    is_admin: bool
    is_bot: bool

    @property
    def key(self) -> str:
        return self.name.lower()


_ids = itertools.count(1)


@dataclass(eq=False)
class Session:
    peer: Peer
    transport: str  # "tcp", "ws" or "admin" (the privileged Unix socket)
    address: str
    id: int = field(default_factory=lambda: next(_ids))
    connected_at: datetime = field(default_factory=utc_now)
    user: Identity | None = None
    # The names of the rooms joined, in the order joined; the last is the current room.
    rooms: list[str] = field(default_factory=list)
    # On the admin socket: the OS user who connected (from SO_PEERCRED).
    operator: str | None = None
    # Messages queued for commit but not yet acknowledged, and where to wait when there are too many.
    unacked: int = 0
    ack_wait: trio.lowlevel.ParkingLot = field(default_factory=trio.lowlevel.ParkingLot)

    @property
    def current_room(self) -> str | None:
        return self.rooms[-1] if self.rooms else None

    @property
    def is_operator(self) -> bool:
        """May make admin requests: the admin socket, or a logged-in admin user."""
        return self.transport == "admin" or (self.user is not None and self.user.is_admin)

    @property
    def actor(self) -> str:
        """Who acts, for the admin log."""
        if self.transport == "admin":
            return f"console:{self.operator or 'unknown'}"
        return self.user.name if self.user else "anonymous"
