"""The SQLite store: WAL mode, a schema version with migrations, one writer with group commit (see
group_commit.py), and reads on worker threads so the event loop never waits for the disk. Each operation
runs inside its own SAVEPOINT, so one failing operation (a taken name) does not undo its neighbours.

Durability: ``synchronous=NORMAL`` in WAL mode survives the process being killed at any moment (the
WAL is written before a commit returns); only a power loss can roll back the last commits.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import trio

from .group_commit import Outcome, Pending
from .interface import Conflict, StoreError, numbered
from .migrations import MIGRATIONS, SCHEMA_VERSION
from .rows import SchemaTooNew
from .sql import SqlStore
from .writer_thread import WriterThread

log = logging.getLogger("utuvox.store")

# Commits of at most this many history rows are made on the event loop (see SqliteStore._inline); one
# that takes longer than INLINE_SLOW seconds sends every commit to the writer thread for INLINE_PAUSE, doubled
# for each stall after the first (a disk that stays slow costs the loop one stall per doubling). The
# bar is a disk that stalls, not a busy core: a commit preempted for a millisecond or two on a shared
# machine is common and says nothing about the disk (a 2 ms bar kept commits off the loop most of the time).
BUSY_TIMEOUT_MS = 30_000  # how long a connection waits for another's lock before it fails
INLINE_ROWS = 16
INLINE_SLOW = 0.02
INLINE_PAUSE = 10

INSERT_EVENT = "INSERT INTO events(room_id, seq, ts, type, user, body, version) VALUES (?, ?, ?, ?, ?, ?, ?)"

T = TypeVar("T")


def _create_private(path: Path) -> None:
    """Create the database file readable by its owner only (SQLite gives its -wal and -shm files the
    same mode), and warn if an existing one is readable by others: it holds every message and hash."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            with contextlib.suppress(FileNotFoundError):
                if file.stat().st_mode & 0o077:
                    log.warning("%s can be read by other users of this machine (mode %o); chmod 600 it",
                                file, file.stat().st_mode & 0o777)
        return
    os.close(fd)


