"""A session as the chat layer sees it: who is on it and where, and a peer to send to.

The server adapts each connection (TCP, WebSocket, admin socket) to :class:`Peer`; the chat layer
never sees a socket.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

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

    async def reserve(self, nbytes: int) -> None:
        """Wait until ``nbytes`` more fit in the session's send queue: before building a large reply."""

    def close(self, reason: str, code: str) -> None:
        """Say goodbye with ``reason`` and close the connection once what is queued is sent."""


async def let_others_in() -> None:
    """Let the connections that are ready run before answering a ping. Clients sync by pinging after
    someone else spoke ("did what they sent reach me?"), and data that arrived on two sockets in the same
    instant is run in an order trio deliberately varies; two turns of the loop take in what came with the
    ping and what came just behind it, so its pong follows them."""
    for _ in range(2):
        await trio.lowlevel.checkpoint()


@dataclass(frozen=True, slots=True)
class Identity:
    name: str
    is_admin: bool
    is_bot: bool
    guest: bool = False  # an IRC connection that gave a nick only: no account behind the name

    @property
    def key(self) -> str:
        return self.name.lower()


_ids = itertools.count(1)
INCOMING_WAIT = 1.0  # seconds a request waits at most for private messages on their way to its session


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
    # On IRC: the nick, the session's face there (the account stays the identity), and the user name
    # its client gave (USER).
    nick: str | None = None
    ident: str | None = None
    realname: str | None = None
    # Why the session ended, as its client said (IRC QUIT), for the others in its rooms.
    quit_reason: str | None = None
    # Whether the session is sent its own private messages back (IRC echo-message).
    echo_private: bool = False
    # Pipelined writes (messages) handed to the store, and how many of them have been answered (committed
    # and acknowledged, or failed). Both only grow, so "everything written so far" is a number to wait for.
    writes_started: int = 0
    writes_settled: int = 0
    incoming: int = 0  # private messages to this session being stored, not yet delivered
    _settle_wait: trio.lowlevel.ParkingLot = field(default_factory=trio.lowlevel.ParkingLot, repr=False)
    # Answers waiting for the writes started before them (after_writes), in the order they were made.
    _after_writes: deque[tuple[int, Callable[[], None]]] = field(default_factory=deque, repr=False)

    @property
    def unacked(self) -> int:
        """Writes queued for commit and not answered yet."""
        return self.writes_started - self.writes_settled

    def write_started(self) -> None:
        self.writes_started += 1

    def write_settled(self) -> None:
        """A write was committed and answered (or failed and said so). The store answers a session's
        writes in the order they were queued."""
        self.writes_settled += 1
        if self._settle_wait:  # nobody waits, almost always: spare the call
            self._settle_wait.unpark_all()
        if self._after_writes:
            self._answer_due()

    def after_writes(self, answer: Callable[[], None]) -> None:
        """Run ``answer`` once the writes started so far are answered: at once if they are, else right
        after the last of them, before any later write's answer. The caller goes on meanwhile, so a
        pipelining client's next lines are read while the earlier ones commit."""
        if self.writes_settled >= self.writes_started:
            answer()
        else:
            self._after_writes.append((self.writes_started, answer))

    def _answer_due(self) -> None:
        due = self._after_writes
        while due and due[0][0] <= self.writes_settled:
            due.popleft()[1]()

    async def settle(self, upto: int | None = None, *, below: int = 1) -> None:
        """Wait until the writes started so far (or the first ``upto``) are answered; with ``below``,
        only until fewer than that many are outstanding (back-pressure for a pipelining sender)."""
        target = self.writes_started if upto is None else upto
        while target - self.writes_settled >= below:
            await self._settle_wait.park()

    def incoming_started(self) -> None:
        """A private message to this session is being stored; it is delivered once it is."""
        self.incoming += 1

    def incoming_done(self) -> None:
        self.incoming -= 1
        self._settle_wait.unpark_all()

    async def take_incoming(self) -> None:
        """Wait until the private messages already on their way to this session are delivered: a request
        it makes afterwards (a PING, say) is then answered after them, as the senders, who sent first,
        expect. Bounded, so that a stream of messages to it cannot hold its requests back."""
        with trio.move_on_after(INCOMING_WAIT):
            while self.incoming:
                await self._settle_wait.park()

    async def catch_up(self) -> None:
        """Before a request that is not pipelined: its answer is to follow the answers to the session's
        earlier writes and the private messages already on their way to it (one session, one order)."""
        if self.unacked:
            await self.settle()
        if self.incoming:
            await self.take_incoming()

    @property
    def current_room(self) -> str | None:
        return self.rooms[-1] if self.rooms else None

    def face(self) -> dict[str, Any]:
        """What events add beside the account name: the IRC nick where it differs, the guest and bot marks."""
        user = self.user
        extra: dict[str, Any] = {}
        if self.nick is not None and user is not None and self.nick != user.name:
            extra["nick"] = self.nick
        if user is not None and user.guest:
            extra["guest"] = True
        if user is not None and user.is_bot:
            extra["bot"] = True
        return extra

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
