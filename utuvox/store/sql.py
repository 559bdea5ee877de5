"""What the SQL engines share: every query whose text and meaning are the same in SQLite and PostgreSQL,
written once with PostgreSQL's ``%s`` placeholders (an engine whose driver wants another mark sets
:attr:`SqlStore.MARK`). An engine supplies its connections, its group commit, ``read`` and what really
differs between them (how a room's last sequence number is known, what deleting a room involves).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from utuvox.protocol.stored import CURRENT_VERSION

from .group_commit import GroupCommit
from .history import PagedHistory
from .interface import (
    AdminLogRecord,
    FileRecord,
    RoomRecord,
    StoredEvent,
    StoredPrivate,
    UserRecord,
)
from .rows import (
    FILE_SELECT,
    admin_record,
    event_record,
    file_record,
    now,
    page_bounds,
    pair,
    private_record,
    room_record,
    user_record,
)

C = TypeVar("C")
T = TypeVar("T")

USER_COLUMNS = frozenset({"password_hash", "is_admin", "is_bot", "banned", "ban_reason"})


@functools.cache
def _marked(sql: str, mark: str) -> str:
    return sql.replace("%s", mark)


class SqlStore(PagedHistory, GroupCommit[C]):
    MARK = "%s"  # the driver's placeholder
    NO_LIMIT: int | None = None  # what ``LIMIT`` takes for "no limit"
    # A room's last sequence number (one column, ``s``; no row or NULL for none).
    LAST_SEQ = "SELECT MAX(seq) AS s FROM events WHERE room_id = %s"

    def q(self, sql: str) -> str:
        """``sql`` with this engine's placeholders."""
        return sql if self.MARK == "%s" else _marked(sql, self.MARK)

    async def read(self, op: Callable[[Any], T]) -> T:
        raise NotImplementedError

    def _exec(self, conn: Any, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> Any:
        """The cursor of ``sql`` (written with ``%s``) run on ``conn``."""
        return conn.execute(self.q(sql), params)

    def _one(self, conn: Any, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> Any:
        return self._exec(conn, sql, params).fetchone()

    def _all(self, conn: Any, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> list[Any]:
        return list(self._exec(conn, sql, params).fetchall())

    # --- users ----------------------------------------------------------------------------------

    async def create_user(self, name: str, password_hash: str, *, is_admin: bool, is_bot: bool) -> UserRecord:
        return await self.write(lambda conn: user_record(self._one(
            conn, "INSERT INTO users(name, name_key, password_hash, is_admin, is_bot, created_at)"
                  " VALUES (%s, %s, %s, %s, %s, %s) RETURNING *",
            (name, name.lower(), password_hash, is_admin, is_bot, now()))))

    async def get_user(self, name: str) -> UserRecord | None:
        row = await self.read(lambda conn: self._one(conn, "SELECT * FROM users WHERE name_key = %s",
                                                     (name.lower(),)))
        return user_record(row) if row else None

    async def list_users(self, *, after: str | None = None, limit: int | None = None) -> list[UserRecord]:
        rows = await self.read(lambda conn: self._all(
            conn, "SELECT * FROM users WHERE name_key > %s ORDER BY name_key LIMIT %s",
            ((after or "").lower(), self.NO_LIMIT if limit is None else limit)))
        return [user_record(r) for r in rows]

    async def count_users(self) -> int:
        return int(await self.read(lambda conn: self._one(conn, "SELECT COUNT(*) AS n FROM users")["n"]))

    async def update_user(self, name: str, **changes: Any) -> bool:
        unknown = set(changes) - USER_COLUMNS
        if unknown:
            raise ValueError(f"unknown user fields: {sorted(unknown)}")
        if not changes:
            return await self.get_user(name) is not None
        assignments = ", ".join(f"{column} = %s" for column in changes)
        sql = f"UPDATE users SET {assignments} WHERE name_key = %s"
        return await self.write(lambda conn: self._exec(conn, sql, (*changes.values(), name.lower())).rowcount > 0)

    # --- rooms ----------------------------------------------------------------------------------

    async def create_room(self, name: str, created_by: str | None) -> RoomRecord:
        return await self.write(lambda conn: room_record(self._one(
            conn, "INSERT INTO rooms(name, name_key, created_by, created_at) VALUES (%s, %s, %s, %s) RETURNING *",
            (name, name.lower(), created_by, now()))))

    async def get_room(self, name: str) -> RoomRecord | None:
        row = await self.read(lambda conn: self._one(conn, "SELECT * FROM rooms WHERE name_key = %s",
                                                     (name.lower(),)))
        return room_record(row) if row else None

    async def list_rooms(self) -> list[RoomRecord]:
        rows = await self.read(lambda conn: self._all(conn, "SELECT * FROM rooms ORDER BY name_key"))
        return [room_record(r) for r in rows]

    async def last_seq(self, room_id: int) -> int:
        row = await self.read(lambda conn: self._one(conn, self.LAST_SEQ, (room_id,)))
        return int(row["s"] or 0) if row else 0

    async def set_topic(self, room_id: int, topic: str | None, by: str, ts: float) -> None:
        await self.write(lambda conn: self._exec(
            conn, "UPDATE rooms SET topic = %s, topic_by = %s, topic_ts = %s WHERE id = %s", (topic, by, ts, room_id)))

    # --- room history ---------------------------------------------------------------------------

    async def history_range(self, room_id: int, *, after: int | None, before: int | None, limit: int,
                            latest: bool) -> list[StoredEvent]:
        clause, params, order = page_bounds("seq", after, before, latest, "%s")
        # Rows become records on the reading thread: a page can be long.
        events = await self.read(lambda conn: [event_record(r) for r in self._all(
            conn, f"SELECT * FROM events WHERE room_id = %s{clause} ORDER BY {order} LIMIT %s",
            (room_id, *params, limit))])
        return events[::-1] if latest else events

    async def seq_at(self, room_id: int, ts: float) -> int:
        def op(conn: Any) -> int:
            row = self._one(conn, "SELECT MIN(seq) AS s FROM events WHERE room_id = %s AND ts >= %s", (room_id, ts))
            if row is not None and row["s"] is not None:
                return int(row["s"])
            last = self._one(conn, self.LAST_SEQ, (room_id,))
            return int(last["s"] or 0) + 1 if last else 1

        return await self.read(op)

    # --- private messages -----------------------------------------------------------------------

    async def add_private(self, *, ts: float, sender: str, recipient: str, body: str,
                          version: int = CURRENT_VERSION) -> int:
        return await self.write(lambda conn: int(self._one(
            conn, "INSERT INTO private_messages(pair, ts, sender, recipient, body, version)"
                  " VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
            (pair(sender, recipient), ts, sender.lower(), recipient.lower(), body, version))["id"]))

    async def private_history(self, a: str, b: str, *, after: int | None, before: int | None, limit: int,
                              latest: bool) -> list[StoredPrivate]:
        clause, params, order = page_bounds("id", after, before, latest, "%s")
        found = await self.read(lambda conn: [private_record(r) for r in self._all(
            conn, f"SELECT * FROM private_messages WHERE pair = %s{clause} ORDER BY {order} LIMIT %s",
            (pair(a, b), *params, limit))])
        return found[::-1] if latest else found

    async def private_id_at(self, a: str, b: str, ts: float) -> int:
        key = pair(a, b)

        def op(conn: Any) -> int:
            row = self._one(conn, "SELECT MIN(id) AS i FROM private_messages WHERE pair = %s AND ts >= %s", (key, ts))
            if row is not None and row["i"] is not None:
                return int(row["i"])
            last = self._one(conn, "SELECT MAX(id) AS i FROM private_messages WHERE pair = %s", (key,))
            return int(last["i"] or 0) + 1 if last else 1

        return await self.read(op)

    async def private_peers(self, name: str, *, since: float, until: float, limit: int) -> list[tuple[str, float]]:
        key = name.lower()
        rows = await self.read(lambda conn: self._all(
            conn, "SELECT CASE WHEN sender = %s THEN recipient ELSE sender END AS peer, MAX(ts) AS last"
                  " FROM private_messages WHERE (sender = %s OR recipient = %s) AND ts > %s AND ts < %s"
                  " GROUP BY peer ORDER BY last DESC LIMIT %s", (key, key, key, since, until, limit)))
        return [(r["peer"], r["last"]) for r in rows]

    # --- files ----------------------------------------------------------------------------------

    async def add_file(self, *, name: str, room_id: int, original: str, size: int, sha256: str,
                       uploader: str) -> FileRecord:
        def op(conn: Any) -> FileRecord:
            row = self._one(conn, "INSERT INTO files(name, room_id, original, size, sha256, uploader, created_at)"
                                  " VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
                            (name, room_id, original, size, sha256, uploader, now()))
            return file_record(self._one(conn, f"{FILE_SELECT} WHERE files.id = %s", (row["id"],)))

        return await self.write(op)

    async def get_file(self, name: str) -> FileRecord | None:
        row = await self.read(lambda conn: self._one(conn, f"{FILE_SELECT} WHERE files.name = %s", (name,)))
        return file_record(row) if row else None

    async def list_files(self, room_id: int) -> list[FileRecord]:
        rows = await self.read(lambda conn: self._all(
            conn, f"{FILE_SELECT} WHERE files.room_id = %s ORDER BY files.id", (room_id,)))
        return [file_record(r) for r in rows]

    async def file_names(self) -> set[str]:
        return {r["name"] for r in await self.read(lambda conn: self._all(conn, "SELECT name FROM files"))}

    async def delete_file(self, name: str) -> bool:
        sql = "DELETE FROM files WHERE name = %s"
        return await self.write(lambda conn: self._exec(conn, sql, (name,)).rowcount > 0)

    async def delete_files_of_room(self, room_id: int) -> list[FileRecord]:
        def op(conn: Any) -> list[FileRecord]:
            rows = self._all(conn, f"{FILE_SELECT} WHERE files.room_id = %s ORDER BY files.id", (room_id,))
            self._exec(conn, "DELETE FROM files WHERE room_id = %s", (room_id,))
            return [file_record(r) for r in rows]

        return await self.write(op)

    # --- admin log ------------------------------------------------------------------------------

    async def add_admin_log(self, *, actor: str, via: str, action: str, target: str | None, outcome: str,
                            detail: str | None) -> None:
        await self.write(lambda conn: self._exec(
            conn, "INSERT INTO admin_log(ts, actor, via, action, target, outcome, detail)"
                  " VALUES (%s, %s, %s, %s, %s, %s, %s)", (now(), actor, via, action, target, outcome, detail)))

    async def admin_log(self, *, actor: str | None = None, action: str | None = None,
                        since: str | None = None, limit: int = 100) -> list[AdminLogRecord]:
        clauses, params = [], []
        for column, value, test in (("actor", actor, "="), ("action", action, "="), ("ts", since, ">=")):
            if value is not None:
                clauses.append(f"{column} {test} %s")
                params.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = await self.read(lambda conn: self._all(
            conn, f"SELECT * FROM admin_log {where} ORDER BY id DESC LIMIT %s", (*params, limit)))
        return [admin_record(r) for r in reversed(rows)]
