"""What only the SQL engines do: several writes of any kind in one transaction, each failing alone;
migrations that refuse a newer schema, run once when nodes start together, and keep every row of a
database written by an older UtuVox. What every engine does is in test_store_contract.py."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio

from utuvox.protocol import core as p
from utuvox.protocol.stored import CURRENT_VERSION, load_event, load_private
from utuvox.store import Conflict, SchemaTooNew, SqliteStore
from utuvox.store.migrations import PG_MIGRATIONS, PG_SCHEMA_VERSION, SCHEMA_VERSION
from utuvox.store.postgres import PostgresStore

from .databases import fresh_database
from .store_contract import Outcomes, commit, engine, event, recorder

DATA = Path(__file__).parent / "data"


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    with engine(request.param, tmp_path) as chosen:
        async with chosen.running() as opened:
            yield opened


async def test_events_are_numbered_in_the_commit_and_a_failing_write_fails_alone(store: Any) -> None:
    general = await store.create_room("general", "bob")
    other = await store.create_room("other", "bob")
    gone = await store.create_room("gone", "bob")
    commits = store.commits
    outcomes: Outcomes = {}
    done = trio.Event()
    make = recorder(outcomes, 6, done)
    # queued together, committed in one transaction: numbers per room; a taken name fails alone, and so
    # does an event of a room deleted earlier in the same batch (it takes no number)
    # (ops in SQL both engines speak, queued with no await between them: one batch)
    failures: list[BaseException | None] = []
    store.submit_event(event(general.id, "g1"), make(1))
    store.submit_event(event(other.id, "o1"), make(2))
    store.submit(lambda c: c.execute(f"DELETE FROM rooms WHERE id = {gone.id}"), lambda _r, e: failures.append(e))
    store.submit_event(event(gone.id, "lost"), make(3))
    store.submit_event(event(general.id, "g2"), make(4))
    taken = "INSERT INTO rooms(name, name_key, created_at) VALUES ('General', 'general', 'x')"
    store.submit(lambda c: c.execute(taken), lambda _r, e: failures.append(e))
    store.submit_event(event(general.id, "g3"), make(5))
    store.submit_event(event(other.id, "o2"), make(6))
    await done.wait()
    assert [outcomes[k][0] for k in (1, 2, 4, 5, 6)] == [1, 1, 2, 3, 2]
    assert all(outcomes[k][1] is None for k in (1, 2, 4, 5, 6))
    assert outcomes[3][1] is not None
    assert failures[0] is None and isinstance(failures[1], Conflict)
    assert store.commits == commits + 1
    rows = await store.history(general.id, before=None, limit=10)
    assert [(r.seq, r.body) for r in rows] == [(s, f'{{"type":"message","seq":{s},"text":"g{s}"}}') for s in (1, 2, 3)]
    assert await store.last_seq(general.id) == 3 and await store.last_seq(other.id) == 2
    assert await store.get_room("gone") is None


async def test_a_lone_row_that_fails_takes_no_number_and_leaves_the_rest_of_its_commit(store: Any) -> None:
    # A history row alone between two operations is inserted on its own (a lone message's commit, the
    # usual one): when it fails, only it is undone.
    general = await store.create_room("general", "bob")
    gone = await store.create_room("gone", "bob")
    commits = store.commits
    outcomes: Outcomes = {}
    done = trio.Event()
    make = recorder(outcomes, 3, done)
    failures: list[BaseException | None] = []
    store.submit_event(event(general.id, "g1"), make(1))
    store.submit(lambda c: c.execute(f"DELETE FROM rooms WHERE id = {gone.id}"), lambda _r, e: failures.append(e))
    store.submit_event(event(gone.id, "lost"), make(2))
    store.submit(lambda c: c.execute("SELECT 1"), lambda _r, e: failures.append(e))
    store.submit_event(event(general.id, "g2"), make(3))
    await done.wait()
    assert outcomes[1] == (1, None) and outcomes[3] == (2, None)
    assert outcomes[2][0] == 0 and outcomes[2][1] is not None
    assert failures == [None, None] and store.commits == commits + 1
    rows = await store.history(general.id, before=None, limit=10)
    assert [r.seq for r in rows] == [1, 2]
    assert await store.history(gone.id, before=None, limit=10) == []


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




async def test_a_database_written_before_stored_versions_keeps_every_row_and_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "utuvox_db.db"
    shutil.copy(DATA / "schema2.db", path)
    before = _sqlite_rows(path)
    assert before["version"] == 2
    with engine("sqlite", tmp_path) as sqlite_engine:
        async with sqlite_engine.running() as store:
            await _check_schema2_data(store)
    after = _sqlite_rows(path)
    assert after["version"] == SCHEMA_VERSION
    for table in ("users", "rooms", "files", "admin_log"):
        assert after[table] == before[table], table
    # the events and private messages are the same rows, each now marked version 1 (and one event more)
    assert [row[:-1] for row in after["events"][:-1]] == before["events"]
    assert {row[-1] for row in after["events"]} == {1}
    assert [row[:-1] for row in after["private_messages"]] == before["private_messages"]
    assert {row[-1] for row in after["private_messages"]} == {1}


def _sqlite_rows(path: Path) -> dict[str, Any]:
    conn = sqlite3.connect(path)
    try:
        found: dict[str, Any] = {"version": conn.execute("PRAGMA user_version").fetchone()[0]}
        for table in ("users", "rooms", "events", "files", "admin_log", "private_messages"):
            order = "room_id, seq" if table == "events" else "id"
            found[table] = conn.execute(f"SELECT * FROM {table} ORDER BY {order}").fetchall()
        return found
    finally:
        conn.close()


async def _check_schema2_data(store: Any) -> None:
    """What make_schema2_db.py wrote, read back through today's store and models."""
    alice, bob = await store.get_user("alice"), await store.get_user("BOB")
    assert (alice.name, alice.is_admin, bob.is_bot, bob.banned, bob.ban_reason) == ("Alice", True, True, True, "spam")
    room = await store.get_room("general")
    assert (room.name, room.created_by, room.topic, room.topic_by) == ("General", "Alice", "welcome", "Alice")
    assert [r.name for r in await store.list_rooms()] == ["General", "quiet"]
    stored = await store.history(room.id, before=None, limit=100)
    assert [s.version for s in stored] == [1] * 5
    events = [load_event(s.version, s.body) for s in stored]
    assert [type(e) for e in events] == [p.JoinEvent, p.MessageEvent, p.MessageEvent, p.FileEvent, p.LeaveEvent]
    assert [e.seq for e in events] == [1, 2, 3, 4, 5] and events[2].action is True and events[4].reason == "bye"
    assert await store.seq_at(room.id, stored[3].ts) == 4
    private = await store.private_history("alice", "bob", after=None, before=None, limit=10, latest=False)
    messages = [load_private(m.version, m.body) for m in private]
    assert [(m.user, m.to, m.text) for m in messages] == [("Alice", "bob", "psst 0"), ("bob", "Alice", "psst 1")]
    assert [f.original for f in await store.list_files(room.id)] == ["notes.txt"]
    assert [(r.actor, r.action, r.target) for r in await store.admin_log()] == [("Alice", "ban_user", "bob")]
    # and it goes on: a new event takes the next number and today's version
    assert await commit(store, event(room.id)) == 6
    assert (await store.history(room.id, before=None, limit=1))[0].version == CURRENT_VERSION


