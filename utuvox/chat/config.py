"""The limits and tunables of the chat domain. Every limit is a named setting (see utuvox.settings)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .limits import LimitsConfig


@dataclass(frozen=True)
class ChatConfig:
    max_message_chars: int = 4000
    join_history: int = 50  # events shown on join
    recent_cache: int = 200  # events of each room kept in memory for joins and recent pages
    history_page_max: int = 500
    list_page_max: int = 500  # entries in one page of a listing (rooms, users, sessions)
    history_page_bytes: int = 1024 * 1024  # a history page stops here (keeping the newest), whatever its limit
    max_unacked: int = 1000  # messages one session may have waiting for commit before its reader waits
    # argon2id, OWASP's recommendation: 19 MiB, 2 iterations, 1 lane.
    argon2_memory_kib: int = 19 * 1024
    argon2_time_cost: int = 2
    argon2_parallelism: int = 1
    # After a start, how long a member of a room at the last stop may take to come back silently (rejoin.py).
    rejoin_grace: float = 60.0
    hash_threads: int = 2  # concurrent hashes; each takes argon2_memory_kib of RAM
    limits: LimitsConfig = field(default_factory=LimitsConfig)  # rates, caps, the login throttle
