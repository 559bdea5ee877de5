"""IRC targets: which channels name UtuVox rooms."""

from __future__ import annotations

from utuvox.protocol.names import is_valid_name


def room_of(target: str) -> str | None:
    """The room name of ``#name``; None if it is not a channel or not a name UtuVox allows."""
    if not target.startswith("#"):
        return None
    name = target[1:]
    return name if is_valid_name(name) else None