async def test_a_postgres_database_of_schema_2_is_migrated_with_every_row() -> None:
    """The SQLite file of tests/data, copied into a PostgreSQL database at schema version 2, then
    opened by today's store."""
    source = sqlite3.connect(DATA / "schema2.db")
    source.row_factory = sqlite3.Row
    with fresh_database() as url:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
            for target in (1, 2):
                for statement in PG_MIGRATIONS[target]:
                    conn.execute(statement)  # type: ignore[arg-type]
                conn.execute("INSERT INTO schema_version(version) VALUES (%s)", (target,))
            for table, key in (("users", "id"), ("rooms", "id"), ("events", "room_id, seq"), ("files", "id"),
                               ("admin_log", "id"), ("private_messages", "id")):
                rows = source.execute(f"SELECT * FROM {table} ORDER BY {key}").fetchall()
                columns = list(rows[0].keys())
                if table == "users":
                    rows = [tuple(bool(v) if c in ("is_admin", "is_bot", "banned") else v
                                  for c, v in zip(columns, row, strict=True)) for row in rows]
                names = ", ".join(f'"{c}"' for c in columns)
                marks = ", ".join(["%s"] * len(columns))
                overriding = "" if table == "events" else " OVERRIDING SYSTEM VALUE"
                with conn.cursor() as cur:
                    cur.executemany(f"INSERT INTO {table} ({names}){overriding} VALUES ({marks})",  # type: ignore[arg-type]
                                    [tuple(row) for row in rows])
            conn.execute("UPDATE rooms SET last_seq = (SELECT COALESCE(MAX(seq), 0) FROM events"
                         " WHERE events.room_id = rooms.id)")
            for table in ("users", "rooms", "files", "admin_log", "private_messages"):
                conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT MAX(id) FROM {table}))")  # type: ignore[arg-type]
        source.close()
        store = await PostgresStore.open(url)
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            await _check_schema2_data(store)
            versions = await store.read(lambda c: [r["version"] for r in c.execute("SELECT version FROM schema_version")
                                                   ])
            assert sorted(versions) == list(range(1, PG_SCHEMA_VERSION + 1))
            nursery.cancel_scope.cancel()
        await store.close()


async def test_postgres_closes_its_connections_after_the_committer_ended() -> None:
    with fresh_database() as url:
        store = await PostgresStore.open(url)
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            await store.create_room("r", None)
            nursery.cancel_scope.cancel()  # the committer ends first, as at the server's shutdown
        connections = [store._writer, *store._readers]
        await store.close()
        assert connections and all(c is not None and c.closed for c in connections)
        assert store._writer is None and not store._readers
