"""JSON codec: one object per line on TCP, one per text frame on WebSocket."""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import ValidationError

from .base import INT_MAX, Frame, Reply, Request
from .errors import Code, ProtocolError
from .schema import CLIENT_FRAME, REQUESTS_BY_TYPE, SERVER_FRAME


def encode(frame: Frame) -> bytes:
    """The frame as one JSON line (newline included), fields that are ``None`` left out."""
    return frame.__pydantic_serializer__.to_json(frame, exclude_none=True, by_alias=True) + b"\n"


def _request_id(data: bytes | str) -> int | str | None:
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):
        return None
    rid = obj.get("id") if isinstance(obj, dict) else None
    if isinstance(rid, bool) or not isinstance(rid, int | str):
        return None
    if isinstance(rid, int) and abs(rid) > INT_MAX:
        return None
    if isinstance(rid, str):
        if len(rid) > 64:
            return None
        try:
            rid.encode()  # a lone surrogate ("\\ud800") parses here but could never be sent back
        except UnicodeEncodeError:
            return None
    return rid


def _explain(exc: ValidationError) -> tuple[Code, str]:
    errors = exc.errors(include_url=False, include_input=False)
    if not errors:  # pydantic always names what it refused; this is only a guard
        return Code.BAD_REQUEST, "Invalid frame."
    first = errors[0]
    kind = first["type"]
    if kind in ("json_invalid", "json_type", "model_attributes_type", "model_type") or (
        kind == "dict_type" and not first["loc"]
    ):
        return Code.BAD_JSON, "A frame must be one JSON object."
    if kind == "union_tag_not_found":
        return Code.UNKNOWN_TYPE, "The frame has no 'type' field."
    if kind == "union_tag_invalid":
        return Code.UNKNOWN_TYPE, f"Unknown type: {first.get('ctx', {}).get('tag', '?')!s:.64}."
    parts = []
    for err in errors[:3]:
        where = ".".join(str(p) for p in err["loc"][1:]) or "frame"
        parts.append(f"{where}: {err['msg']}")
    return Code.BAD_REQUEST, "Invalid frame: " + "; ".join(parts) + "."


# A frame that names its type first (every UtuVox client writes them so, as most JSON encoders do with a
# dict or model whose first key is the type) is validated by that type's model directly: the union
# parses the JSON into a tree before it can read the type, which doubles the cost of a message. The
# model's ``type`` is a literal, so a frame with a second, different "type" fails there like anywhere.
_TYPED_BYTES = re.compile(rb'\{\s*"type"\s*:\s*"([a-z_]{1,32})"')
_TYPED_STR = re.compile(r'\{\s*"type"\s*:\s*"([a-z_]{1,32})"')
_VALIDATORS = {name: model.__pydantic_validator__ for name, model in REQUESTS_BY_TYPE.items()}
_VALIDATORS_BYTES = {name.encode(): validator for name, validator in _VALIDATORS.items()}


def _by_type(data: bytes | str) -> Any:
    """The validator of the model the frame names first, if it does (else None: the union decides)."""
    if data.__class__ is bytes:
        typed = _TYPED_BYTES.match(data)
        return _VALIDATORS_BYTES.get(typed.group(1)) if typed is not None else None
    typed_str = _TYPED_STR.match(data)  # type: ignore[arg-type]
    return _VALIDATORS.get(typed_str.group(1)) if typed_str is not None else None


def decode_request(data: bytes | str) -> Request:
    """Validate one client frame. Raises :class:`ProtocolError` with a stable code, never anything else."""
    validator = _by_type(data)
    if validator is not None:
        try:
            return validator.validate_json(data)
        except (ValidationError, ValueError, RecursionError):
            pass  # not valid: the union says what is wrong, in the words it always has
    try:
        return CLIENT_FRAME.validate_json(data)
    except ValidationError as exc:
        code, message = _explain(exc)
        raise ProtocolError(code, message, re=_request_id(data)) from None
    except (ValueError, RecursionError, UnicodeDecodeError):
        raise ProtocolError(Code.BAD_JSON, "A frame must be one JSON object.") from None


def decode_server_frame(data: bytes | str) -> Reply | Any:
    """Validate one server frame (for clients). Raises :class:`ProtocolError` on anything malformed."""
    try:
        return SERVER_FRAME.validate_json(data)
    except ValidationError as exc:
        code, message = _explain(exc)
        raise ProtocolError(code, message) from None
    except (ValueError, RecursionError, UnicodeDecodeError):
        raise ProtocolError(Code.BAD_JSON, "A frame must be one JSON object.") from None
