"""The SQLite store on its own: group commit isolates a failing write, history pages, migrations refuse
a newer schema."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import trio

from utuvox.store import Conflict, SchemaTooNew, SqliteStore, StoredEvent


def event(room_id: int, seq: int, text: str = "x") -> StoredEvent:
    return StoredEvent(room_id, seq, 1767225600.0, "message", "bob", f'{{"text": "{text}"}}')


async def test_a_failing_row_fails_alone_in_its_batch(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "db")
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        room = await store.create_room("general", "bob")
        outcomes: dict[int, BaseException | None] = {}
        done = trio.Event()

        def recorder(key: int):
            def on_commit(error: BaseException | None) -> None:
                outcomes[key] = error
                if len(outcomes) == 4:
                    done.set()
            return on_commit

        # queued together, committed in one transaction; key 2 repeats seq 1
        for key, seq in [(1, 1), (2, 1), (3, 2), (4, 3)]:
            store.submit_event(event(room.id, seq, f"k{key}"), recorder(key))
        await done.wait()
        assert outcomes[1] is None and outcomes[3] is None and outcomes[4] is None
        assert isinstance(outcomes[2], Conflict)
        rows = await store.history(room.id, before=None, limit=10)
        assert [(r.seq, r.body) for r in rows] == [(1, '{"text": "k1"}'), (2, '{"text": "k3"}'), (3, '{"text": "k4"}')]
        assert store.commits == 1 + 1  # the room, then the four rows together
        page = await store.history(room.id, before=3, limit=1)
        assert [r.seq for r in page] == [2]
        with pytest.raises(Conflict):
            await store.create_room("GENERAL", "alice")
        nursery.cancel_scope.cancel()
    await store.close()


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


async def test_writes_after_the_committer_stopped_fail_instead_of_hanging(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "db")
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        nursery.cancel_scope.cancel()
    with trio.fail_after(5), pytest.raises(Exception, match="closed"):
        await store.create_room("late", None)
    await store.close()
