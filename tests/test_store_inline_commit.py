"""Where SQLite's commits run: a few history rows on the event loop (cheaper than the trip to the writer
thread and back), anything else on the writer thread, and every commit on the thread for a while after one
on the loop was slow. Whichever thread commits, each row is numbered, stored and acknowledged once."""

from __future__ import annotations

import sqlite3
import threading
import time
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest
import trio

from utuvox.store import sqlite
from utuvox.store.sqlite import SqliteStore

from .store_contract import Engine, event


def running(path: Path, threads: list[int]) -> AbstractAsyncContextManager[SqliteStore]:
    """A store whose committer runs (as the contract tests run one), noting the thread of each commit."""

    async def open_noting(**kwargs: Any) -> SqliteStore:
        store = await SqliteStore.open(path, **kwargs)
        commit = store._commit_sync

        def noted(batch: list[Any], begun: bool = False) -> Any:
            threads.append(threading.get_ident())
            return commit(batch, begun)

        store._commit_sync = noted  # type: ignore[method-assign]
        return store

    return Engine("sqlite", open_noting, durable=True).running()


async def submit_rows(store: SqliteStore, room_id: int, count: int) -> list[int]:
    """Queue ``count`` messages at once and wait until all are committed; their numbers."""
    seqs: list[int] = []
    done = trio.Event()

    def on_commit(seq: int, error: BaseException | None) -> None:
        assert error is None
        seqs.append(seq)
        if len(seqs) == count:
            done.set()

    for i in range(count):
        store.submit_event(event(room_id, f"m{i}"), on_commit)
    await done.wait()
    return seqs


async def test_small_batches_commit_on_the_loop_large_ones_and_operations_on_the_thread(tmp_path: Path) -> None:
    loop = threading.get_ident()
    threads: list[int] = []
    async with running(tmp_path / "db.sqlite", threads) as store:
        room = await store.create_room("r", None)  # an operation: on the writer thread
        assert threads[-1] != loop
        assert await submit_rows(store, room.id, 3) == [1, 2, 3]
        assert threads[-1] == loop
        large = sqlite.INLINE_ROWS * 4
        assert await submit_rows(store, room.id, large) == list(range(4, 4 + large))
        assert threads[-1] != loop
        stored = await store.history(room.id, before=None, limit=1000)
        assert [e.seq for e in stored] == list(range(1, 4 + large))
        assert ('"seq":1,' in stored[0].body and '"text":"m0"' in stored[0].body), stored[0].body


async def test_a_slow_commit_on_the_loop_sends_commits_to_the_thread(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    loop = threading.get_ident()
    threads: list[int] = []
    async with running(tmp_path / "db.sqlite", threads) as store:
        room = await store.create_room("r", None)
        monkeypatch.setattr(sqlite, "INLINE_SLOW", 0.0)  # every commit on the loop counts as slow
        await submit_rows(store, room.id, 1)
        assert threads[-1] == loop
        for _ in range(3):  # paused: small batches go to the thread now
            await submit_rows(store, room.id, 1)
            assert threads[-1] != loop
        assert 9 < store._inline_paused_until - time.monotonic() <= sqlite.INLINE_PAUSE
        store._inline_paused_until = 0.0  # the pause is over: on the loop again, and slow again
        await submit_rows(store, room.id, 1)
        assert threads[-1] == loop
        # a second stall pauses twice as long
        assert 19 < store._inline_paused_until - time.monotonic() <= 2 * sqlite.INLINE_PAUSE
        assert [e.seq for e in await store.history(room.id, before=None, limit=10)] == [1, 2, 3, 4, 5]


async def test_closing_after_the_committer_ended_closes_every_connection(tmp_path: Path) -> None:
    """The server's shutdown ends the committer first, then closes the store: the connections are closed
    all the same, and the last of them folds the WAL into the database and removes it."""
    path = tmp_path / "db.sqlite"
    async with running(path, []) as store:
        room = await store.create_room("r", None)
        await submit_rows(store, room.id, 5)
        assert path.with_name("db.sqlite-wal").exists()
        # (running() cancels the committer on the way out, then closes the store)
    assert store._writer is None and not store._idle_readers and store._checkpointer is None
    assert not path.with_name("db.sqlite-wal").exists()
    await store.close()  # twice is fine
    reopened = await SqliteStore.open(path)
    try:
        assert [e.seq for e in await reopened.history(room.id, before=None, limit=10)] == [1, 2, 3, 4, 5]
    finally:
        await reopened.close()


async def test_a_write_lock_held_elsewhere_is_waited_for_on_the_thread_not_on_the_loop(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    loop = threading.get_ident()
    threads: list[int] = []
    async with running(path, threads) as store:
        room = await store.create_room("r", None)
        # Another connection (an operator's sqlite3 shell) holds the write lock for a second.
        blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        blocker.execute("BEGIN IMMEDIATE")
        release = threading.Timer(1.0, blocker.execute, ["COMMIT"])
        release.start()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(submit_rows, store, room.id, 1)
                start = time.monotonic()
                await trio.sleep(0.05)
                # The event loop went on meanwhile: it did not sit in SQLite's busy wait.
                assert time.monotonic() - start < 0.5
        finally:
            release.join()
            blocker.close()
        assert threads[-1] != loop  # committed by the writer thread, once the lock was free
        assert [e.seq for e in await store.history(room.id, before=None, limit=10)] == [1]
        await submit_rows(store, room.id, 1)
        assert threads[-1] == loop  # and the next one on the loop again
