"""Stable, machine-readable error codes, and the one exception the codecs raise."""

from __future__ import annotations

from enum import StrEnum


class Code(StrEnum):
    BAD_JSON = "bad_json"  # the frame is not a JSON object
    UNKNOWN_TYPE = "unknown_type"  # "type" is missing or names no request
    BAD_REQUEST = "bad_request"  # a field is missing, of the wrong type, or not allowed
    FRAME_TOO_LARGE = "frame_too_large"
    UNKNOWN_COMMAND = "unknown_command"  # text mode: no such slash command
    NOT_LOGGED_IN = "not_logged_in"
    ALREADY_LOGGED_IN = "already_logged_in"
    AUTH_FAILED = "auth_failed"
    BANNED = "banned"
    NAME_TAKEN = "name_taken"
    INVALID_NAME = "invalid_name"
    NO_SUCH_ROOM = "no_such_room"
    ROOM_EXISTS = "room_exists"
    NOT_IN_ROOM = "not_in_room"
    NO_SUCH_USER = "no_such_user"
    USER_OFFLINE = "user_offline"
    TOO_LONG = "too_long"
    EMPTY = "empty"
    FORBIDDEN = "forbidden"
    NOT_SUPPORTED = "not_supported"
    RATE_LIMITED = "rate_limited"
    LIMIT_REACHED = "limit_reached"
    SLOW_CONSUMER = "slow_consumer"
    SHUTTING_DOWN = "shutting_down"
    STORAGE = "storage_error"
    INTERNAL = "internal_error"


class ProtocolError(Exception):
    """A request that cannot be served, with a stable ``code`` and a sentence for people."""

    def __init__(self, code: Code | str, message: str, *, re: int | str | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.code = str(code)
        self.message = message
        self.re = re
        # For ``rate_limited``: seconds after which the same request would be accepted.
        self.retry_after = retry_after
