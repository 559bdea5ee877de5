"""Text mode: slash lines parse into the same request models as JSON; replies and events render as
``[YYYY-MM-DD HH:MM:SS] ...`` lines worded like the original UtuVox.

This is a codec only, the one a text session uses in both directions: :func:`parse_line` decodes a line
(:mod:`.text_parse`, over the command table of :mod:`.text_commands`) and :func:`render` encodes a reply
or an event (:mod:`.text_render`). Nothing here knows about sessions; what the renderer needs to know of
the session (the request a reply answers, the current room) is passed in.
"""

from __future__ import annotations

from .safe_text import clean
from .text_commands import COMMANDS, TEXT_UNSUPPORTED, Command, add_command
from .text_parse import parse_line, plain_error, unknown_command
from .text_render import Line, event_line, ok_line, render, render_lines, reply_lines, stamp
from .units import byte_size as size
from .units import duration

__all__ = [
    "COMMANDS", "TEXT_UNSUPPORTED", "Command", "Line", "add_command", "clean", "duration", "event_line", "ok_line",
    "parse_line", "plain_error", "render", "render_lines", "reply_lines", "size", "stamp", "unknown_command",
]  # fmt: skip
