"""The settings of the chat domain: messages, history, listings, password hashing, restarts, and (nested)
the rates and caps of :class:`~utuvox.chat.limits.LimitsConfig`. Each field is a setting (see section.py)
unless marked ``NOT_A_SETTING``."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from .limits import LimitsConfig
from .section import NOT_A_SETTING, Section


class ChatConfig(Section):
    max_message_chars: int = Field(default=4000, ge=1, description="characters of one message at most")
    list_page_max: int = Field(default=500, ge=1, le=10_000,
                               description="entries in one page of a listing (rooms, users, sessions)")
    history_page_bytes: int = Field(default=1024 * 1024, ge=16 * 1024,
                                    description="bytes of one history page at most (it keeps the newest events)")
    # argon2id, OWASP's recommendation: 19 MiB, 2 iterations, 1 lane.
    argon2_memory_kib: int = Field(default=19 * 1024, ge=8, description="memory of one password hash (argon2id)")
    argon2_time_cost: int = Field(default=2, ge=1, description="iterations of one password hash (argon2id)")
    argon2_parallelism: int = Field(default=1, ge=1, description="lanes of one password hash (argon2id)")
    # After a start, how long a member of a room at the last stop may take to come back silently (rejoin.py).
    rejoin_grace: float = Field(default=60.0, ge=0,
                                description="seconds after a start in which the members of a room at the last stop "
                                            "come back without a join being stored")
    join_history: Annotated[int, NOT_A_SETTING] = Field(default=50, ge=0, description="events shown on join")
    recent_cache: Annotated[int, NOT_A_SETTING] = Field(default=200, ge=1,
                                                        description="events of each room kept in memory for joins and "
                                                                    "recent pages")
    history_page_max: Annotated[int, NOT_A_SETTING] = Field(default=500, ge=1, description="events in one history page")
    max_unacked: Annotated[int, NOT_A_SETTING] = Field(default=1000, ge=1,
                                                       description="messages one session may have waiting for commit "
                                                                   "before its reader waits")
    hash_threads: Annotated[int, NOT_A_SETTING] = Field(default=2, ge=1,
                                                        description="concurrent password hashes; each takes "
                                                                    "argon2_memory_kib of memory")
    limits: LimitsConfig = Field(default=LimitsConfig(), description="rates, caps, the login throttle")
