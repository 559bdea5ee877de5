"""A store that keeps everything in memory, for tests of the chat rules without a disk.

It keeps the promises of the SQL stores: names are unique case-insensitively, each room's events are
numbered in commit order, writes go through the same group commit (so ``submit_event`` callbacks run
from the committer task, in commit order, after the call returned), and a failing write changes
nothing. It never touches a thread, so trio's ``MockClock`` can drive everything around it. Nothing
survives :meth:`MemoryStore.close`.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import trio

from utuvox.protocol.stored import CURRENT_VERSION

from .group_commit import GroupCommit, Outcome, Pending
from .history import PagedHistory
from .interface import (
    AdminLogRecord,
    Conflict,
    FileRecord,
    RoomGone,
    RoomRecord,
    StoredEvent,
    StoredPrivate,
    StoreError,
    UserRecord,
    numbered,
)
from .rows import now, pair
from .sql import USER_COLUMNS

T = TypeVar("T")


@dataclass
class Tables:
    """Everything stored. Ids, like a database's, are never given twice."""

    users: dict[str, UserRecord] = field(default_factory=dict)  # by name key
    rooms: dict[int, RoomRecord] = field(default_factory=dict)
    room_ids: dict[str, int] = field(default_factory=dict)  # by name key
    events: dict[int, list[StoredEvent]] = field(default_factory=dict)  # by room id, in seq order
    files: dict[str, FileRecord] = field(default_factory=dict)  # by name, in id order
    privates: dict[str, list[StoredPrivate]] = field(default_factory=dict)  # by pair, in id order
    admin_log: list[AdminLogRecord] = field(default_factory=list)
    last_id: dict[str, int] = field(default_factory=dict)  # by table

    def next_id(self, table: str) -> int:
        self.last_id[table] = self.last_id.get(table, 0) + 1
        return self.last_id[table]


def _page(items: list[T], key: Callable[[T], int], after: int | None, before: int | None, limit: int,
          latest: bool) -> list[T]:
    """Of ``items`` (in increasing ``key`` order), those with ``after < key < before``: the ``limit``
    newest if ``latest``, else the ``limit`` oldest; oldest first."""
    keys = [key(item) for item in items]
    start = 0 if after is None else bisect.bisect_right(keys, after)
    end = len(items) if before is None else bisect.bisect_left(keys, before)
    chosen = items[start:end]
    if limit <= 0:
        return []
    return chosen[-limit:] if latest else chosen[:limit]


