"""One IRC line: ``@tags :source COMMAND params... :trailing``, parsed and formatted.

Lines are at most 512 bytes without their tags, and tags at most 8191 bytes more (IRCv3 message-tags);
the connection enforces the total, the parser what belongs to the format.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_LINE = 512  # bytes, CR LF included, without the tags
MAX_TAGS = 8191  # bytes of the tag section, '@' and the space included
MAX_CLIENT_TAGS = 4094  # bytes of client-only tags a client may send

_ESCAPES = {";": "\\:", " ": "\\s", "\\": "\\\\", "\r": "\\r", "\n": "\\n"}
_UNESCAPES = {":": ";", "s": " ", "\\": "\\", "r": "\r", "n": "\n"}


class LineError(ValueError):
    """A line that is not IRC (no command, a bad tag section...)."""


def escape_tag(value: str) -> str:
    return "".join(_ESCAPES.get(c, c) for c in value)


def unescape_tag(value: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(value):
        c = value[i]
        if c == "\\":
            i += 1
            if i < len(value):
                out.append(_UNESCAPES.get(value[i], value[i]))
        else:
            out.append(c)
        i += 1
    return "".join(out)


@dataclass(slots=True)
class Line:
    command: str
    params: list[str] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    source: str | None = None

    def param(self, index: int, default: str = "") -> str:
        return self.params[index] if index < len(self.params) else default


def parse(text: str) -> Line:
    """Parse a line without its CR LF. The command comes back upper-case."""
    text = text.lstrip(" ")
    tags: dict[str, str] = {}
    if text.startswith("@"):
        raw, _, text = text[1:].partition(" ")
        for item in raw.split(";"):
            if not item:
                continue
            key, _, value = item.partition("=")
            tags[key] = unescape_tag(value)
        text = text.lstrip(" ")
    source = None
    if text.startswith(":"):
        source, _, text = text[1:].partition(" ")
        text = text.lstrip(" ")
    trailing = None
    if " :" in text:
        text, trailing = text.split(" :", 1)
    elif text.startswith(":"):
        text, trailing = "", text[1:]
    params = text.split()
    if not params:
        raise LineError("no command")
    command = params.pop(0).upper()
    if trailing is not None:
        params.append(trailing)
    return Line(command, params, tags, source)


def format_line(command: str, *params: str, source: str | None = None, tags: dict[str, str] | None = None) -> str:
    """One line with its CR LF. The last parameter is made trailing when it must be (empty, a space,
    a leading colon); the others must not contain spaces."""
    parts: list[str] = []
    if tags:
        parts.append("@" + ";".join(k if v is None or v == "" else f"{k}={escape_tag(v)}" for k, v in tags.items()))
    if source:
        parts.append(":" + source)
    parts.append(command)
    if params:
        *middle, last = params
        parts.extend(middle)
        if not last or " " in last or last.startswith(":"):
            last = ":" + last
        parts.append(last)
    return " ".join(parts) + "\r\n"


def clean(text: str) -> str:
    """Text safe inside one IRC line: a CR, LF or NUL would end or break it."""
    if "\r" in text or "\n" in text or "\0" in text:
        return text.replace("\r\n", " ").replace("\r", " ").replace("\n", " ").replace("\0", "")
    return text
