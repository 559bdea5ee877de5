"""The store contract, run against every engine (SQLite and PostgreSQL): group commit isolates a failing
write, the store numbers each room's events inside the commit, history pages, migrations refuse a newer
schema."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from utuvox.store import Conflict, SchemaTooNew, SqliteStore, StoredEvent
from utuvox.store.interface import SEQ_PLACEHOLDER
from utuvox.store.migrations import PG_SCHEMA_VERSION
from utuvox.store.postgres import PostgresStore

from .databases import fresh_database


def event(room_id: int, text: str = "x") -> StoredEvent:
    body = f'{{"type":"message"{SEQ_PLACEHOLDER}"text":"{text}"}}'
    return StoredEvent(room_id, 0, 1767225600.0, "message", "bob", body)


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    if request.param == "sqlite":
        opened: Any = await SqliteStore.open(tmp_path / "db")
        async with trio.open_nursery() as nursery:
            await nursery.start(opened.run)
            yield opened
            nursery.cancel_scope.cancel()
        await opened.close()
        return
    with fresh_database() as url:
        opened = await PostgresStore.open(url)
        async with trio.open_nursery() as nursery:
            await nursery.start(opened.run)
            yield opened
            nursery.cancel_scope.cancel()
        await opened.close()


def collect(outcomes: dict[int, tuple[int, BaseException | None]], expected: int, done: trio.Event):
    def recorder(key: int):
        def on_commit(seq: int, error: BaseException | None) -> None:
            outcomes[key] = (seq, error)
            if len(outcomes) == expected:
                done.set()
        return on_commit
    return recorder


async def test_events_are_numbered_in_the_commit_and_a_failing_write_fails_alone(store: Any) -> None:
    general = await store.create_room("general", "bob")
    other = await store.create_room("other", "bob")
    gone = await store.create_room("gone", "bob")
    commits = store.commits
    outcomes: dict[int, tuple[int, BaseException | None]] = {}
    done = trio.Event()
    recorder = collect(outcomes, 6, done)
    # queued together, committed in one transaction: numbers per room; a taken name fails alone, and so
    # does an event of a room deleted earlier in the same batch (it takes no number)
    # (ops in SQL both engines speak, queued with no await between them: one batch)
    failures: list[BaseException | None] = []
    store.submit_event(event(general.id, "g1"), recorder(1))
    store.submit_event(event(other.id, "o1"), recorder(2))
    store.submit(lambda c: c.execute(f"DELETE FROM rooms WHERE id = {gone.id}"), lambda _r, e: failures.append(e))
    store.submit_event(event(gone.id, "lost"), recorder(3))
    store.submit_event(event(general.id, "g2"), recorder(4))
    taken = "INSERT INTO rooms(name, name_key, created_at) VALUES ('General', 'general', 'x')"
    store.submit(lambda c: c.execute(taken), lambda _r, e: failures.append(e))
    store.submit_event(event(general.id, "g3"), recorder(5))
    store.submit_event(event(other.id, "o2"), recorder(6))
    await done.wait()
    assert [outcomes[k][0] for k in (1, 2, 4, 5, 6)] == [1, 1, 2, 3, 2]
    assert all(outcomes[k][1] is None for k in (1, 2, 4, 5, 6))
    assert outcomes[3][1] is not None
    assert failures[0] is None and isinstance(failures[1], Conflict)
    assert store.commits == commits + 1
    rows = await store.history(general.id, before=None, limit=10)
    assert [(r.seq, r.body) for r in rows] == [(s, f'{{"type":"message","seq":{s},"text":"g{s}"}}') for s in (1, 2, 3)]
    assert await store.last_seq(general.id) == 3 and await store.last_seq(other.id) == 2
    assert [r.seq for r in await store.history(general.id, before=3, limit=1)] == [2]
    assert [r.seq for r in await store.events_after(general.id, 1, 10)] == [2, 3]
    assert [r.seq for r in await store.events_after(general.id, 0, 2)] == [1, 2]
    with pytest.raises(Conflict):
        await store.create_room("GENERAL", "alice")


async def test_a_deleted_room_s_name_starts_its_numbers_over(store: Any) -> None:
    first = await store.create_room("lobby", None)
    for _ in range(3):
        await commit(store, event(first.id))
    await store.delete_room(first.id)
    second = await store.create_room("lobby", None)
    assert await commit(store, event(second.id)) == 1
    assert await store.get_room("LOBBY") == second


async def commit(store: Any, stored: StoredEvent) -> int:
    done = trio.Event()
    got: list[tuple[int, BaseException | None]] = []

    def on_commit(seq: int, error: BaseException | None) -> None:
        got.append((seq, error))
        done.set()

    store.submit_event(stored, on_commit)
    await done.wait()
    assert got[0][1] is None
    return got[0][0]


async def test_users_files_and_the_admin_log(store: Any) -> None:
    user = await store.create_user("Bob", "hash", is_admin=False, is_bot=True)
    with pytest.raises(Conflict):
        await store.create_user("BOB", "hash", is_admin=False, is_bot=False)
    assert await store.update_user("bob", banned=True, ban_reason="spam")
    assert (await store.get_user("BOB")).banned and (await store.get_user("bob")).id == user.id
    assert not await store.update_user("nobody", banned=True)
    room = await store.create_room("files", "Bob")
    record = await store.add_file(name="a.txt", room_id=room.id, original="a.txt", size=3, sha256="00", uploader="Bob")
    assert record.room == "files" and await store.get_file("a.txt") == record
    assert await store.file_names() == {"a.txt"}
    assert [f.name for f in await store.delete_files_of_room(room.id)] == ["a.txt"]
    await store.add_admin_log(actor="Bob", via="tcp", action="kick", target="eve", outcome="ok", detail=None)
    await store.add_admin_log(actor="Ann", via="tcp", action="ban_user", target="eve", outcome="ok", detail="x")
    assert [r.action for r in await store.admin_log(actor="Ann")] == ["ban_user"]
    assert [r.actor for r in await store.admin_log()] == ["Bob", "Ann"]


async def test_a_newer_schema_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE future (x)")
    conn.execute("PRAGMA user_version = 999")
    conn.commit()
    conn.close()
    with pytest.raises(SchemaTooNew, match="newer than this UtuVox knows"):
        await SqliteStore.open(path)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 999
    assert conn.execute("SELECT name FROM sqlite_master").fetchall() == [("future",)]
    conn.close()


async def test_nodes_starting_together_migrate_once() -> None:
    with fresh_database() as url:
        stores: list[PostgresStore] = []

        async def open_one() -> None:
            stores.append(await PostgresStore.open(url))

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(open_one)
        versions = await stores[0].read(lambda c: c.execute("SELECT version FROM schema_version").fetchall())
        assert [v["version"] for v in versions] == list(range(1, PG_SCHEMA_VERSION + 1))
        for opened in stores:
            await opened.close()


async def test_writes_after_the_committer_stopped_fail_instead_of_hanging(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "db")
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        nursery.cancel_scope.cancel()
    with trio.fail_after(5), pytest.raises(Exception, match="closed"):
        await store.create_room("late", None)
    await store.close()


async def test_a_batch_of_events_alone_is_numbered_per_room_and_a_missing_room_fails_alone(store: Any) -> None:
    one = await store.create_room("one", None)
    two = await store.create_room("two", None)
    outcomes: dict[int, tuple[int, BaseException | None]] = {}
    done = trio.Event()
    recorder = collect(outcomes, 6, done)
    for key, room_id in enumerate([one.id, two.id, one.id, 999_999, two.id, one.id], 1):
        store.submit_event(event(room_id, f"e{key}"), recorder(key))  # one batch: no await in between
    await done.wait()
    assert {k: seq for k, (seq, error) in outcomes.items() if error is None} == {1: 1, 2: 1, 3: 2, 5: 2, 6: 3}
    assert outcomes[4][1] is not None
    assert [(r.seq, r.body) for r in await store.history(one.id, before=None, limit=10)] == [
        (s, f'{{"type":"message","seq":{s},"text":"e{k}"}}') for s, k in ((1, 1), (2, 3), (3, 6))]
    assert await store.last_seq(one.id) == 3 and await store.last_seq(two.id) == 2


async def test_topics_ranges_by_seq_and_time_and_private_conversations(store: Any) -> None:
    room = await store.create_room("den", "alice")
    done = trio.Event()
    outcomes: dict[int, tuple[int, BaseException | None]] = {}
    recorder = collect(outcomes, 5, done)
    for i in range(5):
        store.submit_event(StoredEvent(room.id, 0, 1000.0 + i, "message", "alice", f'{{"n":{i}}}'), recorder(i))
    with trio.fail_after(10):
        await done.wait()
    seqs = [s.seq for s in await store.history_range(room.id, after=1, before=5, limit=10, latest=False)]
    assert seqs == [2, 3, 4]
    assert [s.seq for s in await store.history_range(room.id, after=None, before=None, limit=2, latest=True)] == [4, 5]
    assert [s.seq for s in await store.history_range(room.id, after=1, before=None, limit=2, latest=False)] == [2, 3]
    assert await store.seq_at(room.id, 1002.0) == 3 and await store.seq_at(room.id, 2000.0) == 6
    await store.set_topic(room.id, "cozy", "alice", 1234.5)
    again = await store.get_room("den")
    assert (again.topic, again.topic_by, again.topic_ts) == ("cozy", "alice", 1234.5)
    ids = [await store.add_private(ts=10.0 + i, sender="Alice" if i % 2 else "bob",
                                   recipient="bob" if i % 2 else "Alice", body=f"m{i}") for i in range(4)]
    await store.add_private(ts=11.0, sender="carol", recipient="bob", body="other talk")
    page = await store.private_history("bob", "alice", after=None, before=None, limit=3, latest=True)
    assert [m.body for m in page] == ["m1", "m2", "m3"]
    older = await store.private_history("alice", "bob", after=None, before=page[0].id, limit=10, latest=True)
    assert [m.body for m in older] == ["m0"]
    assert await store.private_id_at("alice", "bob", 12.0) == ids[2]
    assert [p for p, _ in await store.private_peers("bob", since=0, until=100, limit=10)] == ["alice", "carol"]
