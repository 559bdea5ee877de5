"""Persistence behind a small interface. Knows SQL, not sockets."""

from .interface import (
    AdminLogRecord,
    Conflict,
    FileRecord,
    RoomGone,
    RoomRecord,
    Store,
    StoredEvent,
    StoredPrivate,
    StoreError,
    UserRecord,
)
from .memory import MemoryStore
from .sqlite import SchemaTooNew, SqliteStore

__all__ = ["AdminLogRecord", "Conflict", "FileRecord", "MemoryStore", "RoomGone", "RoomRecord", "SchemaTooNew",
           "SqliteStore", "Store", "StoreError", "StoredEvent", "StoredPrivate", "UserRecord"]
