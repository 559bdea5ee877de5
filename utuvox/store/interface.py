"""What the chat layer needs from persistence, as a ``typing.Protocol``; one implementation per engine.

Records are plain frozen dataclasses (a room event: a named tuple), so nothing above this layer ever
sees a database row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from utuvox.protocol.stored import CURRENT_VERSION


class StoreError(Exception):
    """The store could not do what was asked (disk full, I/O error...). Nothing was changed."""


class Conflict(StoreError):
    """A unique name is taken (case-insensitively)."""


class RoomGone(StoreError):
    """The event's room was deleted before the event could be stored."""


@dataclass(frozen=True, slots=True)
class UserRecord:
    id: int
    name: str
    password_hash: str
    is_admin: bool
    is_bot: bool
    banned: bool
    ban_reason: str | None
    created_at: str


@dataclass(frozen=True, slots=True)
class RoomRecord:
    id: int
    name: str
    created_by: str | None
    created_at: str
    topic: str | None = None
    topic_by: str | None = None
    topic_ts: float | None = None  # UNIX time the topic was set


class StoredEvent(NamedTuple):
    """One room event as stored: its sequence number and its JSON form (the same bytes clients got),
    in the form of schema ``version`` (see :mod:`utuvox.protocol.stored`). A named tuple in the order
    of the table's columns: one is made for every message, and it is the row the store inserts (a frozen
    dataclass took three times as long to make, and a copy into a tuple)."""

    room_id: int
    seq: int
    ts: float  # UNIX time
    type: str
    user: str
    body: str
    version: int = CURRENT_VERSION


@dataclass(frozen=True, slots=True)
class StoredPrivate:
    """One private message as stored, under the conversation of its two people (name keys, sorted):
    ``id`` orders a conversation as ``seq`` orders a room."""

    id: int
    ts: float  # UNIX time
    sender: str
    recipient: str
    body: str
    version: int = CURRENT_VERSION


@dataclass(frozen=True, slots=True)
class AdminLogRecord:
    id: int
    ts: str
    actor: str
    via: str
    action: str
    target: str | None
    outcome: str
    detail: str | None


@dataclass(frozen=True, slots=True)
class FileRecord:
    """One shared file: its unique name (also its file name in the uploads directory) and what was announced."""

    id: int
    name: str
    room_id: int
    room: str
    original: str
    size: int
    sha256: str
    uploader: str
    created_at: str


CommitCallback = Callable[[int, BaseException | None], None]
"""Called with the sequence number the store gave the event and ``None``, or with ``0`` and the error."""

# The store numbers each room's events inside the commit, so that seq order is commit order even with
# several server processes writing one room. A submitted event's body carries this placeholder where its
# number goes; :func:`numbered` puts the number in. JSON escapes every quote inside a string, so the
# placeholder can only ever match the field itself.
SEQ_PLACEHOLDER = ',"seq":0,'


def numbered(body: str, seq: int) -> str:
    """``body`` (the JSON of an event made with ``seq=0``) with its sequence number filled in."""
    return body.replace(SEQ_PLACEHOLDER, f',"seq":{seq},', 1)


