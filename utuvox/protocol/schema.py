"""The one schema: discriminated unions of every frame, assembled from the modules that define them.

``CLIENT_FRAME`` validates what a client sends (requests); ``SERVER_FRAME`` validates what the server
sends (replies and events). ``json_schema()`` is what ``utuvox schema`` prints.
"""

from __future__ import annotations

from functools import reduce
from operator import or_
from typing import Annotated, Any

from pydantic import Field, TypeAdapter

from . import admin, core, files
from .base import Event, Reply, Request

REQUEST_TYPES: list[type[Request]] = [*core.REQUESTS]
REPLY_TYPES: list[type[Reply]] = [*core.REPLIES]
EVENT_TYPES: list[type[Event]] = [*core.EVENTS]

# File sharing (utuvox/protocol/files.py).
REQUEST_TYPES += files.REQUESTS
REPLY_TYPES += files.REPLIES

# Administration (utuvox/protocol/admin.py).
REQUEST_TYPES += admin.REQUESTS
REPLY_TYPES += admin.REPLIES
EVENT_TYPES += admin.EVENTS


def _union(models: list[type[Any]]) -> Any:
    return Annotated[reduce(or_, models), Field(discriminator="type")]


def _type_name(model: type[Any]) -> str:
    return model.model_fields["type"].default


SERVER_TYPES: list[type[Reply] | type[Event]] = [*REPLY_TYPES, *EVENT_TYPES]

ClientFrame = _union(REQUEST_TYPES)
ServerFrame = _union(SERVER_TYPES)

CLIENT_FRAME: TypeAdapter[Request] = TypeAdapter(ClientFrame)
SERVER_FRAME: TypeAdapter[Reply | Event] = TypeAdapter(ServerFrame)

REQUESTS_BY_TYPE: dict[str, type[Request]] = {_type_name(m): m for m in REQUEST_TYPES}
SERVER_BY_TYPE: dict[str, type[Reply] | type[Event]] = {_type_name(m): m for m in SERVER_TYPES}


def json_schema(*, server: bool = False) -> dict[str, Any]:
    """A JSON Schema (2020-12) whose root validates exactly the frames a client may send (``server``: the
    frames the server sends). Printed by ``utuvox schema``; every ``$ref`` points into its ``$defs``."""
    adapter = SERVER_FRAME if server else CLIENT_FRAME
    body = adapter.json_schema(ref_template="#/$defs/{model}")
    for definition in body.get("$defs", {}).values():
        # ``type`` has a default in the models (so they can be built without it), but on the wire a frame
        # without its type is nothing: the schema requires it, as the server does.
        if "const" in definition.get("properties", {}).get("type", {}):
            required = definition.setdefault("required", [])
            if "type" not in required:
                required.insert(0, "type")
    side = "server frames: replies (with 're') and events" if server else "client frames: requests"
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"UtuVox protocol, {'server' if server else 'client'} frames",
        "description": f"One JSON object per frame; these are the {side}. `utuvox schema "
                       f"{'' if server else '--server'}` prints the other side.".replace("  ", " "),
        **body,
    }
