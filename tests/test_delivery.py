"""Delivery in seq order, in-process: events another node committed are read from the database (the
truth), whether a doorbell said so or not, and this node's own events wait behind the gap they leave."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from utuvox.chat.admin_key import AdminKey
from utuvox.chat.bus import LocalBus
from utuvox.chat.config import ChatConfig
from utuvox.chat.handlers import CORE
from utuvox.chat.rooms import Room
from utuvox.chat.service import Chat
from utuvox.chat.session import Identity, Session
from utuvox.chat.wire import Wire
from utuvox.cluster.node import Cluster
from utuvox.protocol import core as p
from utuvox.protocol import json_codec
from utuvox.store import StoredEvent
from utuvox.store.postgres import PostgresStore

from .databases import fresh_database


class Member:
    """A peer that keeps what it is given."""

    def __init__(self) -> None:
        self.got: list[Any] = []

    def deliver(self, wire: Wire) -> None:
        self.got.append(wire.event)

    def send(self, frame: Any, request: Any = None) -> None:
        self.got.append(frame)


class Silent:
    """A broker that loses every message: only the database tells this node anything."""

    channel = "lost"

    def publish(self, data: bytes) -> None:
        pass

    async def run(self, on_message: Callable[[bytes], None], on_reconnect: Callable[[], None],
                  *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep_forever()


@pytest.fixture
async def stores() -> AsyncIterator[tuple[PostgresStore, PostgresStore]]:
    """Two nodes' stores on one database: this node's, and the other's."""
    with fresh_database() as url:
        here, there = await PostgresStore.open(url), await PostgresStore.open(url)
        async with trio.open_nursery() as nursery:
            await nursery.start(here.run)
            await nursery.start(there.run)
            yield here, there
            nursery.cancel_scope.cancel()
        await here.close()
        await there.close()


def message(room: str, user: str, text: str) -> p.MessageEvent:
    return p.MessageEvent(room=room, seq=0, user=user, text=text)


async def commit_elsewhere(store: PostgresStore, room_id: int, event: p.MessageEvent) -> int:
    done = trio.Event()
    seqs: list[int] = []

    def on_commit(seq: int, error: BaseException | None) -> None:
        assert error is None
        seqs.append(seq)
        done.set()

    body = json_codec.encode(event)[:-1].decode()
    store.submit_event(StoredEvent(room_id, 0, event.ts.timestamp(), event.type, event.user, body), on_commit)
    await done.wait()
    return seqs[0]


async def test_own_events_wait_behind_another_node_s_and_a_lost_doorbell_is_caught_by_the_sweep(
        stores: tuple[PostgresStore, PostgresStore], tmp_path: Path) -> None:
    here, there = stores
    chat = Chat(here, LocalBus(), ChatConfig(), AdminKey(tmp_path / "key"))
    chat.register(CORE)
    cluster = Cluster(chat, here, Silent(), "here")
    record = await here.create_room("lobby", None)
    await chat.start()
    room = chat.room("lobby")
    member = Member()
    session = Session(member, "tcp", "test")  # type: ignore[arg-type]
    session.user = Identity("watcher", False, False)
    chat.bus.subscribe(room.key, session)
    async with trio.open_nursery() as nursery:
        await nursery.start(chat.delivery.run)
        await nursery.start(cluster.run)
        # The other node commits 1 and 2; this node, not told, commits its own: number 3.
        assert [await commit_elsewhere(there, record.id, message("lobby", "far", t)) for t in "ab"] == [1, 2]
        acked: list[int] = []
        chat.record(room, message("lobby", "near", "c"), lambda seq, error: acked.append(seq))
        with trio.fail_after(5):
            while len(member.got) < 3:
                await trio.sleep(0.01)
        # Its own event waited for the gap to be read from the database; its ok came after its echo.
        assert [(e.seq, e.text) for e in member.got] == [(1, "a"), (2, "b"), (3, "c")]
        assert acked == [3]
        # Another node's event with no doorbell at all (lost by the broker) arrives by the sweep.
        assert await commit_elsewhere(there, record.id, message("lobby", "far", "d")) == 4
        with trio.fail_after(5):
            while len(member.got) < 4:
                await trio.sleep(0.01)
        assert [e.seq for e in member.got] == [1, 2, 3, 4] and room.delivered == 4
        nursery.cancel_scope.cancel()


async def test_a_room_nobody_here_follows_is_not_read_and_a_join_still_sees_all(
        stores: tuple[PostgresStore, PostgresStore], tmp_path: Path) -> None:
    here, there = stores
    chat = Chat(here, LocalBus(), ChatConfig(), AdminKey(tmp_path / "key"))
    chat.register(CORE)
    record = await here.create_room("quiet", None)
    await chat.start()
    room: Room = chat.room("quiet")
    async with trio.open_nursery() as nursery:
        await nursery.start(chat.delivery.run)
        for text in "abc":
            seq = await commit_elsewhere(there, record.id, message("quiet", "far", text))
            chat.delivery.heard(room, seq)
        assert room.delivered == 3 and chat.delivery.fetches == 0 and chat.delivery.skipped == 3
        page, more = await chat.history_page(room, None, 10)
        assert [(e.seq, e.text) for e in page] == [(1, "a"), (2, "b"), (3, "c")] and not more
        nursery.cancel_scope.cancel()


class Talker(Member):
    def acknowledge(self, request: Any, room: str, seq: int) -> None:
        self.got.append(("ok", request.id, room, seq))


async def test_a_session_s_answers_keep_its_order_when_one_room_waits_for_another_node(
        stores: tuple[PostgresStore, PostgresStore], tmp_path: Path) -> None:
    here, there = stores
    chat = Chat(here, LocalBus(), ChatConfig(), AdminKey(tmp_path / "key"))
    chat.register(CORE)
    slow = await here.create_room("slow", None)
    await here.create_room("fast", None)
    await chat.start()
    talker = Talker()
    session = Session(talker, "tcp", "test")  # type: ignore[arg-type]
    session.user = Identity("talker", False, False)
    for name in ("slow", "fast"):
        chat.bus.subscribe(name, session)
        session.rooms.append(name)
    async with trio.open_nursery() as nursery:
        await nursery.start(chat.delivery.run)
        # Another node wrote to "slow" unheard of: this node's next event there waits for a read.
        await commit_elsewhere(there, slow.id, message("slow", "far", "first"))
        await chat.handle(session, p.Message(id=1, room="slow", text="one"))
        await chat.handle(session, p.Message(id=2, room="fast", text="two"))
        with trio.fail_after(5):
            while len([g for g in talker.got if isinstance(g, tuple)]) < 2:
                await trio.sleep(0.01)
        oks = [g for g in talker.got if isinstance(g, tuple)]
        assert oks == [("ok", 1, "slow", 2), ("ok", 2, "fast", 1)]
        assert session.writes_settled == 2
        nursery.cancel_scope.cancel()