class SqliteStore(SqlStore[sqlite3.Connection]):
    """One database file. Create with :meth:`open`, run :meth:`run` in a nursery, then use."""

    MARK = "?"
    NO_LIMIT = -1

    def __init__(self, path: Path, *, max_pending: int = 50_000, max_batch: int = 1000, read_threads: int = 4) -> None:
        super().__init__(max_pending=max_pending, max_batch=max_batch)
        self.path = path
        self._reads = trio.CapacityLimiter(read_threads)
        # Reading connections, opened at start: a server that runs short of file descriptors later (a
        # connection flood) must still be able to read, and a thread-local connection per worker thread
        # would open new ones whenever the thread cache changes.
        self._read_threads = read_threads
        self._idle_readers: list[sqlite3.Connection] = []
        self._checkpointer: sqlite3.Connection | None = None
        # The checkpointer's own thread, niced: copying the WAL into the database can wait for the event
        # loop, and on a busy core it would otherwise take the core from it for milliseconds each second.
        self._checkpoint = WriterThread("SqliteStore-checkpoints", nice=10)
        self._commits_since_checkpoint = trio.Event()  # set by each commit, renewed by each checkpoint
        self._writer: sqlite3.Connection | None = None
        self._waits_for_locks = True  # the writer's busy timeout is BUSY_TIMEOUT_MS (else 0)
        # Each room's last sequence number, numbered inside the commit (only the writer thread touches it;
        # a room is read from the table the first time a batch writes to it).
        self._last_seq: dict[int, int] = {}
        self._forget: set[int] = set()  # rooms deleted in the transaction being committed
        self._inline_paused_until = 0.0  # (time.monotonic) no commits on the event loop until then
        self._inline_stalls = 0  # commits on the event loop that stalled, since the process started

    # --- lifecycle ------------------------------------------------------------------------------

    @classmethod
    async def open(cls, path: Path, **kwargs: Any) -> SqliteStore:
        store = cls(path, **kwargs)
        await trio.to_thread.run_sync(store._open_sync, limiter=store._writes)
        return store

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                               timeout=BUSY_TIMEOUT_MS / 1000)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        return conn

    def _open_sync(self) -> None:
        _create_private(self.path)
        conn = self._connect()
        check = conn.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise StoreError(f"database {self.path} failed its integrity check: {check}")
        conn.execute("PRAGMA journal_mode=WAL")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"database {self.path} has schema version {version}, newer than this UtuVox knows "
                f"({SCHEMA_VERSION}); refusing to touch it. Upgrade UtuVox."
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            conn.execute("BEGIN IMMEDIATE")
            for statement in MIGRATIONS[target]:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version={target}")
            conn.execute("COMMIT")
        # Checkpoints (copying the WAL into the database file, with an fsync) would otherwise run inside
        # whichever commit crosses the threshold, and every message in that batch would wait for the
        # disk. They run on their own connection and thread instead (see _checkpoints).
        conn.execute("PRAGMA wal_autocheckpoint=0")
        self._writer = conn
        self._waits_for_locks = True  # (as every connection starts, see _connect)
        for _ in range(self._read_threads):
            reader = self._connect()
            reader.execute("PRAGMA query_only=ON")
            self._idle_readers.append(reader)
        self._checkpointer = self._connect()

    async def close(self) -> None:
        """Commit what is queued, then close every connection. Safe to call twice, and after the committer
        has ended (it refuses new writes then, but the connections are still open: the last one to close
        folds the WAL into the database and removes it)."""
        await self._drain()
        async with self._writes:  # not while a commit runs
            writer, self._writer = self._writer, None
        if writer is not None:
            # The last connection to close folds the WAL into the database: it may wait for a reader.
            self._wait_for_locks(writer, True)
            await trio.to_thread.run_sync(writer.close)
        for conn in [*self._idle_readers, *([self._checkpointer] if self._checkpointer else [])]:
            conn.close()
        self._idle_readers.clear()
        self._checkpointer = None

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._checkpoints)
            task_status.started()
            try:
                await self._commit_forever()
            finally:
                nursery.cancel_scope.cancel()

    async def _checkpoints(self, interval: float = 1.0) -> None:
        """Move committed pages from the WAL into the database now and then, off the commit path. A
        PASSIVE checkpoint never blocks the writer; the WAL starts over once one has caught up. It
        sleeps until a commit happens (an idle server never wakes for it), then lets ``interval`` pass
        so that one checkpoint covers the commits of that while."""
        async with self._checkpoint.started():
            while True:
                await self._commits_since_checkpoint.wait()
                await trio.sleep(interval)
                self._commits_since_checkpoint = trio.Event()
                conn = self._checkpointer
                if conn is None:
                    continue
                try:
                    await self._checkpoint.run(conn.execute, "PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error as exc:
                    log.warning("checkpoint failed: %s", exc)

    def _committed(self) -> None:
        self._commits_since_checkpoint.set()

    def _next_seq(self, conn: sqlite3.Connection, numbers: dict[int, int], room_id: int) -> int:
        last = numbers.get(room_id)
        if last is None:
            last = self._last_seq.get(room_id)
        if last is None:
            last = conn.execute("SELECT MAX(seq) FROM events WHERE room_id = ?", (room_id,)).fetchone()[0] or 0
        return last + 1

    def _number(self, conn: sqlite3.Connection, numbers: dict[int, int], row: tuple[Any, ...]) -> tuple[Any, ...]:
        """The row with the next sequence number of its room (counted in ``numbers``) in it."""
        room_id, _seq, ts, kind, user, body, version = row
        seq = numbers[room_id] = self._next_seq(conn, numbers, room_id)
        return (room_id, seq, ts, kind, user, numbered(body, seq), version)

    @property
    def _can_write(self) -> bool:
        return self._writer is not None

    def _inline(self, batch: list[Pending[sqlite3.Connection]]) -> bool:
        """A few history rows are committed on the event loop: in WAL mode with ``synchronous=NORMAL`` a
        commit writes to the WAL without waiting for the disk (tens of microseconds), less than the trip
        to the writer thread and back costs a lone message in latency. Anything else (an operation that
        may read or delete much, a large batch) goes to the thread, and so does every commit for a
        while after one that took long here (a disk that stalls must not stall every connection)."""
        if len(batch) > INLINE_ROWS or time.monotonic() < self._inline_paused_until:
            return False
        return all(item.row is not None for item in batch)

    def _inline_took(self, seconds: float) -> None:
        if seconds > INLINE_SLOW:
            pause = INLINE_PAUSE * 2 ** min(self._inline_stalls, 16)
            self._inline_stalls += 1
            self._inline_paused_until = time.monotonic() + pause
            log.warning("a commit on the event loop took %.0f ms: committing on the writer thread for %d s",
                        seconds * 1000, pause)

    def _commit_inline(self, batch: list[Pending[sqlite3.Connection]]) -> list[Outcome] | None:
        """On the event loop nothing waits for a lock: if another connection (an operator's ``sqlite3``
        shell, say) holds the database's write lock, the writer thread commits this batch instead, waiting
        out the busy timeout there."""
        conn = self._writer
        assert conn is not None
        self._wait_for_locks(conn, False)
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:  # locked (or the disk refuses): the thread will see
            return None
        return self._commit_sync(batch, begun=True)

    def _wait_for_locks(self, conn: sqlite3.Connection, wait: bool) -> None:
        """The writer's busy timeout: none for a commit on the event loop, which never waits for a lock,
        the full one for everything on the writer thread. Set only when it changes: two PRAGMAs around
        every commit cost a fifth of a small one."""
        if self._waits_for_locks is not wait:
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS if wait else 0}")
            self._waits_for_locks = wait

    def _commit_sync(self, batch: list[Pending[sqlite3.Connection]], begun: bool = False) -> list[Outcome]:
        conn = self._writer
        assert conn is not None
        outcomes: list[Outcome] = []
        # Sequence numbers given out in this transaction; they count only once it commits.
        numbers: dict[int, int] = {}
        try:
            if not begun:
                self._wait_for_locks(conn, True)
                conn.execute("BEGIN IMMEDIATE")
            i, n = 0, len(batch)
            while i < n:
                if batch[i].row is None:
                    outcomes.append(self._run_one(conn, batch[i], numbers))
                    i += 1
                    continue
                # A run of history rows (the common case under load): one statement for all of them;
                # only if it fails, one at a time, so a bad row fails alone (and takes no number).
                j = i
                while j < n and batch[j].row is not None:
                    j += 1
                if j - i == 1:
                    # One row (every lone message): a failed INSERT undoes only itself, as every SQLite
                    # statement does, so it needs no savepoint.
                    outcomes.append(self._insert_one(conn, batch[i], numbers))
                    i = j
                    continue
                run = batch[i:j]
                before = dict(numbers)
                rows = [self._number(conn, numbers, item.row) for item in run]  # type: ignore[arg-type]
                conn.execute("SAVEPOINT rows")
                try:
                    conn.executemany(INSERT_EVENT, rows)
                    conn.execute("RELEASE rows")
                    outcomes.extend((row[1], None) for row in rows)
                except sqlite3.IntegrityError:
                    conn.execute("ROLLBACK TO rows")
                    conn.execute("RELEASE rows")
                    numbers = before
                    outcomes.extend(self._run_one(conn, item, numbers) for item in run)
                i = j
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            # The transaction as a whole failed (disk full, I/O error): nothing of it is stored.
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            error = StoreError(f"could not write to the database: {exc}")
            return [(None, error)] * len(batch)
        finally:
            forget, self._forget = self._forget, set()
        self._last_seq.update(numbers)
        for room_id in forget:
            self._last_seq.pop(room_id, None)
        return outcomes

    def _insert_one(self, conn: sqlite3.Connection, item: Pending[sqlite3.Connection],
                    numbers: dict[int, int]) -> Outcome:
        assert item.row is not None
        row = self._number(conn, dict(numbers), item.row)  # (the number counts only once the row is in)
        try:
            conn.execute(INSERT_EVENT, row)
        except sqlite3.IntegrityError as exc:
            return None, Conflict(str(exc))
        numbers[row[0]] = row[1]
        return row[1], None

    def _run_one(self, conn: sqlite3.Connection, item: Pending[sqlite3.Connection],
                 numbers: dict[int, int]) -> Outcome:
        conn.execute("SAVEPOINT op")
        try:
            if item.op is None:
                assert item.row is not None
                room_id = item.row[0]
                row = self._number(conn, dict(numbers), item.row)
                conn.execute(INSERT_EVENT, row)
                numbers[room_id] = result = row[1]
            else:
                result = item.op(conn)
        except sqlite3.IntegrityError as exc:
            conn.execute("ROLLBACK TO op")
            conn.execute("RELEASE op")
            return None, Conflict(str(exc))
        except sqlite3.OperationalError:
            raise  # disk full, I/O error: the whole transaction fails
        except Exception as exc:
            conn.execute("ROLLBACK TO op")
            conn.execute("RELEASE op")
            return None, exc
        conn.execute("RELEASE op")
        return result, None

    # --- reads ----------------------------------------------------------------------------------

    async def read(self, op: Callable[[Any], T]) -> T:
        def run() -> T:
            # The limiter lets in as many threads as there are connections: one is always free here.
            conn = self._idle_readers.pop()
            try:
                return op(conn)
            except sqlite3.Error as exc:
                raise StoreError(f"could not read the database: {exc}") from exc
            finally:
                self._idle_readers.append(conn)

        return await trio.to_thread.run_sync(run, limiter=self._reads)

    async def delete_room(self, room_id: int) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM events WHERE room_id = ?", (room_id,))
            conn.execute("DELETE FROM rooms WHERE id = ?", (room_id,))
            # SQLite may give a later room the same id: its numbers start over from its own rows.
            self._forget.add(room_id)

        await self.write(op)

    # --- room history ---------------------------------------------------------------------------

    async def room_seqs(self) -> dict[int, int]:
        def op(conn: sqlite3.Connection) -> dict[int, int]:
            # One pass over the primary key (room_id, seq): the last row of each room.
            return dict(conn.execute("SELECT room_id, MAX(seq) FROM events GROUP BY room_id").fetchall())

        return await self.read(op)
