"""One node of a cluster: what it tells the others over the broker, and what it makes of what they say.

Every message is one JSON object on the cluster's one channel (so messages from one node arrive in the
order it sent them): ``{"node": NAME, "kind": KIND, ...}``. The kinds:

- ``doorbell``: after each commit batch, the rooms it wrote to and their last sequence numbers. Other
  nodes read the new events from the database (:class:`utuvox.chat.delivery.InOrder`); the broker never
  carries an event itself. A sweep every few seconds (and after a broker reconnect) compares every room
  with the database, so a lost doorbell costs a delay, never an event.
- ``state`` (every :data:`HEARTBEAT` seconds, and to answer ``hello``): the node's sessions, whole; it is
  also the heartbeat. A node not heard from for :data:`EXPIRY` seconds is dead: its sessions disappear.
- ``session`` / ``gone``: one session changed or ended, at once (the next ``state`` repairs a lost one).
- ``bye``: the node stops.
- anything else (bans, kicks, private messages...) goes to the handler the chat or administration layer
  registered with :meth:`Cluster.on`.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from utuvox.chat.elsewhere import Handler, RemoteSession
from utuvox.chat.rooms import Room
from utuvox.chat.service import Chat
from utuvox.chat.session import Session
from utuvox.protocol import core as p
from utuvox.store.postgres import PostgresStore

from .broker import Broker

log = logging.getLogger("utuvox.cluster")

HEARTBEAT = 5.0  # seconds between a node's full states
EXPIRY = 15.0  # seconds after which a silent node counts as dead
SWEEP = 2.0  # seconds between comparisons of every room with the database


@dataclass
class _Node:
    heard: float
    sessions: dict[int, RemoteSession] = field(default_factory=dict)


async def _wait_for(work: Awaitable[Any]) -> None:
    try:
        await work
    except Exception:
        log.exception("could not carry out what another node said")


def _describe(node: str, session: Session) -> dict[str, Any]:
    user = session.user
    return {"id": session.id, "user": user.name if user else None, "is_admin": bool(user and user.is_admin),
            "is_bot": bool(user and user.is_bot), "transport": session.transport, "address": session.address,
            "rooms": list(session.rooms), "connected_at": session.connected_at.isoformat(),
            "operator": session.operator, "nick": session.nick}


def _remote(node: str, d: dict[str, Any]) -> RemoteSession:
    return RemoteSession(node=node, id=int(d["id"]), user=d.get("user"), is_admin=bool(d.get("is_admin")),
                         is_bot=bool(d.get("is_bot")), transport=str(d.get("transport", "")),
                         address=str(d.get("address", "")), rooms=tuple(d.get("rooms") or ()),
                         connected_at=str(d.get("connected_at", "")), operator=d.get("operator"),
                         nick=d.get("nick"))


class Cluster:
    """The :class:`utuvox.chat.elsewhere.Elsewhere` of a node joined to others by a broker."""

    def __init__(self, chat: Chat, store: PostgresStore, broker: Broker, node: str, *,
                 heartbeat: float = HEARTBEAT, expiry: float = EXPIRY) -> None:
        self.heartbeat = heartbeat
        self.expiry = expiry
        self.chat = chat
        self.store = store
        self.broker = broker
        self.node = node
        self._nodes: dict[str, _Node] = {}
        self._handlers: dict[str, Handler] = {}
        self._sweep_now = trio.Event()
        self._by_id: dict[int, Room] = {}
        self.doorbells_heard = 0
        self._nursery: trio.Nursery | None = None
        # Called with (node, its sessions) when a node stops or is taken for dead.
        self.on_node_lost: list[Callable[[str, list[RemoteSession]], None]] = []
        # Called with a room the database no longer has (deleted by a node whose word was lost).
        self.on_room_vanished: list[Callable[[Room], None]] = []

    # --- Elsewhere ------------------------------------------------------------------------------

    def nodes(self) -> list[str]:
        return sorted([self.node, *self._nodes])

    def sessions(self) -> list[RemoteSession]:
        return [s for node in self._nodes.values() for s in node.sessions.values()]

    def sessions_of(self, user_key: str) -> list[RemoteSession]:
        return [s for s in self.sessions() if s.user_key == user_key]

    def in_room(self, room_key: str, user_key: str) -> bool:
        return any(s.user_key == user_key and any(r.lower() == room_key for r in s.rooms) for s in self.sessions())

    def room_members(self, room_key: str) -> list[RemoteSession]:
        return [s for s in self.sessions() if any(r.lower() == room_key for r in s.rooms)]

    def changed(self, session: Session) -> None:
        self._send("session", session=_describe(self.node, session))

    def gone(self, session: Session) -> None:
        self._send("gone", id=session.id)

    def tell(self, kind: str, **fields: Any) -> None:
        self._send(kind, **fields)

    def on(self, kind: str, handler: Handler) -> None:
        self._handlers[kind] = handler

    # --- sending --------------------------------------------------------------------------------

    def _send(self, kind: str, **fields: Any) -> None:
        self.broker.publish(json.dumps({**fields, "node": self.node, "kind": kind}).encode())

    def rang(self, last: dict[int, int]) -> None:
        """The store committed a batch: ring the other nodes' doorbells (one publish per batch)."""
        rooms = []
        for room_id, seq in last.items():
            room = self._room_by_id(room_id)
            rooms.append([room_id, room.name if room else None, seq])
        self._send("doorbell", rooms=rooms)

    def _state(self) -> None:
        sessions = [_describe(self.node, s) for s in self.chat.all_sessions()]
        self._send("state", sessions=sessions)

    # --- receiving ------------------------------------------------------------------------------

    def received(self, data: bytes) -> None:
        try:
            message = json.loads(data)
            node, kind = message["node"], message["kind"]
        except (ValueError, KeyError, TypeError):
            log.warning("unreadable message on the broker: %r", data[:200])
            return
        if node == self.node:
            return
        try:
            self._dispatch(node, kind, message)
        except Exception:
            log.exception("could not handle %s from node %s", kind, node)

    def _dispatch(self, node: str, kind: str, message: dict[str, Any]) -> None:
        now = trio.current_time()
        if kind == "doorbell":
            self.doorbells_heard += 1
            for room_id, name, seq in message["rooms"]:
                room = self._room_by_id(room_id)
                if room is not None:
                    self.chat.delivery.heard(room, seq)
                elif name is not None:
                    self._adopt(name)
            return
        if kind == "bye":
            self._drop(node)
            return
        peer = self._nodes.get(node)
        if peer is None:
            peer = self._nodes[node] = _Node(now)
            log.info("node %s joined the cluster", node)
            if kind != "state" and kind != "hello":
                self._send("hello")  # ask for its whole state
        peer.heard = now
        if kind == "state":
            peer.sessions = {int(d["id"]): _remote(node, d) for d in message["sessions"]}
        elif kind == "hello":
            self._state()
        elif kind == "session":
            remote = _remote(node, message["session"])
            peer.sessions[remote.id] = remote
        elif kind == "gone":
            peer.sessions.pop(int(message["id"]), None)
        else:
            handler = self._handlers.get(kind)
            if handler is not None:
                result = handler(message)
                if inspect.isawaitable(result) and self._nursery is not None:
                    self._nursery.start_soon(_wait_for, result)

    def _room_by_id(self, room_id: int) -> Room | None:
        room = self._by_id.get(room_id)
        if room is None or room.deleted or self.chat.room_here(room.key) is not room:
            self._by_id = {r.id: r for r in self.chat.rooms_here()}
            room = self._by_id.get(room_id)
        return room

    def _adopt(self, name: str) -> None:
        """A room this node has not heard of (created elsewhere): load it in the background."""
        if self._nursery is not None:
            self._nursery.start_soon(self._adopt_now, name)

    async def _adopt_now(self, name: str) -> None:
        try:
            record = await self.store.get_room(name)
            if record is not None:
                await self.chat.adopt_room(record)
        except Exception as exc:
            log.warning("could not load room %s: %s", name, exc)

    def _drop(self, node: str) -> None:
        gone = self._nodes.pop(node, None)
        if gone is None:
            return
        log.info("node %s left the cluster (%d sessions)", node, len(gone.sessions))
        for handler in self.on_node_lost:
            handler(node, list(gone.sessions.values()))
        # Its users left the rooms they are in nowhere else. One node says so: the first by name.
        if self._nursery is not None and self.node == min(self.nodes()):
            left = {(r.lower(), s.user) for s in gone.sessions.values() if s.user for r in s.rooms}
            for room_key, user in sorted(left, key=lambda pair: (pair[0], pair[1].lower())):
                self._nursery.start_soon(self._leave, room_key, user)

    async def _leave(self, room_key: str, user: str) -> None:
        room = self.chat.room_here(room_key)
        if room is None or room.deleted or self.chat.user_in_room(room, user):
            return
        try:
            await self.chat.record_and_wait(room, lambda seq: p.LeaveEvent(room=room.name, seq=seq, user=user))
        except Exception as exc:
            log.warning("could not record %s leaving %s: %s", user, room.name, exc)

    # --- background -----------------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Subscribe, say hello, then heartbeat, expire silent nodes and sweep rooms until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.broker.run, self.received, self._sweep_now.set)
            self.store.on_batch = self.rang
            self.chat.meet(self)
            self._send("hello")
            self._state()
            nursery.start_soon(self._heartbeat)
            nursery.start_soon(self._sweep)
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self.store.on_batch = None
                self._send("bye")
                with trio.move_on_after(1.0, shield=True):
                    await trio.sleep(0.1)  # let the goodbye leave

    async def _heartbeat(self) -> None:
        """Send this node's state every ``heartbeat`` seconds; look for silent nodes four times a second."""
        due = trio.current_time() + self.heartbeat
        while True:
            await trio.sleep(min(0.25, self.heartbeat))
            now = trio.current_time()
            if now >= due:
                self._state()
                due = now + self.heartbeat
            for name, peer in list(self._nodes.items()):
                if now - peer.heard > self.expiry:
                    log.warning("node %s silent for %.0f s: taken for dead", name, now - peer.heard)
                    self._drop(name)

    async def _sweep(self) -> None:
        """Compare every room with the database now and then: a missed doorbell is caught here."""
        while True:
            with trio.move_on_after(SWEEP):
                await self._sweep_now.wait()
            self._sweep_now = trio.Event()
            rooms = list(self.chat.rooms_here())  # before the query: a room made during it is not missing
            try:
                last = await self.store.last_seqs()
            except Exception as exc:
                log.warning("could not compare rooms with the database: %s", exc)
                continue
            known = {r.id: r for r in self.chat.rooms_here()}
            for room_id, (name, seq) in last.items():
                room = known.get(room_id)
                if room is not None:
                    self.chat.delivery.heard(room, seq)
                elif not self.chat.has_room(name):
                    await self._adopt_now(name)
            for room in rooms:
                if room.id not in last and not room.deleted:
                    for vanished in self.on_room_vanished:
                        vanished(room)
