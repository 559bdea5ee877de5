"""The PostgreSQL store, for several server processes sharing one database.

psycopg 3's synchronous API on trio worker threads: one writer connection with group commit (see
group_commit.py), a few reader connections. Measured against the alternatives (docs/SCALING.md), this
was the fastest way from trio to PostgreSQL, and it keeps the event loop free of database I/O.

Events are numbered inside the commit: a batch first locks the counter rows (``rooms.last_seq``) of the
rooms it writes to, in id order, numbers its rows, and stores the new counters (a short batch of events
only does all of that in one statement). A second node writing
the same room waits for that lock until the first commits, so each room's numbers follow commit order
and any reader sees a gap-free prefix. Migrations run under an advisory lock, so nodes may start together.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
import trio
from psycopg import errors as pg_errors
from psycopg.rows import dict_row

from .group_commit import Outcome, Pending
from .interface import Conflict, RoomGone, StoreError, numbered
from .migrations import PG_MIGRATIONS, PG_SCHEMA_VERSION
from .rows import SchemaTooNew
from .sql import SqlStore

log = logging.getLogger("utuvox.store")

T = TypeVar("T")
Conn = psycopg.Connection[dict[str, Any]]

MIGRATION_LOCK = 0x75747576  # the advisory lock nodes take to migrate one at a time ("utuv")
# A long run of events goes in with COPY: measured at about twice the rows per second of a pipelined
# executemany; a short one with executemany, which costs fewer round trips (a lone message waits less).
COPY_FROM = 32
COPY_EVENTS = 'COPY events (room_id, seq, ts, type, "user", body, version) FROM STDIN'
# The same as _transaction does step by step, in one statement: lock the rooms' counters in id order, number
# each room's rows in batch order, store them with their number in their body, and move the counters.
NUMBER_AND_STORE = """
WITH input AS (
    SELECT * FROM unnest(%(rooms)s::bigint[], %(ts)s::float8[], %(types)s::text[], %(users)s::text[],
                         %(bodies)s::text[], %(versions)s::int[])
                  WITH ORDINALITY AS t(room_id, ts, type, "user", body, version, n)
), locked AS (
    SELECT id, last_seq FROM rooms WHERE id IN (SELECT room_id FROM input) ORDER BY id FOR NO KEY UPDATE
), numbered AS (
    SELECT i.n, i.room_id, l.last_seq + row_number() OVER (PARTITION BY i.room_id ORDER BY i.n) AS seq,
           i.ts, i.type, i."user", i.body, i.version
    FROM input i JOIN locked l ON l.id = i.room_id
), stored AS (
    INSERT INTO events(room_id, seq, ts, type, "user", body, version)
    SELECT room_id, seq, ts, type, "user", replace(body, ',"seq":0,', ',"seq":' || seq || ','), version FROM numbered
), counted AS (
    UPDATE rooms SET last_seq = m.last
    FROM (SELECT room_id, max(seq) AS last FROM numbered GROUP BY room_id) m WHERE rooms.id = m.room_id
)
SELECT n, seq FROM numbered ORDER BY n
"""
INSERT_EVENT = ('INSERT INTO events(room_id, seq, ts, type, "user", body, version)'
                ' VALUES (%s, %s, %s, %s, %s, %s, %s)')


class PostgresStore(SqlStore[Conn]):
    """Create with :meth:`open`, run :meth:`run` in a nursery, then use."""

    # Rooms keep their own counter, moved inside the commit.
    LAST_SEQ = "SELECT last_seq AS s FROM rooms WHERE id = %s"

    def __init__(self, url: str, *, max_pending: int = 50_000, max_batch: int = 1000, read_threads: int = 4) -> None:
        super().__init__(max_pending=max_pending, max_batch=max_batch)
        self.url = url
        self._reads = trio.CapacityLimiter(read_threads)
        self._readers: list[Conn] = []  # idle reader connections (at most ``read_threads`` exist)
        self._writer: Conn | None = None
        # Each room's last sequence number committed by this node's latest batch (for the doorbell).
        self._batch_last: dict[int, int] = {}
        # Called in the event loop after each batch with {room id: last seq} of the rooms it wrote to.
        self.on_batch: Callable[[dict[int, int]], None] | None = None

    # --- lifecycle ------------------------------------------------------------------------------

    @classmethod
    async def open(cls, url: str, **kwargs: Any) -> PostgresStore:
        store = cls(url, **kwargs)
        await trio.to_thread.run_sync(store._open_sync, limiter=store._writes)
        return store

    def _connect(self, *, autocommit: bool) -> Conn:
        try:
            return psycopg.connect(self.url, autocommit=autocommit, row_factory=dict_row,
                                   application_name="utuvox")
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to PostgreSQL: {exc}") from None

    def _open_sync(self) -> None:
        conn = self._connect(autocommit=True)
        try:
            conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
            try:
                self._migrate(conn)
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
        except psycopg.Error as exc:
            raise StoreError(f"cannot prepare the PostgreSQL database: {exc}") from None
        finally:
            conn.close()
        self._writer = self._connect(autocommit=False)

    @staticmethod
    def _migrate(conn: Conn) -> None:
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = conn.execute("SELECT MAX(version) AS v FROM schema_version").fetchone()
        version = (row or {}).get("v") or 0
        if version > PG_SCHEMA_VERSION:
            raise SchemaTooNew(f"the database has schema version {version}, newer than this UtuVox knows "
                               f"({PG_SCHEMA_VERSION}); refusing to touch it. Upgrade UtuVox.")
        for target in range(version + 1, PG_SCHEMA_VERSION + 1):
            with conn.transaction():
                for statement in PG_MIGRATIONS[target]:
                    conn.execute(statement)
                conn.execute("INSERT INTO schema_version(version) VALUES (%s)", (target,))
            log.info("PostgreSQL schema migrated to version %d", target)

    async def close(self) -> None:
        """Commit what is queued, then close every connection. Safe to call twice, and after the committer
        has ended (it refuses new writes then, but the connections are still open)."""
        await self._drain()
        connections = [c for c in [self._writer, *self._readers] if c is not None]
        self._writer, self._readers = None, []
        for conn in connections:
            await trio.to_thread.run_sync(conn.close)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await self._commit_forever()

    # --- group commit ---------------------------------------------------------------------------

    @property
    def _can_write(self) -> bool:
        return self._writer is not None

    def _committed(self) -> None:
        last, self._batch_last = self._batch_last, {}
        if last and self.on_batch is not None:
            try:
                self.on_batch(last)
            except Exception:
                log.exception("after-commit hook failed")

    def _commit_sync(self, batch: list[Pending[Conn]]) -> list[Outcome]:
        try:
            conn = self._writer_connection()
            return self._transaction(conn, batch)
        except psycopg.Error as exc:
            # The transaction as a whole failed (connection lost, server down): nothing of it is stored.
            self._reset_writer()
            error = StoreError(f"could not write to the database: {exc}")
            return [(None, error)] * len(batch)

    def _writer_connection(self) -> Conn:
        conn = self._writer
        if conn is None or conn.closed or conn.broken:
            conn = self._writer = psycopg.connect(self.url, autocommit=False, row_factory=dict_row,
                                                  application_name="utuvox")
        return conn

    def _reset_writer(self) -> None:
        conn = self._writer
        if conn is None:
            return
        try:
            conn.rollback()
        except psycopg.Error:
            conn.close()

    def _transaction(self, conn: Conn, batch: list[Pending[Conn]]) -> list[Outcome]:
        if len(batch) < COPY_FROM and all(item.row is not None for item in batch):
            return self._events_at_once(conn, batch)
        rooms = sorted({item.row[0] for item in batch if item.row is not None})
        counters: dict[int, int] = {}
        if rooms:
            # The counters of every room this batch writes to, locked now, in id order: then two nodes'
            # batches wait for each other at most once, never in a cycle.
            for row in conn.execute("SELECT id, last_seq FROM rooms WHERE id = ANY(%s) ORDER BY id FOR NO KEY UPDATE",
                                    (rooms,)):
                counters[row["id"]] = row["last_seq"]
        start = dict(counters)
        outcomes: list[Outcome] = []
        ops_done = False  # whether an operation ran in this transaction (only one could delete a locked room)
        i, n = 0, len(batch)
        while i < n:
            if batch[i].row is None:
                outcomes.append(self._run_op(conn, batch[i]))
                ops_done = True
                i += 1
                continue
            j = i
            while j < n and batch[j].row is not None:
                j += 1
            if not ops_done:
                # The usual batch, events only: the rooms are locked, so every row goes in (or the
                # transaction fails as a whole); no savepoint, a round trip less.
                run = self._number(batch[i:j], counters)
                self._insert(conn, [row for row, _ in run if row is not None])
                outcomes.extend(outcome for _, outcome in run)
                i = j
                continue
            before = dict(counters)
            conn.execute("SAVEPOINT rows")
            try:
                run = self._number(batch[i:j], counters)
                self._insert(conn, [row for row, _ in run if row is not None])
                conn.execute("RELEASE SAVEPOINT rows")
                outcomes.extend(outcome for _, outcome in run)
            except pg_errors.IntegrityError:
                # A room deleted earlier in this batch: one row at a time, so only its rows fail.
                conn.execute("ROLLBACK TO SAVEPOINT rows")
                counters.clear()
                counters.update(before)
                for item in batch[i:j]:
                    outcomes.append(self._insert_one(conn, item, counters))
            i = j
        changed = [(room_id, last) for room_id, last in counters.items() if last != start[room_id]]
        if changed:
            conn.execute("UPDATE rooms SET last_seq = v.last FROM unnest(%s::bigint[], %s::bigint[]) AS v(id, last)"
                         " WHERE rooms.id = v.id", ([r for r, _ in changed], [last for _, last in changed]))
        conn.commit()
        self._batch_last = dict(changed)
        return outcomes

    def _events_at_once(self, conn: Conn, batch: list[Pending[Conn]]) -> list[Outcome]:
        """A short batch of events only (a lone message, the usual batch of a quiet cluster): locked,
        numbered, stored and counted by one statement, then committed; two round trips in all, so the
        writer thread waits for the event loop's lock on the interpreter twice, not six times."""
        rows = [item.row for item in batch]
        columns = list(zip(*rows, strict=True))
        numbered = conn.execute(NUMBER_AND_STORE, {
            "rooms": list(columns[0]), "ts": list(columns[2]), "types": list(columns[3]),
            "users": list(columns[4]), "bodies": list(columns[5]), "versions": list(columns[6]),
        }).fetchall()
        conn.commit()
        seqs = {r["n"]: r["seq"] for r in numbered}
        last: dict[int, int] = {}
        outcomes: list[Outcome] = []
        for n, row in enumerate(rows, 1):
            seq = seqs.get(n)
            if seq is None:
                outcomes.append((None, RoomGone("the room no longer exists")))
            else:
                last[row[0]] = seq  # type: ignore[index]
                outcomes.append((seq, None))
        self._batch_last = last
        return outcomes

    @staticmethod
    def _insert(conn: Conn, rows: list[tuple[Any, ...]]) -> None:
        """Store numbered events: a few with one pipelined statement, many with COPY."""
        if not rows:
            return
        with conn.cursor() as cur:
            if len(rows) < COPY_FROM:
                cur.executemany(INSERT_EVENT, rows)
                return
            with cur.copy(COPY_EVENTS) as copy:
                for row in rows:
                    copy.write_row(row)

    @staticmethod
    def _number(items: list[Pending[Conn]],
                counters: dict[int, int]) -> list[tuple[tuple[Any, ...] | None, Outcome]]:
        """Each item's row numbered from its room's counter (or no row and an error: the room is gone)."""
        run: list[tuple[tuple[Any, ...] | None, Outcome]] = []
        for item in items:
            room_id, _seq, ts, kind, user, body, version = item.row  # type: ignore[misc]
            last = counters.get(room_id)
            if last is None:
                run.append((None, (None, RoomGone("the room no longer exists"))))
                continue
            seq = counters[room_id] = last + 1
            run.append(((room_id, seq, ts, kind, user, numbered(body, seq), version), (seq, None)))
        return run

    def _insert_one(self, conn: Conn, item: Pending[Conn], counters: dict[int, int]) -> Outcome:
        trial = dict(counters)
        [(row, outcome)] = self._number([item], trial)
        if row is None:
            return outcome
        conn.execute("SAVEPOINT op")
        try:
            conn.execute(INSERT_EVENT, row)
        except pg_errors.IntegrityError:
            conn.execute("ROLLBACK TO SAVEPOINT op")
            return None, RoomGone("the room no longer exists")
        conn.execute("RELEASE SAVEPOINT op")
        counters.update(trial)
        return outcome

    @staticmethod
    def _run_op(conn: Conn, item: Pending[Conn]) -> Outcome:
        assert item.op is not None
        conn.execute("SAVEPOINT op")
        try:
            result = item.op(conn)
        except pg_errors.IntegrityError as exc:
            conn.execute("ROLLBACK TO SAVEPOINT op")
            return None, Conflict(str(exc))
        except (psycopg.OperationalError, psycopg.InterfaceError):
            raise  # the connection is gone: the whole transaction fails
        except Exception as exc:
            conn.execute("ROLLBACK TO SAVEPOINT op")
            return None, exc if not isinstance(exc, psycopg.Error) else StoreError(str(exc))
        conn.execute("RELEASE SAVEPOINT op")
        return result, None

    # --- reads ----------------------------------------------------------------------------------

    async def read(self, op: Callable[[Any], T]) -> T:
        def run() -> T:
            # The limiter lets in at most ``read_threads`` threads, so at most that many connections exist.
            conn = self._readers.pop() if self._readers else None
            if conn is None or conn.closed or conn.broken:
                conn = self._connect(autocommit=True)
            try:
                return op(conn)
            except psycopg.Error as exc:
                raise StoreError(f"could not read the database: {exc}") from exc
            finally:
                if not conn.closed and not conn.broken and not self._closed:
                    self._readers.append(conn)
                else:
                    conn.close()

        return await trio.to_thread.run_sync(run, limiter=self._reads)

    # --- rooms ----------------------------------------------------------------------------------

    async def delete_room(self, room_id: int) -> None:
        await self.write(lambda c: c.execute("DELETE FROM rooms WHERE id = %s", (room_id,)))

    async def room_seqs(self) -> dict[int, int]:
        return await self.read(lambda c: {r["id"]: r["last_seq"] for r in c.execute("SELECT id, last_seq FROM rooms")})

    async def last_seqs(self) -> dict[int, tuple[str, int]]:
        """Every room's name and last sequence number, by id (how a node checks it missed nothing)."""
        return await self.read(lambda c: {r["id"]: (r["name"], r["last_seq"])
                                          for r in c.execute("SELECT id, name, last_seq FROM rooms")})

    # --- settings of the whole cluster ----------------------------------------------------------

    async def setting(self, name: str, default: str) -> tuple[str, bool]:
        """The setting's value, and whether this call stored it: ``default`` is stored if there is none
        yet (the first node to ask wins)."""
        def op(conn: Conn) -> tuple[str, bool]:
            made = conn.execute("INSERT INTO settings(name, value) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING"
                                " RETURNING value", (name, default)).fetchone()
            if made is not None:
                return made["value"], True
            row = conn.execute("SELECT value FROM settings WHERE name = %s", (name,)).fetchone()
            assert row is not None
            return row["value"], False

        return await self.write(op)

    async def set_setting(self, name: str, value: str) -> None:
        await self.write(lambda c: c.execute(
            "INSERT INTO settings(name, value) VALUES (%s, %s) ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
            (name, value)))
