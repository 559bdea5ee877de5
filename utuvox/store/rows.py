"""Rows to records, the same for every engine (a row is anything indexed by column name)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from .interface import AdminLogRecord, FileRecord, RoomRecord, StoredEvent, StoredPrivate, StoreError, UserRecord

Row = Mapping[str, Any]


class SchemaTooNew(StoreError):
    pass


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def user_record(row: Row) -> UserRecord:
    return UserRecord(row["id"], row["name"], row["password_hash"], bool(row["is_admin"]), bool(row["is_bot"]),
                      bool(row["banned"]), row["ban_reason"], row["created_at"])


def room_record(row: Row) -> RoomRecord:
    return RoomRecord(row["id"], row["name"], row["created_by"], row["created_at"], row["topic"],
                      row["topic_by"], row["topic_ts"])


def event_record(row: Row) -> StoredEvent:
    return StoredEvent(row["room_id"], row["seq"], row["ts"], row["type"], row["user"], row["body"], row["version"])


def private_record(row: Row) -> StoredPrivate:
    return StoredPrivate(row["id"], row["ts"], row["sender"], row["recipient"], row["body"], row["version"])


def admin_record(row: Row) -> AdminLogRecord:
    return AdminLogRecord(row["id"], row["ts"], row["actor"], row["via"], row["action"], row["target"],
                          row["outcome"], row["detail"])


def page_bounds(column: str, after: int | None, before: int | None, latest: bool,
                mark: str) -> tuple[str, list[Any], str]:
    """The extra WHERE conditions, their parameters and the ORDER BY of a page between two open bounds
    (``mark`` is the engine's placeholder)."""
    where, params = [], []
    if after is not None:
        where.append(f" AND {column} > {mark}")
        params.append(after)
    if before is not None:
        where.append(f" AND {column} < {mark}")
        params.append(before)
    return "".join(where), params, f"{column} DESC" if latest else column


def pair(a: str, b: str) -> str:
    """The key of the private conversation of two people, whichever way round."""
    return " ".join(sorted((a.lower(), b.lower())))


FILE_SELECT = "SELECT files.*, rooms.name AS room_name FROM files JOIN rooms ON rooms.id = files.room_id"


def file_record(row: Row) -> FileRecord:
    return FileRecord(row["id"], row["name"], row["room_id"], row["room_name"], row["original"], row["size"],
                      row["sha256"], row["uploader"], row["created_at"])
