"""The store contract: every engine (memory, SQLite, PostgreSQL) passes the same list, so the chat rules
behave the same whichever one holds their data."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from utuvox.store import Conflict, StoredEvent

from .store_contract import ENGINES, Engine, Outcomes, commit, engine, event, recorder


@pytest.fixture(params=ENGINES)
def engine_(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    with engine(request.param, tmp_path) as chosen:
        yield chosen


@pytest.fixture
async def store(engine_: Engine) -> AsyncIterator[Any]:
    async with engine_.running() as opened:
        yield opened


async def test_events_are_numbered_per_room_in_commit_order_and_a_missing_room_fails_alone(store: Any) -> None:
    one = await store.create_room("one", None)
    two = await store.create_room("two", None)
    outcomes: Outcomes = {}
    order: list[int] = []
    done = trio.Event()
    make = recorder(outcomes, 6, done, order)
    commits = store.commits
    for key, room_id in enumerate([one.id, two.id, one.id, 999_999, two.id, one.id], 1):
        store.submit_event(event(room_id, f"e{key}"), make(key))  # one batch: no await in between
    assert outcomes == {}  # callbacks run later, from the committer
    with trio.fail_after(10):
        await done.wait()
    assert store.commits == commits + 1  # group commit: one transaction for the whole batch
    assert order == [1, 2, 3, 4, 5, 6]
    assert {k: seq for k, (seq, error) in outcomes.items() if error is None} == {1: 1, 2: 1, 3: 2, 5: 2, 6: 3}
    assert outcomes[4][0] == 0 and outcomes[4][1] is not None
    assert [(r.seq, r.body) for r in await store.history(one.id, before=None, limit=10)] == [
        (s, f'{{"type":"message","seq":{s},"text":"e{k}"}}') for s, k in ((1, 1), (2, 3), (3, 6))]
    assert await store.last_seq(one.id) == 3 and await store.last_seq(two.id) == 2
    assert (await store.room_seqs()).items() >= {one.id: 3, two.id: 2}.items()
    assert await commit(store, event(two.id)) == 3


async def test_flush_waits_for_every_callback_and_a_full_queue_holds_producers(engine_: Engine) -> None:
    async with engine_.running(max_pending=2) as store:
        room = await store.create_room("busy", None)
        seen: list[int] = []
        for _ in range(2):
            store.submit_event(event(room.id), lambda seq, _error: seen.append(seq))
        assert store.backlogged
        with trio.fail_after(10):
            await store.wait_for_room()
            await store.flush()
        assert seen == [1, 2] and not store.backlogged


async def test_stored_rows_keep_the_schema_version_of_their_body(store: Any) -> None:
    room = await store.create_room("old", None)
    await commit(store, event(room.id, "now"))
    await commit(store, event(room.id, "later", version=7))
    assert [(e.seq, e.version) for e in await store.history(room.id, before=None, limit=5)] == [(1, 1), (2, 7)]
    assert [e.version for e in await store.events_after(room.id, 0, 5)] == [1, 7]
    await store.add_private(ts=1.0, sender="a", recipient="b", body="{}")
    await store.add_private(ts=2.0, sender="a", recipient="b", body="{}", version=7)
    page = await store.private_history("a", "b", after=None, before=None, limit=5, latest=False)
    assert [m.version for m in page] == [1, 7]


async def test_users_names_are_unique_whatever_their_case(store: Any) -> None:
    bob = await store.create_user("Bob", "hash", is_admin=False, is_bot=True)
    assert (bob.name, bob.password_hash, bob.is_admin, bob.is_bot, bob.banned, bob.ban_reason) == (
        "Bob", "hash", False, True, False, None)
    with pytest.raises(Conflict):
        await store.create_user("BOB", "other", is_admin=True, is_bot=False)
    assert await store.get_user("bOB") == bob and await store.get_user("nobody") is None
    for name in ("carol", "Alice", "dave"):
        await store.create_user(name, "h", is_admin=name == "Alice", is_bot=False)
    assert await store.count_users() == 4
    assert [u.name for u in await store.list_users()] == ["Alice", "Bob", "carol", "dave"]
    assert [u.name for u in await store.list_users(after="BOB", limit=1)] == ["carol"]
    assert [u.name for u in await store.list_users(after="dave")] == []
    assert await store.update_user("bob", banned=True, ban_reason="spam", password_hash="new")
    again = await store.get_user("Bob")
    assert (again.id, again.banned, again.ban_reason, again.password_hash) == (bob.id, True, "spam", "new")
    assert await store.update_user("bob", banned=False, ban_reason=None)
    assert not (await store.get_user("bob")).banned
    assert not await store.update_user("nobody", banned=True)
    assert await store.update_user("bob") and not await store.update_user("nobody")
    with pytest.raises(ValueError, match="unknown user fields"):
        await store.update_user("bob", is_owner=True)


async def test_rooms_names_topics_and_deletion(store: Any) -> None:
    den = await store.create_room("Den", "alice")
    assert (den.name, den.created_by, den.topic, den.topic_by, den.topic_ts) == ("Den", "alice", None, None, None)
    with pytest.raises(Conflict):
        await store.create_room("DEN", "bob")
    await store.create_room("attic", None)
    assert [r.name for r in await store.list_rooms()] == ["attic", "Den"]
    await store.set_topic(den.id, "cozy", "alice", 1234.5)
    got = await store.get_room("den")
    assert (got.id, got.topic, got.topic_by, got.topic_ts) == (den.id, "cozy", "alice", 1234.5)
    await store.set_topic(den.id, None, "bob", 1300.0)
    assert (await store.get_room("den")).topic is None
    for _ in range(3):
        await commit(store, event(den.id))
    await store.add_file(name="f1", room_id=den.id, original="f.txt", size=1, sha256="0", uploader="alice")
    await store.delete_room(den.id)
    assert await store.get_room("Den") is None
    assert await store.history(den.id, before=None, limit=10) == []
    assert await store.last_seq(den.id) == 0
    assert await store.get_file("f1") is None and await store.file_names() == set()
    again = await store.create_room("den", None)
    assert await commit(store, event(again.id)) == 1  # a deleted room's name starts its numbers over
    assert await store.get_room("DEN") == again


async def test_history_pages_and_their_edges(store: Any) -> None:
    room = await store.create_room("pages", None)
    empty = await store.create_room("empty", None)
    for i in range(1, 8):
        await commit(store, event(room.id, f"m{i}", ts=1000.0 + i))

    async def seqs(**kwargs: Any) -> list[int]:
        return [e.seq for e in await store.history_range(room.id, **kwargs)]

    assert [e.seq for e in await store.history(room.id, before=None, limit=3)] == [5, 6, 7]
    assert [e.seq for e in await store.history(room.id, before=5, limit=3)] == [2, 3, 4]
    assert [e.seq for e in await store.history(room.id, before=3, limit=10)] == [1, 2]
    assert await store.history(room.id, before=1, limit=10) == []
    assert [e.seq for e in await store.history(room.id, before=None, limit=100)] == list(range(1, 8))
    assert await store.history(empty.id, before=None, limit=10) == []
    assert [e.seq for e in await store.events_after(room.id, 5, 10)] == [6, 7]
    assert [e.seq for e in await store.events_after(room.id, 0, 2)] == [1, 2]
    assert await store.events_after(room.id, 7, 10) == []
    assert await seqs(after=2, before=6, limit=10, latest=False) == [3, 4, 5]
    assert await seqs(after=2, before=6, limit=2, latest=False) == [3, 4]
    assert await seqs(after=2, before=6, limit=2, latest=True) == [4, 5]
    assert await seqs(after=None, before=None, limit=2, latest=True) == [6, 7]
    assert await seqs(after=None, before=None, limit=2, latest=False) == [1, 2]
    assert await seqs(after=3, before=4, limit=10, latest=True) == []
    assert await seqs(after=None, before=None, limit=0, latest=True) == []
    first = (await store.history(room.id, before=2, limit=1))[0]
    assert (first.room_id, first.seq, first.ts, first.type, first.user) == (room.id, 1, 1001.0, "message", "bob")


async def test_seq_at_finds_the_first_event_at_or_after_a_time(store: Any) -> None:
    room = await store.create_room("times", None)
    empty = await store.create_room("none", None)
    for i in range(5):
        await commit(store, event(room.id, ts=1000.0 + 10 * i))  # seq i+1 at 1000, 1010... 1040
    assert await store.seq_at(room.id, 0.0) == 1
    assert await store.seq_at(room.id, 1010.0) == 2
    assert await store.seq_at(room.id, 1010.5) == 3
    assert await store.seq_at(room.id, 1040.0) == 5
    assert await store.seq_at(room.id, 5000.0) == 6
    assert await store.seq_at(empty.id, 1000.0) == 1


async def test_private_conversations_page_by_id_and_time(store: Any) -> None:
    ids = [await store.add_private(ts=10.0 + i, sender="Alice" if i % 2 else "bob",
                                   recipient="bob" if i % 2 else "Alice", body=f"m{i}") for i in range(5)]
    other = await store.add_private(ts=11.5, sender="carol", recipient="Bob", body="other talk")
    assert ids == sorted(ids) and other > ids[-1]
    latest = await store.private_history("bob", "alice", after=None, before=None, limit=3, latest=True)
    assert [m.body for m in latest] == ["m2", "m3", "m4"]
    assert [(m.sender, m.recipient) for m in latest[:2]] == [("bob", "alice"), ("alice", "bob")]
    older = await store.private_history("ALICE", "Bob", after=None, before=latest[0].id, limit=10, latest=True)
    assert [m.body for m in older] == ["m0", "m1"]
    middle = await store.private_history("alice", "bob", after=ids[0], before=ids[4], limit=2, latest=False)
    assert [m.body for m in middle] == ["m1", "m2"]
    assert await store.private_history("alice", "bob", after=ids[4], before=None, limit=5, latest=False) == []
    assert await store.private_history("alice", "dave", after=None, before=None, limit=5, latest=True) == []
    first = (await store.private_history("bob", "alice", after=None, before=None, limit=1, latest=False))[0]
    assert (first.id, first.ts, first.body) == (ids[0], 10.0, "m0")
    assert await store.private_id_at("alice", "bob", 0.0) == ids[0]
    assert await store.private_id_at("alice", "bob", 12.0) == ids[2]
    assert await store.private_id_at("alice", "bob", 12.5) == ids[3]
    assert await store.private_id_at("alice", "bob", 99.0) == ids[4] + 1
    assert await store.private_id_at("alice", "dave", 0.0) == 1
    assert await store.private_peers("bob", since=0, until=100, limit=10) == [("alice", 14.0), ("carol", 11.5)]
    assert await store.private_peers("BOB", since=0, until=100, limit=1) == [("alice", 14.0)]
    # both bounds are open
    assert await store.private_peers("bob", since=11.5, until=14.0, limit=10) == [("alice", 13.0)]
    assert await store.private_peers("carol", since=0, until=100, limit=10) == [("bob", 11.5)]
    assert await store.private_peers("dave", since=0, until=100, limit=10) == []


async def test_files_rows(store: Any) -> None:
    room = await store.create_room("Files", "bob")
    other = await store.create_room("other", "bob")
    a = await store.add_file(name="a1-a.txt", room_id=room.id, original="a.txt", size=3, sha256="aa", uploader="bob")
    assert (a.name, a.room_id, a.room, a.original, a.size, a.sha256, a.uploader) == (
        "a1-a.txt", room.id, "Files", "a.txt", 3, "aa", "bob")
    with pytest.raises(Conflict):
        await store.add_file(name="a1-a.txt", room_id=other.id, original="b", size=1, sha256="b", uploader="eve")
    b = await store.add_file(name="b2-b.txt", room_id=room.id, original="b.txt", size=5, sha256="bb", uploader="ann")
    c = await store.add_file(name="c3-c.txt", room_id=other.id, original="c.txt", size=1, sha256="cc", uploader="ann")
    assert await store.get_file("a1-a.txt") == a and await store.get_file("nothing") is None
    assert await store.list_files(room.id) == [a, b]
    assert await store.file_names() == {"a1-a.txt", "b2-b.txt", "c3-c.txt"}
    assert await store.delete_file("b2-b.txt") and not await store.delete_file("b2-b.txt")
    assert await store.delete_files_of_room(room.id) == [a]
    assert await store.list_files(room.id) == [] and await store.list_files(other.id) == [c]
    assert await store.delete_files_of_room(room.id) == []


async def test_the_admin_log_filters_and_keeps_the_newest(store: Any) -> None:
    await store.add_admin_log(actor="Bob", via="tcp", action="kick", target="eve", outcome="ok", detail=None)
    await store.add_admin_log(actor="Ann", via="console", action="ban_user", target="eve", outcome="ok", detail="x")
    await store.add_admin_log(actor="Ann", via="console", action="kick", target=None, outcome="error", detail="y")
    everything = await store.admin_log()
    assert [(r.actor, r.via, r.action, r.target, r.outcome, r.detail) for r in everything] == [
        ("Bob", "tcp", "kick", "eve", "ok", None), ("Ann", "console", "ban_user", "eve", "ok", "x"),
        ("Ann", "console", "kick", None, "error", "y")]
    assert [r.id for r in everything] == sorted(r.id for r in everything)
    assert [r.action for r in await store.admin_log(actor="Ann")] == ["ban_user", "kick"]
    assert [r.actor for r in await store.admin_log(action="kick")] == ["Bob", "Ann"]
    assert [r.detail for r in await store.admin_log(actor="Ann", action="kick")] == ["y"]
    assert [r.detail for r in await store.admin_log(limit=2)] == ["x", "y"]
    assert await store.admin_log(since=everything[1].ts) == everything[1:]
    assert await store.admin_log(since="9999") == []


async def test_writes_after_the_committer_stopped_fail_instead_of_hanging(engine_: Engine) -> None:
    async with engine_.running() as store:
        pass
    with trio.fail_after(5), pytest.raises(Exception, match="closed"):
        await store.create_room("late", None)
    failed: list[BaseException | None] = []
    store.submit_event(event(1), lambda _seq, error: failed.append(error))
    assert failed and failed[0] is not None


async def test_what_was_committed_is_there_after_reopening(engine_: Engine) -> None:
    if not engine_.durable:
        # Memory keeps nothing: a new store starts empty.
        async with engine_.running() as store:
            await store.create_user("bob", "h", is_admin=False, is_bot=False)
        async with engine_.running() as store:
            assert await store.count_users() == 0 and await store.list_rooms() == []
        return
    async with engine_.running() as store:
        user = await store.create_user("Bob", "h", is_admin=True, is_bot=False)
        room = await store.create_room("keep", "Bob")
        await store.set_topic(room.id, "kept", "Bob", 5.0)
        done = trio.Event()
        outcomes: Outcomes = {}
        make = recorder(outcomes, 3, done)
        for i in range(3):
            store.submit_event(event(room.id, f"k{i}"), make(i))
        # close commits what is queued: these may have been promised to a client already
    assert sorted(seq for seq, _ in outcomes.values()) == [1, 2, 3]
    async with engine_.running() as store:
        pm = await store.add_private(ts=1.0, sender="Bob", recipient="ann", body="{}")
        await store.add_file(name="f", room_id=room.id, original="f", size=1, sha256="0", uploader="Bob")
        await store.add_admin_log(actor="Bob", via="tcp", action="kick", target=None, outcome="ok", detail=None)
    async with engine_.running() as store:
        assert await store.get_user("bob") == user
        again = await store.get_room("KEEP")
        assert (again.id, again.topic) == (room.id, "kept")
        assert [e.body for e in await store.history(room.id, before=None, limit=10)] == [
            f'{{"type":"message","seq":{s},"text":"k{s - 1}"}}' for s in (1, 2, 3)]
        assert await commit(store, event(room.id)) == 4  # numbering goes on where it stopped
        assert [m.id for m in await store.private_history("ann", "bob", after=None, before=None, limit=5,
                                                          latest=True)] == [pm]
        assert await store.file_names() == {"f"}
        assert [r.action for r in await store.admin_log()] == ["kick"]


async def test_an_event_s_fields_come_back_as_they_went_in(store: Any) -> None:
    room = await store.create_room("exact", None)
    body = '{"type":"message","seq":0,"text":"caf\\u00e9 \\"quoted\\" ☕"}'
    seq = await commit(store, StoredEvent(room.id, 0, 1767225600.25, "message", "Zoë", body))
    [back] = await store.history(room.id, before=None, limit=1)
    assert back == StoredEvent(room.id, seq, 1767225600.25, "message", "Zoë",
                               '{"type":"message","seq":1,"text":"caf\\u00e9 \\"quoted\\" ☕"}')
