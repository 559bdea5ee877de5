"""The chat rules in-process: a Chat built directly on a store, fake peers, no sockets. What the command
table promises (steps in one place), and the mechanisms every command shares."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
from trio.testing import MockClock

from utuvox.chat import admin
from utuvox.chat.limits import LimitsConfig, Rate
from utuvox.chat.service import Call, Chat, Command
from utuvox.protocol import ProtocolError, Reply
from utuvox.protocol import admin as a
from utuvox.protocol import core as p
from utuvox.store import MemoryStore, SqliteStore, Store

from .fakes import BrokenPeer, session_of
from .fakes import running_chat as chat_on


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """The rules hold the same on any store that keeps the store contract."""
    opened: Store = await MemoryStore.open() if request.param == "memory" else await SqliteStore.open(
        tmp_path / "chat.db")
    yield opened
    await opened.close()


async def settled(peer: Any, kind: str, count: int = 1) -> list[Any]:
    """The frames of ``kind`` once ``count`` of them have come (commits answer from the store's task)."""
    with trio.fail_after(5):
        while len(peer.of_type(kind)) < count:
            await trio.sleep(0.001)
    return peer.of_type(kind)


async def in_room(chat: Chat, room: str, *names: str) -> list[Any]:
    """Sessions of ``names`` in ``room`` (the first creates it); their peers."""
    peers = []
    for i, name in enumerate(names):
        session, peer = session_of(chat, name)
        kind = p.Create if i == 0 else p.Join
        await chat.handle(session, kind(id=f"enter-{name}", room=room))
        peers.append((session, peer))
    return peers


async def test_a_message_is_numbered_acknowledged_delivered_and_kept(store: Store, tmp_path: Path) -> None:
    async with chat_on(store, tmp_path) as chat:
        [(alice, alice_peer), (_bob, bob_peer)] = await in_room(chat, "lobby", "alice", "bob")
        assert await chat.handle(alice, p.Message(id=1, text="hi bob")) is None  # answered once committed
        [ok] = await settled(alice_peer, "ok")
        assert (ok.re, ok.room) == (1, "lobby")
        [event] = await settled(bob_peer, "message")
        assert (event.user, event.text, event.seq) == ("alice", "hi bob", ok.seq)
        page = await chat.handle(alice, p.History(id=2, room="lobby"))
        assert isinstance(page, p.HistoryPage)
        assert [e.text for e in page.events if e.type == "message"] == ["hi bob"]


async def test_the_declared_steps_refuse_before_the_handler_runs(store: Store, tmp_path: Path) -> None:
    async with chat_on(store, tmp_path) as chat:
        anonymous, _ = session_of(chat)
        with pytest.raises(ProtocolError) as refused:
            await chat.handle(anonymous, p.Join(id=1, room="lobby"))
        assert refused.value.code == "not_logged_in"
        [(alice, _)] = await in_room(chat, "lobby", "alice")
        outsider, _ = session_of(chat, "carol")
        with pytest.raises(ProtocolError) as refused:
            await chat.handle(outsider, p.Message(id=2, room="lobby", text="let me in"))
        assert refused.value.code == "not_in_room"  # a member command: the room is checked, not the handler's job
        with pytest.raises(ProtocolError) as refused:
            await chat.handle(alice, a.BanUser(id=3, username="carol"))
        assert refused.value.code == "unknown_type"  # administration is not registered on this chat
        chat.stop_taking_requests()
        with pytest.raises(ProtocolError) as refused:
            await chat.handle(alice, p.Message(id=4, text="too late"))
        assert refused.value.code == "shutting_down"


async def test_a_command_may_be_registered_once_and_its_quota_wraps_its_handler(store: Store, tmp_path: Path) -> None:
    handled: list[str] = []
    charged: list[Any] = []

    class OnePerSession:
        def check(self, call: Call, request: Any) -> None:
            if call.session.id in handled:
                raise ProtocolError("limit_reached", "once is enough")

        def charge(self, call: Call, request: Any, reply: Reply | None) -> None:
            charged.append((call.session.id, reply))

    async def whoami(call: Call, req: p.WhoAmI) -> Reply:
        handled.append(call.session.id)  # type: ignore[arg-type]
        return p.WhoAmIReply(re=req.id, user="counted", is_admin=False, is_bot=False)

    async with chat_on(store, tmp_path) as chat:
        with pytest.raises(ValueError, match="two commands"):
            chat.register([Command(p.WhoAmI, whoami)])  # the core has one already
    other = await MemoryStore.open()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(other.run)
            bare = Chat(other, chat.bus, chat.config, chat.admin_key)
            bare.register([Command(p.WhoAmI, whoami, quota=OnePerSession())])
            session, _ = session_of(bare, "alice")
            first = await bare.handle(session, p.WhoAmI(id=1))
            assert isinstance(first, p.WhoAmIReply) and first.user == "counted"
            with pytest.raises(ProtocolError) as refused:
                await bare.handle(session, p.WhoAmI(id=2))
            assert refused.value.code == "limit_reached"
            assert handled == [session.id] and charged == [(session.id, first)]
            nursery.cancel_scope.cancel()
    finally:
        await other.close()


async def test_a_member_whose_delivery_fails_costs_nobody_else_the_message(store: Store, tmp_path: Path) -> None:
    async with chat_on(store, tmp_path) as chat:
        [(alice, alice_peer), (_bob, bob_peer)] = await in_room(chat, "lobby", "alice", "bob")
        broken, broken_peer = session_of(chat, "mallory", peer=BrokenPeer())
        await chat.handle(broken, p.Join(id="j", room="lobby"))
        await chat.handle(alice, p.Message(id=1, text="still here?"))
        [ok] = await settled(alice_peer, "ok")  # committed, so acknowledged, whatever a member's transport did
        assert ok.re == 1
        assert [e.text for e in await settled(bob_peer, "message")] == ["still here?"]
        assert broken_peer.closed is not None and broken_peer.closed[1] == "internal_error"
        assert alice.writes_settled == alice.writes_started == 1


async def test_a_room_remembers_messages_as_sent_without_holding_on_to_their_sessions(
        store: Store, tmp_path: Path) -> None:
    async with chat_on(store, tmp_path) as chat:
        [(alice, alice_peer), (bob, bob_peer)] = await in_room(chat, "lobby", "alice", "bob")
        await chat.handle(alice, p.Message(id=1, text="hello", action=True))
        await settled(alice_peer, "ok")
        [got] = await settled(bob_peer, "message")
        remembered = [w for w in chat.room("lobby").recent if w.kind == "message"]
        # A session that left must not stay in memory for as long as what it said does.
        assert [w.origin for w in remembered] == [None]
        assert remembered[0].event == got and (got.user, got.text, got.action) == ("alice", "hello", True)
        # What a join shows is what the members got.
        joined = await chat.handle(bob, p.Join(id="again", room="lobby"))
        assert isinstance(joined, p.Joined) and joined.history[-1] == got


async def test_deleting_a_room_tells_its_members_forgets_it_and_runs_the_hooks(store: Store, tmp_path: Path) -> None:
    deleted: list[str] = []

    async def hook(room: Any) -> None:
        deleted.append(room.name)

    async with chat_on(store, tmp_path) as chat:
        chat.when_room_deleted(hook)
        [(alice, alice_peer), (bob, _)] = await in_room(chat, "lobby", "alice", "bob")
        room = chat.room("lobby")
        await chat.delete_room(room, "an admin")
        [gone] = alice_peer.of_type("room_deleted")
        assert (gone.room, gone.by) == ("lobby", "an admin")
        assert not chat.has_room("lobby") and alice.rooms == [] and bob.rooms == []
        assert chat.members("lobby") == () and deleted == ["lobby"]
        assert await store.get_room("lobby") is None
        with pytest.raises(ProtocolError) as refused:
            await chat.handle(alice, p.Message(id=1, room="lobby", text="anyone?"))
        assert refused.value.code == "no_such_room"


async def test_an_operator_tailing_gets_a_room_s_events_until_it_goes(store: Store, tmp_path: Path) -> None:
    async with chat_on(store, tmp_path, extra=admin.install) as chat:
        [(alice, _)] = await in_room(chat, "lobby", "alice")
        operator, operator_peer = session_of(chat, transport="admin")
        assert isinstance(await chat.handle(operator, a.Tail(id=1, room="lobby")), p.Ok)
        await chat.handle(alice, p.Message(id=2, text="watched"))
        assert [e.text for e in await settled(operator_peer, "message")] == ["watched"]
        assert chat.is_tapping(operator)
        [row] = await store.admin_log(actor=None, action="tail", since=None, limit=10)
        assert (row.target, row.outcome) == ("lobby", "ok")
        await chat.disconnect(operator)
        assert not chat.is_tapping(operator)


async def test_an_audited_action_is_logged_whatever_its_outcome(store: Store, tmp_path: Path) -> None:
    async with chat_on(store, tmp_path, extra=admin.install) as chat:
        operator, _ = session_of(chat, transport="admin")
        operator.operator = "root"
        with pytest.raises(ProtocolError) as refused:
            await chat.handle(operator, a.BanUser(id=1, username="nobody"))
        assert refused.value.code == "no_such_user"
        [row] = await store.admin_log(actor=None, action="ban_user", since=None, limit=10)
        assert (row.actor, row.target, row.outcome) == ("console:root", "nobody", "no_such_user")
        user, _ = session_of(chat, "alice")  # not an admin
        with pytest.raises(ProtocolError) as refused:
            await chat.handle(user, a.BanUser(id=2, username="nobody"))
        assert refused.value.code == "forbidden"


# --- time, driven by trio's MockClock: nothing here sleeps for real ------------------------------------


async def test_a_sender_over_its_rate_is_told_when_to_come_back_and_is_served_then(autojump_clock: MockClock,
                                                                                   tmp_path: Path) -> None:
    limits = LimitsConfig(session_messages=Rate(per_second=1, burst=2))
    async with chat_on(await MemoryStore.open(), tmp_path, limits=limits) as chat:
        [(alice, alice_peer)] = await in_room(chat, "lobby", "alice")
        await chat.handle(alice, p.Message(id=1, text="one"))
        await chat.handle(alice, p.Message(id=2, text="two"))
        with pytest.raises(ProtocolError) as refused:
            await chat.handle(alice, p.Message(id=3, text="three"))
        assert refused.value.code == "rate_limited"
        wait = refused.value.retry_after
        assert wait is not None and 0 < wait <= 1
        started = trio.current_time()
        await trio.sleep(wait)
        await chat.handle(alice, p.Message(id=4, text="three, later"))
        assert [ok.re for ok in await settled(alice_peer, "ok", 3)] == [1, 2, 4]
        assert trio.current_time() - started < 2  # the mock clock jumped; the wait was the one announced


async def test_login_failures_earn_a_delay_that_passes(autojump_clock: MockClock, tmp_path: Path) -> None:
    async with chat_on(await MemoryStore.open(), tmp_path, argon2_memory_kib=8, argon2_time_cost=1) as chat:
        newcomer, _ = session_of(chat)
        await chat.handle(newcomer, p.Register(id=1, username="alice", password="correct horse"))
        guesses = 0
        while True:
            guesser, _ = session_of(chat)
            with pytest.raises(ProtocolError) as refused:
                await chat.handle(guesser, p.Login(id=2, username="alice", password=f"guess {guesses}"))
            guesses += 1
            if refused.value.code == "rate_limited":
                break
            assert refused.value.code == "auth_failed"
            assert guesses < 20, "no delay after many failed logins"
        wait = refused.value.retry_after
        assert wait is not None
        await trio.sleep(wait + 0.01)
        right, _ = session_of(chat)
        reply = await chat.handle(right, p.Login(id=3, username="alice", password="correct horse"))
        assert isinstance(reply, p.LoggedIn) and reply.user == "alice"


async def test_two_creating_one_room_at_once_one_creates_and_the_other_finds_it(store: Store, tmp_path: Path) -> None:
    async with chat_on(store, tmp_path) as chat:
        alice, _ = session_of(chat, "alice")
        bob, _ = session_of(chat, "bob")
        outcomes: dict[str, Any] = {}

        async def create(session: Any, who: str) -> None:
            try:
                outcomes[who] = await chat.handle(session, p.Create(id=who, room="lobby"))
            except ProtocolError as exc:
                outcomes[who] = exc.code
                outcomes[who + " then"] = chat.has_room("lobby")  # told "exists" only once it does

        async with trio.open_nursery() as nursery:
            nursery.start_soon(create, alice, "alice")
            nursery.start_soon(create, bob, "bob")
        assert sorted(str(getattr(o, "type", o)) for k, o in outcomes.items() if " " not in k) == ["joined",
                                                                                                    "room_exists"]
        loser = "bob" if outcomes["bob"] == "room_exists" else "alice"
        assert outcomes[loser + " then"] is True
        joined = await chat.handle(bob if loser == "bob" else alice, p.Join(id="j", room="lobby"))
        assert isinstance(joined, p.Joined)
