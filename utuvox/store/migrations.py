"""Schema migrations. ``MIGRATIONS[n]`` takes a database from version n-1 to n; never edit a shipped one,
add the next. The version lives in SQLite's ``user_version``.
"""

from __future__ import annotations

# The schema version of each stored body (utuvox.protocol.stored), so the form of an event can change
# without making old history unreadable: every body written before had version 1. The same statements
# serve both engines.
STORED_VERSION = [
    "ALTER TABLE events ADD COLUMN version INTEGER NOT NULL DEFAULT 1",
    "ALTER TABLE private_messages ADD COLUMN version INTEGER NOT NULL DEFAULT 1",
]

MIGRATIONS: dict[int, list[str]] = {
    1: [
        """CREATE TABLE users (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            name_key TEXT NOT NULL UNIQUE,
            password_hash TEXT NOT NULL,
            is_admin INTEGER NOT NULL DEFAULT 0,
            is_bot INTEGER NOT NULL DEFAULT 0,
            banned INTEGER NOT NULL DEFAULT 0,
            ban_reason TEXT,
            created_at TEXT NOT NULL
        )""",
        """CREATE TABLE rooms (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            name_key TEXT NOT NULL UNIQUE,
            created_by TEXT,
            created_at TEXT NOT NULL
        )""",
        # History is read by (room, seq) ranges only, so the primary key is that and nothing else.
        """CREATE TABLE events (
            room_id INTEGER NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
            seq INTEGER NOT NULL,
            ts REAL NOT NULL,  -- UNIX time; the event's own ISO 8601 time is in body
            type TEXT NOT NULL,
            user TEXT NOT NULL,
            body TEXT NOT NULL,
            PRIMARY KEY (room_id, seq)
        ) WITHOUT ROWID""",
        """CREATE TABLE files (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            room_id INTEGER NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
            original TEXT NOT NULL,
            size INTEGER NOT NULL,
            sha256 TEXT NOT NULL,
            uploader TEXT NOT NULL,
            created_at TEXT NOT NULL
        )""",
        "CREATE INDEX files_room ON files(room_id)",
        """CREATE TABLE admin_log (
            id INTEGER PRIMARY KEY,
            ts TEXT NOT NULL,
            actor TEXT NOT NULL,
            via TEXT NOT NULL,
            action TEXT NOT NULL,
            target TEXT,
            outcome TEXT NOT NULL,
            detail TEXT
        )""",
        "CREATE INDEX admin_log_ts ON admin_log(ts)",
        "CREATE INDEX admin_log_actor ON admin_log(actor, id)",
    ],
    2: [
        # Room topics: set by the room's creator or an admin.
        "ALTER TABLE rooms ADD COLUMN topic TEXT",
        "ALTER TABLE rooms ADD COLUMN topic_by TEXT",
        "ALTER TABLE rooms ADD COLUMN topic_ts REAL",
        # History by time as well as by seq (IRC CHATHISTORY asks by timestamp).
        "CREATE INDEX events_ts ON events(room_id, ts)",
        # Private messages, kept for both people: ``pair`` is their two name keys, sorted, joined by a space.
        """CREATE TABLE private_messages (
            id INTEGER PRIMARY KEY,
            pair TEXT NOT NULL,
            ts REAL NOT NULL,
            sender TEXT NOT NULL,
            recipient TEXT NOT NULL,
            body TEXT NOT NULL
        )""",
        "CREATE INDEX private_pair ON private_messages(pair, id)",
        "CREATE INDEX private_pair_ts ON private_messages(pair, ts)",
        "CREATE INDEX private_sender_ts ON private_messages(sender, ts)",
        "CREATE INDEX private_recipient_ts ON private_messages(recipient, ts)",
    ],
    3: STORED_VERSION,
}

SCHEMA_VERSION = max(MIGRATIONS)

# PostgreSQL's schema, versioned in the table ``schema_version``. Events are numbered inside the commit
# from ``rooms.last_seq``: the writer locks the counter rows of the rooms its batch writes to (in id
# order, so two nodes never deadlock on them), so a room's numbers are taken in commit order.
PG_MIGRATIONS: dict[int, list[str]] = {
    1: [
        """CREATE TABLE users (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            name TEXT NOT NULL,
            name_key TEXT NOT NULL UNIQUE,
            password_hash TEXT NOT NULL,
            is_admin BOOLEAN NOT NULL DEFAULT FALSE,
            is_bot BOOLEAN NOT NULL DEFAULT FALSE,
            banned BOOLEAN NOT NULL DEFAULT FALSE,
            ban_reason TEXT,
            created_at TEXT NOT NULL
        )""",
        """CREATE TABLE rooms (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            name TEXT NOT NULL,
            name_key TEXT NOT NULL UNIQUE,
            created_by TEXT,
            created_at TEXT NOT NULL,
            last_seq BIGINT NOT NULL DEFAULT 0
        )""",
        """CREATE TABLE events (
            room_id BIGINT NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
            seq BIGINT NOT NULL,
            ts DOUBLE PRECISION NOT NULL,
            type TEXT NOT NULL,
            "user" TEXT NOT NULL,
            body TEXT NOT NULL,
            PRIMARY KEY (room_id, seq)
        )""",
        """CREATE TABLE files (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            room_id BIGINT NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
            original TEXT NOT NULL,
            size BIGINT NOT NULL,
            sha256 TEXT NOT NULL,
            uploader TEXT NOT NULL,
            created_at TEXT NOT NULL
        )""",
        "CREATE INDEX files_room ON files(room_id)",
        """CREATE TABLE admin_log (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            ts TEXT NOT NULL,
            actor TEXT NOT NULL,
            via TEXT NOT NULL,
            action TEXT NOT NULL,
            target TEXT,
            outcome TEXT NOT NULL,
            detail TEXT
        )""",
        "CREATE INDEX admin_log_ts ON admin_log(ts)",
        "CREATE INDEX admin_log_actor ON admin_log(actor, id)",
        # Settings of the whole cluster (the admin key).
        "CREATE TABLE settings (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    ],
    2: [
        "ALTER TABLE rooms ADD COLUMN topic TEXT",
        "ALTER TABLE rooms ADD COLUMN topic_by TEXT",
        "ALTER TABLE rooms ADD COLUMN topic_ts DOUBLE PRECISION",
        "CREATE INDEX events_ts ON events(room_id, ts)",
        """CREATE TABLE private_messages (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            pair TEXT NOT NULL,
            ts DOUBLE PRECISION NOT NULL,
            sender TEXT NOT NULL,
            recipient TEXT NOT NULL,
            body TEXT NOT NULL
        )""",
        "CREATE INDEX private_pair ON private_messages(pair, id)",
        "CREATE INDEX private_pair_ts ON private_messages(pair, ts)",
        "CREATE INDEX private_sender_ts ON private_messages(sender, ts)",
        "CREATE INDEX private_recipient_ts ON private_messages(recipient, ts)",
    ],
    3: STORED_VERSION,
}

PG_SCHEMA_VERSION = max(PG_MIGRATIONS)
