"""In-process stand-ins for unit tests of the chat rules: a peer that keeps what it is sent, and a Chat
built on a store with no server around it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from utuvox.chat.admin_key import AdminKey
from utuvox.chat.bus import LocalBus
from utuvox.chat.config import ChatConfig
from utuvox.chat.handlers import CORE
from utuvox.chat.service import Chat
from utuvox.chat.session import Identity, Session
from utuvox.chat.wire import Wire
from utuvox.protocol import Event, Reply, Request
from utuvox.protocol import core as p
from utuvox.store import Store


class FakePeer:
    """A :class:`~utuvox.chat.session.Peer` that keeps every frame it is given, in order."""

    def __init__(self) -> None:
        self.frames: list[Reply | Event] = []
        self.closed: tuple[str, str] | None = None

    def deliver(self, wire: Wire) -> None:
        self.frames.append(wire.event)

    def send(self, frame: Reply | Event, request: Request | None = None) -> None:
        self.frames.append(frame)

    def acknowledge(self, request: Request, room: str, seq: int) -> None:
        self.frames.append(p.Ok(re=request.id, room=room, seq=seq))

    async def send_paced(self, frame: Reply | Event) -> None:
        self.frames.append(frame)

    async def reserve(self, nbytes: int) -> None:
        await trio.lowlevel.checkpoint()

    def close(self, reason: str, code: str) -> None:
        self.closed = (reason, code)

    def of_type(self, kind: str) -> list[Any]:
        return [f for f in self.frames if f.type == kind]


class BrokenPeer(FakePeer):
    """A peer whose delivery fails, as a bug in a transport would."""

    def deliver(self, wire: Wire) -> None:
        raise RuntimeError("this peer cannot take events")


def session_of(chat: Chat, name: str | None = None, *, admin: bool = False, transport: str = "tcp",
               peer: FakePeer | None = None) -> tuple[Session, FakePeer]:
    """A connected session (signed in as ``name`` if given, without a password: the rules under test
    start after login)."""
    peer = peer or FakePeer()
    session = Session(peer, transport, "127.0.0.1:1")
    chat.connect(session)
    if name is not None:
        session.user = Identity(name, admin, False)
    return session, peer


@asynccontextmanager
async def running_chat(store: Store, tmp_path: Path, *, extra: Callable[[Chat], Any] | None = None,
                       **config: Any) -> AsyncIterator[Chat]:
    """A started Chat with the core commands, its store and delivery running in a nursery."""
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        chat = Chat(store, LocalBus(), ChatConfig(**config), AdminKey(tmp_path / "admin_key.txt"))
        chat.register(CORE)
        if extra is not None:
            extra(chat)
        await nursery.start(chat.delivery.run)
        await chat.start()
        yield chat
        nursery.cancel_scope.cancel()
