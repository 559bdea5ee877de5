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
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import trio

from .group_commit import GroupCommit, Outcome, Pending
from .interface import (
    AdminLogRecord,
    CommitCallback,
    Conflict,
    FileRecord,
    RoomRecord,
    StoredEvent,
    StoredPrivate,
    StoreError,
    UserRecord,
    numbered,
)
from .migrations import MIGRATIONS, SCHEMA_VERSION
from .rows import FILE_SELECT as _FILE_SELECT
from .rows import SchemaTooNew, page_bounds, pair, private_record
from .rows import file_record as _file
from .rows import now as _now
from .rows import room_record as _room
from .rows import user_record as _user

log = logging.getLogger("utuvox.store")

INSERT_EVENT = "INSERT INTO events(room_id, seq, ts, type, user, body) VALUES (?, ?, ?, ?, ?, ?)"


def _event_row(event: StoredEvent) -> tuple[Any, ...]:
    return (event.room_id, event.seq, event.ts, event.type, event.user, event.body)

T = TypeVar("T")


def _stored(r: sqlite3.Row) -> StoredEvent:
    return StoredEvent(r["room_id"], r["seq"], r["ts"], r["type"], r["user"], r["body"])


def _range(column: str, after: int | None, before: int | None, latest: bool) -> tuple[str, list[Any], str]:
    return page_bounds(column, after, before, latest, "?")
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


