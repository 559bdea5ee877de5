"""The base classes every frame of the protocol derives from.

A frame is a JSON object with a ``type``. Client-to-server frames are *requests*; they may carry an
``id`` (any short string or integer the client picks), which comes back as ``re`` on the direct answer,
so a bot can keep many requests in flight. Server-to-client frames are *replies* (they carry ``re``)
and *events* (things that happened: a message, a join...), which carry a UTC timestamp ``ts``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter

# Every integer a client sends is bounded: 2^53 is the largest a JavaScript client holds exactly, and far
# below SQLite's 2^63 (an unbounded ``before`` of 2^63 used to reach the database and fail there).
INT_MAX = 2**53
RequestId = Annotated[int, Field(ge=-INT_MAX, le=INT_MAX)] | Annotated[str, StringConstraints(max_length=64)]
Seq = Annotated[int, Field(ge=1, le=INT_MAX)]
# A listing's page: at most ``limit`` entries after the cursor ``after`` (the ``next`` of the last page).
PageLimit = Annotated[int, Field(ge=1, le=10_000)]
Cursor = Annotated[str, StringConstraints(max_length=64)]
_DATETIME: TypeAdapter[datetime] = TypeAdapter(datetime)


def utc_now() -> datetime:
    return datetime.now(UTC)


def as_datetime(value: str | datetime) -> datetime:
    """A time as stored (ISO 8601 text) read the way a model's ``datetime`` field reads it."""
    return _DATETIME.validate_python(value)


def iso(ts: datetime) -> str:
    """ISO 8601 in UTC with a ``Z``, the form every timestamp on the wire takes."""
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Frame(BaseModel):
    # Unknown fields are refused rather than dropped so that a typo in a bot (``"romo"``) is an
    # error the author sees, not a silently ignored field.
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True, by_alias=True)


class Request(Frame):
    id: RequestId | None = None
    # Requests an operator alone may make (admin socket, or a chat session of an admin user).
    admin_only: ClassVar[bool] = False
    # Requests allowed before login.
    anonymous: ClassVar[bool] = False
    # Requests answered once their write is committed, so a run of them is pipelined and committed as
    # a group. Every other request waits for the session's pipelined writes before it is handled, so a
    # session's replies keep its request order and its reads see its own writes (the session loop).
    pipelined: ClassVar[bool] = False


class Reply(Frame):
    re: RequestId | None = None


class Event(Frame):
    """Something that happened. Room events carry the room and its per-room sequence number."""

    ts: datetime = Field(default_factory=utc_now)
