"""Reading server frames as a client should: tolerant of what a newer server adds.

The models refuse unknown fields, which is right for the server (a typo in a bot's request is an error
its author sees) and wrong for a client: a server that adds a field to ``ok`` must not make an older
client's request fail. :func:`decode` therefore validates a server frame strictly first (the common
case, and the fast one), and only when that fails because of fields or types it does not know, leaves
them out and validates what remains. A frame whose own ``type`` is unknown comes back as
:class:`UnknownFrame`, for the caller to skip.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from pydantic import ValidationError

from .base import Event, Reply
from .errors import Code, ProtocolError
from .json_codec import decode_server_frame
from .schema import SERVER_FRAME


@dataclass(frozen=True, slots=True)
class UnknownFrame:
    """A server frame of a ``type`` this client does not know (from a newer server). ``data`` is the
    whole JSON object; ``re`` is its ``re`` field, if it has one."""

    type: str
    re: int | str | None = None
    data: dict[str, Any] = field(default_factory=dict)


# Errors a newer server can cause in an older client's validation; anything else is a malformed frame.
_NEWER = frozenset({"extra_forbidden", "union_tag_invalid"})


def decode(data: bytes | str) -> Reply | Event | UnknownFrame:
    """One server frame, ignoring fields and list entries of types this version does not know.

    Raises :class:`~utuvox.protocol.errors.ProtocolError` for a frame that is not a JSON object with a
    ``type``, or that lacks something its type requires.
    """
    try:
        return SERVER_FRAME.validate_json(data)
    except ValidationError as exc:
        if not {err["type"] for err in exc.errors(include_url=False, include_input=False)} & _NEWER:
            return decode_server_frame(data)  # raises the strict decoder's ProtocolError, worded as it is
    except (ValueError, RecursionError, UnicodeDecodeError):
        raise ProtocolError(Code.BAD_JSON, "A frame must be one JSON object.") from None
    obj = json.loads(data)
    kind = obj.get("type") if isinstance(obj, dict) else None
    if not isinstance(kind, str):
        return decode_server_frame(data)
    defs, top = _schema()
    if kind not in top:
        re = obj.get("re")
        return UnknownFrame(kind, re if isinstance(re, int | str) and not isinstance(re, bool) else None, obj)
    try:
        return SERVER_FRAME.validate_python(_prune(obj, {"$ref": top[kind]}, defs))
    except ValidationError:
        return decode_server_frame(data)


@cache
def _schema() -> tuple[dict[str, Any], dict[str, str]]:
    """The JSON Schema definitions of server frames, and the reference of each frame type. Built on
    first use: a client talking to a server of its own version never needs it."""
    schema = SERVER_FRAME.json_schema(ref_template="#/$defs/{model}")
    return schema.get("$defs", {}), schema["discriminator"]["mapping"]


def _resolve(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = defs[schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def _prune(value: Any, schema: dict[str, Any], defs: dict[str, Any]) -> Any:
    """``value`` without the object fields the schema does not allow, and without list entries whose
    ``type`` the schema does not know."""
    schema = _resolve(schema, defs)
    if isinstance(value, dict):
        disc = schema.get("discriminator")
        if disc is not None:
            target = disc["mapping"].get(value.get(disc["propertyName"]))
            return value if target is None else _prune(value, {"$ref": target}, defs)
        props = schema.get("properties")
        if props is not None:
            if schema.get("additionalProperties") is False:
                return {k: _prune(v, props[k], defs) for k, v in value.items() if k in props}
            return {k: _prune(v, props[k], defs) if k in props else v for k, v in value.items()}
        for alternative in schema.get("anyOf", ()):
            alternative = _resolve(alternative, defs)
            if "properties" in alternative or "discriminator" in alternative:
                return _prune(value, alternative, defs)
        return value
    if isinstance(value, list):
        items = schema.get("items")
        if items is None:
            for alternative in schema.get("anyOf", ()):
                alternative = _resolve(alternative, defs)
                if "items" in alternative:
                    items = alternative["items"]
                    break
        if items is None:
            return value
        items = _resolve(items, defs)
        disc = items.get("discriminator")
        if disc is not None:
            known = disc["mapping"]
            value = [v for v in value if not isinstance(v, dict) or v.get(disc["propertyName"]) in known]
        return [_prune(v, items, defs) for v in value]
    return value