class MemoryStore(PagedHistory, GroupCommit[Tables]):
    """Create with :meth:`open` (or the constructor), run :meth:`run` in a nursery, then use."""

    def __init__(self, *, max_pending: int = 50_000, max_batch: int = 1000) -> None:
        super().__init__(max_pending=max_pending, max_batch=max_batch)
        self._tables: Tables | None = Tables()

    @classmethod
    async def open(cls, **kwargs: Any) -> MemoryStore:
        await trio.lowlevel.checkpoint()
        return cls(**kwargs)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await self._commit_forever()

    async def close(self) -> None:
        """Commit what is queued, then forget everything. Safe to call twice."""
        if await self._drain():
            self._tables = None

    # --- group commit ---------------------------------------------------------------------------

    @property
    def _can_write(self) -> bool:
        return self._tables is not None

    async def _commit_batch(self, batch: list[Pending[Tables]]) -> list[Outcome]:
        # A checkpoint stands where the SQL stores wait for their writer thread: what is submitted
        # meanwhile waits for the next batch, and callbacks never run inside submit_event.
        await trio.lowlevel.checkpoint()
        return self._commit_sync(batch)

    def _commit_sync(self, batch: list[Pending[Tables]]) -> list[Outcome]:
        tables = self._tables
        if tables is None:
            return [(None, StoreError("the store is closed"))] * len(batch)
        outcomes: list[Outcome] = []
        for item in batch:
            try:
                # Each operation checks before it changes anything, so a failure leaves no trace.
                result = self._add_event(tables, item.row) if item.op is None else item.op(tables)
            except Exception as exc:
                outcomes.append((None, exc))
            else:
                outcomes.append((result, None))
        return outcomes

    @staticmethod
    def _add_event(tables: Tables, row: tuple[Any, ...] | None) -> int:
        assert row is not None
        room_id, _seq, ts, kind, user, body, version = row
        if room_id not in tables.rooms:
            raise RoomGone("the room no longer exists")
        events = tables.events.setdefault(room_id, [])
        seq = events[-1].seq + 1 if events else 1
        events.append(StoredEvent(room_id, seq, ts, kind, user, numbered(body, seq), version))
        return seq

    async def read(self, op: Callable[[Tables], T]) -> T:
        await trio.lowlevel.checkpoint()
        if self._tables is None:
            raise StoreError("the store is closed")
        return op(self._tables)

    # --- users ----------------------------------------------------------------------------------

    async def create_user(self, name: str, password_hash: str, *, is_admin: bool, is_bot: bool) -> UserRecord:
        def op(t: Tables) -> UserRecord:
            if name.lower() in t.users:
                raise Conflict(f"the name {name} is taken")
            user = UserRecord(t.next_id("users"), name, password_hash, is_admin, is_bot, False, None, now())
            t.users[name.lower()] = user
            return user

        return await self.write(op)

    async def get_user(self, name: str) -> UserRecord | None:
        return await self.read(lambda t: t.users.get(name.lower()))

    async def list_users(self, *, after: str | None = None, limit: int | None = None) -> list[UserRecord]:
        def op(t: Tables) -> list[UserRecord]:
            found = [t.users[key] for key in sorted(t.users) if key > (after or "").lower()]
            return found if limit is None else found[:max(limit, 0)]

        return await self.read(op)

    async def count_users(self) -> int:
        return await self.read(lambda t: len(t.users))

    async def update_user(self, name: str, **changes: Any) -> bool:
        unknown = set(changes) - USER_COLUMNS
        if unknown:
            raise ValueError(f"unknown user fields: {sorted(unknown)}")

        def op(t: Tables) -> bool:
            user = t.users.get(name.lower())
            if user is None:
                return False
            t.users[name.lower()] = replace(user, **changes)
            return True

        return await self.write(op)

    # --- rooms ----------------------------------------------------------------------------------

    async def create_room(self, name: str, created_by: str | None) -> RoomRecord:
        def op(t: Tables) -> RoomRecord:
            if name.lower() in t.room_ids:
                raise Conflict(f"the room {name} exists")
            room = RoomRecord(t.next_id("rooms"), name, created_by, now())
            t.rooms[room.id] = room
            t.room_ids[name.lower()] = room.id
            return room

        return await self.write(op)

    async def get_room(self, name: str) -> RoomRecord | None:
        return await self.read(lambda t: t.rooms.get(t.room_ids.get(name.lower(), 0)))

    async def list_rooms(self) -> list[RoomRecord]:
        return await self.read(lambda t: [t.rooms[t.room_ids[key]] for key in sorted(t.room_ids)])

    async def delete_room(self, room_id: int) -> None:
        def op(t: Tables) -> None:
            room = t.rooms.pop(room_id, None)
            if room is None:
                return
            del t.room_ids[room.name.lower()]
            t.events.pop(room_id, None)
            for name in [f.name for f in t.files.values() if f.room_id == room_id]:
                del t.files[name]

        await self.write(op)

    async def last_seq(self, room_id: int) -> int:
        return await self.read(lambda t: self._last(t, room_id))

    @staticmethod
    def _last(t: Tables, room_id: int) -> int:
        events = t.events.get(room_id)
        return events[-1].seq if events else 0

    async def room_seqs(self) -> dict[int, int]:
        return await self.read(lambda t: {room_id: events[-1].seq for room_id, events in t.events.items() if events})

    async def set_topic(self, room_id: int, topic: str | None, by: str, ts: float) -> None:
        def op(t: Tables) -> None:
            room = t.rooms.get(room_id)
            if room is not None:
                t.rooms[room_id] = replace(room, topic=topic, topic_by=by, topic_ts=ts)

        await self.write(op)

    # --- room history ---------------------------------------------------------------------------

    async def history_range(self, room_id: int, *, after: int | None, before: int | None, limit: int,
                            latest: bool) -> list[StoredEvent]:
        return await self.read(lambda t: _page(t.events.get(room_id, []), lambda e: e.seq, after, before, limit,
                                               latest))

    async def seq_at(self, room_id: int, ts: float) -> int:
        def op(t: Tables) -> int:
            found = [e.seq for e in t.events.get(room_id, []) if e.ts >= ts]
            return min(found) if found else self._last(t, room_id) + 1

        return await self.read(op)

    # --- private messages -----------------------------------------------------------------------

    async def add_private(self, *, ts: float, sender: str, recipient: str, body: str,
                          version: int = CURRENT_VERSION) -> int:
        def op(t: Tables) -> int:
            message = StoredPrivate(t.next_id("private_messages"), ts, sender.lower(), recipient.lower(), body,
                                    version)
            t.privates.setdefault(pair(sender, recipient), []).append(message)
            return message.id

        return await self.write(op)

    async def private_history(self, a: str, b: str, *, after: int | None, before: int | None, limit: int,
                              latest: bool) -> list[StoredPrivate]:
        return await self.read(lambda t: _page(t.privates.get(pair(a, b), []), lambda m: m.id, after, before,
                                               limit, latest))

    async def private_id_at(self, a: str, b: str, ts: float) -> int:
        def op(t: Tables) -> int:
            messages = t.privates.get(pair(a, b), [])
            found = [m.id for m in messages if m.ts >= ts]
            return min(found) if found else (messages[-1].id if messages else 0) + 1

        return await self.read(op)

    async def private_peers(self, name: str, *, since: float, until: float, limit: int) -> list[tuple[str, float]]:
        key = name.lower()

        def op(t: Tables) -> list[tuple[str, float]]:
            latest: dict[str, float] = {}
            for messages in t.privates.values():
                for m in messages:
                    if key in (m.sender, m.recipient) and since < m.ts < until:
                        peer = m.recipient if m.sender == key else m.sender
                        latest[peer] = max(latest.get(peer, m.ts), m.ts)
            return sorted(latest.items(), key=lambda item: item[1], reverse=True)[:max(limit, 0)]

        return await self.read(op)

    # --- files ----------------------------------------------------------------------------------

    async def add_file(self, *, name: str, room_id: int, original: str, size: int, sha256: str,
                       uploader: str) -> FileRecord:
        def op(t: Tables) -> FileRecord:
            room = t.rooms.get(room_id)
            if name in t.files or room is None:
                raise Conflict(f"the file name {name} is taken" if room else f"no room has the id {room_id}")
            record = FileRecord(t.next_id("files"), name, room_id, room.name, original, size, sha256, uploader,
                                now())
            t.files[name] = record
            return record

        return await self.write(op)

    async def get_file(self, name: str) -> FileRecord | None:
        return await self.read(lambda t: t.files.get(name))

    async def list_files(self, room_id: int) -> list[FileRecord]:
        return await self.read(lambda t: [f for f in t.files.values() if f.room_id == room_id])

    async def file_names(self) -> set[str]:
        return await self.read(lambda t: set(t.files))

    async def delete_file(self, name: str) -> bool:
        return await self.write(lambda t: t.files.pop(name, None) is not None)

    async def delete_files_of_room(self, room_id: int) -> list[FileRecord]:
        def op(t: Tables) -> list[FileRecord]:
            gone = [f for f in t.files.values() if f.room_id == room_id]
            for record in gone:
                del t.files[record.name]
            return gone

        return await self.write(op)

    # --- admin log ------------------------------------------------------------------------------

    async def add_admin_log(self, *, actor: str, via: str, action: str, target: str | None, outcome: str,
                            detail: str | None) -> None:
        def op(t: Tables) -> None:
            t.admin_log.append(AdminLogRecord(t.next_id("admin_log"), now(), actor, via, action, target, outcome,
                                              detail))

        await self.write(op)

    async def admin_log(self, *, actor: str | None = None, action: str | None = None,
                        since: str | None = None, limit: int = 100) -> list[AdminLogRecord]:
        def op(t: Tables) -> list[AdminLogRecord]:
            found = [r for r in t.admin_log if (actor is None or r.actor == actor)
                     and (action is None or r.action == action) and (since is None or r.ts >= since)]
            return found[-limit:] if limit > 0 else []

        return await self.read(op)