class Store(Protocol):
    async def run(self, *, task_status: Any = ...) -> None:
        """Background work (the group-commit writer); runs in the server's nursery until cancelled."""

    async def close(self) -> None: ...

    async def flush(self) -> None:
        """Return once everything submitted before is committed and its callbacks have run."""

    # users
    async def create_user(self, name: str, password_hash: str, *, is_admin: bool, is_bot: bool) -> UserRecord: ...
    async def get_user(self, name: str) -> UserRecord | None: ...
    async def list_users(self, *, after: str | None = None, limit: int | None = None) -> list[UserRecord]:
        """Users by name (case-insensitively), those after ``after`` only, at most ``limit`` of them."""

    async def count_users(self) -> int: ...
    async def update_user(self, name: str, **changes: Any) -> bool: ...

    # rooms
    async def create_room(self, name: str, created_by: str | None) -> RoomRecord: ...
    async def get_room(self, name: str) -> RoomRecord | None: ...
    async def list_rooms(self) -> list[RoomRecord]: ...
    async def delete_room(self, room_id: int) -> None: ...
    async def last_seq(self, room_id: int) -> int: ...

    async def room_seqs(self) -> dict[int, int]:
        """Every room's last sequence number, by room id, in one query (rooms without events left out)."""

    # room history
    def submit_event(self, event: StoredEvent, on_commit: CommitCallback) -> None:
        """Queue one event for the next group commit and return at once. The store numbers it inside
        the commit (``event.seq`` is ignored; its body carries :data:`SEQ_PLACEHOLDER`): ``on_commit``
        runs (in the event loop, in commit order) with the sequence number once it is durable, or with
        ``0`` and the error."""

    @property
    def backlogged(self) -> bool:
        """Whether the commit queue is full (``wait_for_room`` would wait)."""

    async def wait_for_room(self) -> None:
        """Return when the commit queue has room (back-pressure for producers of ``submit_event``)."""

    async def history(self, room_id: int, *, before: int | None, limit: int) -> list[StoredEvent]:
        """Up to ``limit`` events with ``seq < before`` (or the latest), oldest first."""

    async def events_after(self, room_id: int, after: int, limit: int) -> list[StoredEvent]:
        """Up to ``limit`` events with ``seq > after``, oldest first: how a node catches up on a room
        that other nodes wrote to."""

    async def history_range(self, room_id: int, *, after: int | None, before: int | None, limit: int,
                            latest: bool) -> list[StoredEvent]:
        """Events with ``after < seq < before`` (either bound may be open), oldest first: the ``limit``
        newest of them if ``latest``, else the ``limit`` oldest."""

    async def seq_at(self, room_id: int, ts: float) -> int:
        """The first sequence number whose event is at or after ``ts`` (one past the last if none)."""

    async def set_topic(self, room_id: int, topic: str | None, by: str, ts: float) -> None: ...

    # private messages
    async def add_private(self, *, ts: float, sender: str, recipient: str, body: str,
                          version: int = CURRENT_VERSION) -> int:
        """Commit one private message (``body`` in the form of schema ``version``); returns its id
        (increasing in commit order)."""

    async def private_history(self, a: str, b: str, *, after: int | None, before: int | None, limit: int,
                              latest: bool) -> list[StoredPrivate]:
        """The conversation of ``a`` and ``b`` (either order) with ``after < id < before``, oldest first,
        chosen as :meth:`history_range` chooses."""

    async def private_id_at(self, a: str, b: str, ts: float) -> int:
        """The first id of the conversation at or after ``ts`` (one past the last if none)."""

    async def private_peers(self, name: str, *, since: float, until: float, limit: int) -> list[tuple[str, float]]:
        """The people ``name`` exchanged private messages with between two times, with the time of the
        latest, newest first."""

    # files (the bytes live in the uploads directory under ``name``; the store keeps what describes them)
    async def add_file(self, *, name: str, room_id: int, original: str, size: int, sha256: str,
                       uploader: str) -> FileRecord:
        """Commit a file's row; raises :class:`Conflict` if ``name`` is taken."""

    async def get_file(self, name: str) -> FileRecord | None: ...

    async def list_files(self, room_id: int) -> list[FileRecord]:
        """The room's files, oldest first."""

    async def file_names(self) -> set[str]:
        """Every stored file name (for sweeping orphans from the uploads directory at startup)."""

    async def delete_file(self, name: str) -> bool: ...

    async def delete_files_of_room(self, room_id: int) -> list[FileRecord]:
        """Delete the room's file rows; returns what was deleted (so the caller can remove the bytes)."""

    # admin log
    async def add_admin_log(self, *, actor: str, via: str, action: str, target: str | None, outcome: str,
                            detail: str | None) -> None: ...
    async def admin_log(self, *, actor: str | None = None, action: str | None = None,
                        since: str | None = None, limit: int = 100) -> list[AdminLogRecord]: ...
