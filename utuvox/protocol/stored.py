"""Stored events and the schema version of their bodies.

History rows keep the JSON an event had on the wire when it was written, with the version of that
JSON. Reading one back goes through :func:`upgrade`, which takes an old body step by step to today's
form, so a renamed or reshaped field never makes old history unreadable. Version 1 is the form every
event has had so far; when the form changes, bump :data:`CURRENT_VERSION` and add the step from the
previous version to :data:`STEPS`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from .core import PrivateMessage
from .schema import SERVER_FRAME

CURRENT_VERSION = 1

Step = Callable[[dict[str, Any]], dict[str, Any]]

# STEPS[n] takes a body of version n to version n + 1.
STEPS: dict[int, Step] = {}


class UnknownVersion(ValueError):
    """A stored body is of a version this UtuVox cannot read (written by a newer one)."""


def upgrade(version: int, data: dict[str, Any], *, steps: Mapping[int, Step] | None = None,
            to: int | None = None) -> dict[str, Any]:
    """``data``, a body of ``version``, in the form of version ``to`` (by default today's, through
    :data:`STEPS`)."""
    steps = STEPS if steps is None else steps
    to = CURRENT_VERSION if to is None else to
    if version > to or version < 1:
        raise UnknownVersion(f"a stored event of version {version} cannot be read by this UtuVox "
                             f"(which knows versions 1 to {to})")
    for current in range(version, to):
        step = steps.get(current)
        if step is None:
            raise UnknownVersion(f"no upgrade from stored version {current} to {current + 1}")
        data = step(data)
    return data


def load_event(version: int, body: str | bytes) -> Any:
    """The event a stored room body of ``version`` holds, as today's model."""
    if version == CURRENT_VERSION:
        return SERVER_FRAME.validate_json(body)  # the usual case, without a detour through a dict
    return SERVER_FRAME.validate_python(upgrade(version, json.loads(body)))


def load_private(version: int, body: str) -> PrivateMessage:
    """The private message a stored body of ``version`` holds, as today's model."""
    if version == CURRENT_VERSION:
        return PrivateMessage.model_validate_json(body)
    return PrivateMessage.model_validate(upgrade(version, json.loads(body)))