class SqliteStore(GroupCommit[sqlite3.Connection]):
    """One database file. Create with :meth:`open`, run :meth:`run` in a nursery, then use."""

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
        self._writer: sqlite3.Connection | None = None
        # Each room's last sequence number, numbered inside the commit (only the writer thread touches it;
        # a room is read from the table the first time a batch writes to it).
        self._last_seq: dict[int, int] = {}
        self._forget: set[int] = set()  # rooms deleted in the transaction being committed

    # --- lifecycle ------------------------------------------------------------------------------

    @classmethod
    async def open(cls, path: Path, **kwargs: Any) -> SqliteStore:
        store = cls(path, **kwargs)
        await trio.to_thread.run_sync(store._open_sync, limiter=store._writes)
        return store

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=30000")
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
        for _ in range(self._read_threads):
            reader = self._connect()
            reader.execute("PRAGMA query_only=ON")
            self._idle_readers.append(reader)
        self._checkpointer = self._connect()

    async def close(self) -> None:
        """Commit what is queued, then close. Safe to call twice."""
        if self._closed:
            return
        while self._pending:
            await self._commit_once()
        self._closed = True
        writer = self._writer
        if writer is not None:
            await trio.to_thread.run_sync(writer.close, limiter=self._writes)
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
        PASSIVE checkpoint never blocks the writer; the WAL starts over once one has caught up."""
        last = -1
        while True:
            await trio.sleep(interval)
            conn = self._checkpointer
            if self.commits == last or conn is None:
                continue
            last = self.commits
            try:
                await trio.to_thread.run_sync(conn.execute, "PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error as exc:
                log.warning("checkpoint failed: %s", exc)

    def _next_seq(self, conn: sqlite3.Connection, numbers: dict[int, int], room_id: int) -> int:
        last = numbers.get(room_id)
        if last is None:
            last = self._last_seq.get(room_id)
        if last is None:
            last = conn.execute("SELECT MAX(seq) FROM events WHERE room_id = ?", (room_id,)).fetchone()[0] or 0
        return last + 1

    def _number(self, conn: sqlite3.Connection, numbers: dict[int, int], row: tuple[Any, ...]) -> tuple[Any, ...]:
        """The row with the next sequence number of its room (counted in ``numbers``) in it."""
        room_id, _seq, ts, kind, user, body = row
        seq = numbers[room_id] = self._next_seq(conn, numbers, room_id)
        return (room_id, seq, ts, kind, user, numbered(body, seq))

    @property
    def _can_write(self) -> bool:
        return self._writer is not None

    def _commit_sync(self, batch: list[Pending[sqlite3.Connection]]) -> list[Outcome]:
        conn = self._writer
        assert conn is not None
        outcomes: list[Outcome] = []
        # Sequence numbers given out in this transaction; they count only once it commits.
        numbers: dict[int, int] = {}
        try:
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

    async def read(self, op: Callable[[sqlite3.Connection], T]) -> T:
        async with self._reads:  # as many readers as connections: one is always free here
            conn = self._idle_readers.pop()
            try:
                def run() -> T:
                    try:
                        return op(conn)
                    except sqlite3.Error as exc:
                        raise StoreError(f"could not read the database: {exc}") from exc

                return await trio.to_thread.run_sync(run)
            finally:
                self._idle_readers.append(conn)

    # --- users ----------------------------------------------------------------------------------

    async def create_user(self, name: str, password_hash: str, *, is_admin: bool, is_bot: bool) -> UserRecord:
        def op(conn: sqlite3.Connection) -> UserRecord:
            conn.execute(
                "INSERT INTO users(name, name_key, password_hash, is_admin, is_bot, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (name, name.lower(), password_hash, int(is_admin), int(is_bot), _now()),
            )
            row = conn.execute("SELECT * FROM users WHERE name_key = ?", (name.lower(),)).fetchone()
            return _user(row)

        return await self.write(op)

    async def get_user(self, name: str) -> UserRecord | None:
        def op(conn: sqlite3.Connection) -> UserRecord | None:
            row = conn.execute("SELECT * FROM users WHERE name_key = ?", (name.lower(),)).fetchone()
            return _user(row) if row else None

        return await self.read(op)

    async def list_users(self, *, after: str | None = None, limit: int | None = None) -> list[UserRecord]:
        def op(conn: sqlite3.Connection) -> list[UserRecord]:
            rows = conn.execute("SELECT * FROM users WHERE name_key > ? ORDER BY name_key LIMIT ?",
                                ((after or "").lower(), -1 if limit is None else limit))
            return [_user(r) for r in rows]

        return await self.read(op)

    async def count_users(self) -> int:
        return await self.read(lambda c: c.execute("SELECT COUNT(*) FROM users").fetchone()[0])

    _USER_COLUMNS = frozenset({"password_hash", "is_admin", "is_bot", "banned", "ban_reason"})

    async def update_user(self, name: str, **changes: Any) -> bool:
        unknown = set(changes) - self._USER_COLUMNS
        if unknown:
            raise ValueError(f"unknown user fields: {sorted(unknown)}")
        if not changes:
            return await self.get_user(name) is not None
        assignments = ", ".join(f"{column} = ?" for column in changes)
        values = [int(v) if isinstance(v, bool) else v for v in changes.values()]

        def op(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(f"UPDATE users SET {assignments} WHERE name_key = ?", (*values, name.lower()))
            return cursor.rowcount > 0

        return await self.write(op)

    # --- rooms ----------------------------------------------------------------------------------

    async def create_room(self, name: str, created_by: str | None) -> RoomRecord:
        def op(conn: sqlite3.Connection) -> RoomRecord:
            conn.execute(
                "INSERT INTO rooms(name, name_key, created_by, created_at) VALUES (?, ?, ?, ?)",
                (name, name.lower(), created_by, _now()),
            )
            return _room(conn.execute("SELECT * FROM rooms WHERE name_key = ?", (name.lower(),)).fetchone())

        return await self.write(op)

    async def get_room(self, name: str) -> RoomRecord | None:
        def op(conn: sqlite3.Connection) -> RoomRecord | None:
            row = conn.execute("SELECT * FROM rooms WHERE name_key = ?", (name.lower(),)).fetchone()
            return _room(row) if row else None

        return await self.read(op)

    async def list_rooms(self) -> list[RoomRecord]:
        return await self.read(lambda c: [_room(r) for r in c.execute("SELECT * FROM rooms ORDER BY name_key")])

    async def delete_room(self, room_id: int) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM events WHERE room_id = ?", (room_id,))
            conn.execute("DELETE FROM rooms WHERE id = ?", (room_id,))
            # SQLite may give a later room the same id: its numbers start over from its own rows.
            self._forget.add(room_id)

        await self.write(op)

    async def last_seq(self, room_id: int) -> int:
        def op(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT MAX(seq) FROM events WHERE room_id = ?", (room_id,)).fetchone()
            return row[0] or 0

        return await self.read(op)

    # --- room history ---------------------------------------------------------------------------

    async def room_seqs(self) -> dict[int, int]:
        def op(conn: sqlite3.Connection) -> dict[int, int]:
            # One pass over the primary key (room_id, seq): the last row of each room.
            return dict(conn.execute("SELECT room_id, MAX(seq) FROM events GROUP BY room_id").fetchall())

        return await self.read(op)

    def submit_event(self, event: StoredEvent, on_commit: CommitCallback) -> None:
        self.submit(None, lambda seq, error: on_commit(seq or 0, error), _event_row(event))

    async def history(self, room_id: int, *, before: int | None, limit: int) -> list[StoredEvent]:
        def op(conn: sqlite3.Connection) -> list[StoredEvent]:
            if before is None:
                rows = conn.execute(
                    "SELECT * FROM events WHERE room_id = ? ORDER BY seq DESC LIMIT ?", (room_id, limit)
                ).fetchall()
            else:
                rows = conn.execute(
                    "SELECT * FROM events WHERE room_id = ? AND seq < ? ORDER BY seq DESC LIMIT ?",
                    (room_id, before, limit),
                ).fetchall()
            return [_stored(r) for r in reversed(rows)]

        return await self.read(op)

    async def history_range(self, room_id: int, *, after: int | None, before: int | None, limit: int,
                            latest: bool) -> list[StoredEvent]:
        clause, params, order = _range("seq", after, before, latest)

        def op(conn: sqlite3.Connection) -> list[StoredEvent]:
            rows = conn.execute(f"SELECT * FROM events WHERE room_id = ?{clause} ORDER BY {order} LIMIT ?",
                                (room_id, *params, limit)).fetchall()
            events = [_stored(r) for r in rows]
            return events[::-1] if latest else events

        return await self.read(op)

    async def seq_at(self, room_id: int, ts: float) -> int:
        def op(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT MIN(seq) FROM events WHERE room_id = ? AND ts >= ?", (room_id, ts)).fetchone()
            if row[0] is not None:
                return int(row[0])
            last = conn.execute("SELECT MAX(seq) FROM events WHERE room_id = ?", (room_id,)).fetchone()[0]
            return (last or 0) + 1

        return await self.read(op)

    async def set_topic(self, room_id: int, topic: str | None, by: str, ts: float) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE rooms SET topic = ?, topic_by = ?, topic_ts = ? WHERE id = ?",
                         (topic, by, ts, room_id))

        await self.write(op)

    # --- private messages -----------------------------------------------------------------------

    async def add_private(self, *, ts: float, sender: str, recipient: str, body: str) -> int:
        def op(conn: sqlite3.Connection) -> int:
            cursor = conn.execute(
                "INSERT INTO private_messages(pair, ts, sender, recipient, body) VALUES (?, ?, ?, ?, ?)",
                (pair(sender, recipient), ts, sender.lower(), recipient.lower(), body))
            return int(cursor.lastrowid or 0)

        return await self.write(op)

    async def private_history(self, a: str, b: str, *, after: int | None, before: int | None, limit: int,
                              latest: bool) -> list[StoredPrivate]:
        clause, params, order = _range("id", after, before, latest)

        def op(conn: sqlite3.Connection) -> list[StoredPrivate]:
            rows = conn.execute(f"SELECT * FROM private_messages WHERE pair = ?{clause} ORDER BY {order} LIMIT ?",
                                (pair(a, b), *params, limit)).fetchall()
            found = [private_record(r) for r in rows]
            return found[::-1] if latest else found

        return await self.read(op)

    async def private_id_at(self, a: str, b: str, ts: float) -> int:
        def op(conn: sqlite3.Connection) -> int:
            key = pair(a, b)
            row = conn.execute("SELECT MIN(id) FROM private_messages WHERE pair = ? AND ts >= ?", (key, ts)).fetchone()
            if row[0] is not None:
                return int(row[0])
            last = conn.execute("SELECT MAX(id) FROM private_messages WHERE pair = ?", (key,)).fetchone()[0]
            return (last or 0) + 1

        return await self.read(op)

    async def private_peers(self, name: str, *, since: float, until: float, limit: int) -> list[tuple[str, float]]:
        key = name.lower()

        def op(conn: sqlite3.Connection) -> list[tuple[str, float]]:
            rows = conn.execute(
                "SELECT CASE WHEN sender = ? THEN recipient ELSE sender END AS peer, MAX(ts) AS last"
                " FROM private_messages WHERE (sender = ? OR recipient = ?) AND ts > ? AND ts < ?"
                " GROUP BY peer ORDER BY last DESC LIMIT ?", (key, key, key, since, until, limit)).fetchall()
            return [(r["peer"], r["last"]) for r in rows]

        return await self.read(op)

    async def events_after(self, room_id: int, after: int, limit: int) -> list[StoredEvent]:
        def op(conn: sqlite3.Connection) -> list[StoredEvent]:
            rows = conn.execute("SELECT * FROM events WHERE room_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                                (room_id, after, limit)).fetchall()
            return [StoredEvent(r["room_id"], r["seq"], r["ts"], r["type"], r["user"], r["body"]) for r in rows]

        return await self.read(op)

    # --- files ----------------------------------------------------------------------------------

    async def add_file(self, *, name: str, room_id: int, original: str, size: int, sha256: str,
                       uploader: str) -> FileRecord:
        def op(conn: sqlite3.Connection) -> FileRecord:
            cursor = conn.execute(
                "INSERT INTO files(name, room_id, original, size, sha256, uploader, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (name, room_id, original, size, sha256, uploader, _now()),
            )
            return _file(conn.execute(f"{_FILE_SELECT} WHERE files.id = ?", (cursor.lastrowid,)).fetchone())

        return await self.write(op)

    async def get_file(self, name: str) -> FileRecord | None:
        def op(conn: sqlite3.Connection) -> FileRecord | None:
            row = conn.execute(f"{_FILE_SELECT} WHERE files.name = ?", (name,)).fetchone()
            return _file(row) if row else None

        return await self.read(op)

    async def list_files(self, room_id: int) -> list[FileRecord]:
        return await self.read(lambda c: [
            _file(r) for r in c.execute(f"{_FILE_SELECT} WHERE files.room_id = ? ORDER BY files.id", (room_id,))
        ])

    async def file_names(self) -> set[str]:
        return await self.read(lambda c: {r[0] for r in c.execute("SELECT name FROM files")})

    async def delete_file(self, name: str) -> bool:
        return await self.write(lambda c: c.execute("DELETE FROM files WHERE name = ?", (name,)).rowcount > 0)

    async def delete_files_of_room(self, room_id: int) -> list[FileRecord]:
        def op(conn: sqlite3.Connection) -> list[FileRecord]:
            rows = [_file(r) for r in conn.execute(f"{_FILE_SELECT} WHERE files.room_id = ?", (room_id,))]
            conn.execute("DELETE FROM files WHERE room_id = ?", (room_id,))
            return rows

        return await self.write(op)

    # --- admin log ------------------------------------------------------------------------------

    async def add_admin_log(self, *, actor: str, via: str, action: str, target: str | None, outcome: str,
                            detail: str | None) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO admin_log(ts, actor, via, action, target, outcome, detail) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (_now(), actor, via, action, target, outcome, detail),
            )

        await self.write(op)

    async def admin_log(self, *, actor: str | None = None, action: str | None = None,
                        since: str | None = None, limit: int = 100) -> list[AdminLogRecord]:
        clauses, params = [], []
        for column, value, test in (("actor", actor, "="), ("action", action, "="), ("ts", since, ">=")):
            if value is not None:
                clauses.append(f"{column} {test} ?")
                params.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""

        def op(conn: sqlite3.Connection) -> list[AdminLogRecord]:
            rows = conn.execute(
                f"SELECT * FROM admin_log {where} ORDER BY id DESC LIMIT ?", (*params, limit)
            ).fetchall()
            return [AdminLogRecord(r["id"], r["ts"], r["actor"], r["via"], r["action"], r["target"],
                                   r["outcome"], r["detail"]) for r in reversed(rows)]

        return await self.read(op)

