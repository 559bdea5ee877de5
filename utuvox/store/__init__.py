"""Persistence behind a small interface. Knows SQL, not sockets."""

from .interface import (
    AdminLogRecord,
    Conflict,
    FileRecord,
    RoomRecord,
    Store,
    StoredEvent,
    StoredPrivate,
    StoreError,
    UserRecord,
)
from .sqlite import SchemaTooNew, SqliteStore

__all__ = ["AdminLogRecord", "Conflict", "FileRecord", "RoomRecord", "SchemaTooNew", "SqliteStore", "Store",
           "StoreError", "StoredEvent", "StoredPrivate", "UserRecord"]
