"""Text mode's decoder: a slash line parses into the same request model a JSON client would send.

The commands and their parameters are the table of :mod:`.text_commands`; what is refused is answered with
a :class:`~.errors.ProtocolError` whose message is one plain sentence with the command's usage.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from . import core
from .base import Request
from .errors import Code, ProtocolError
from .schema import REQUESTS_BY_TYPE
from .text_commands import COMMANDS, TEXT_UNSUPPORTED, Command


def parse_line(line: str) -> Request:
    """Parse one text-mode line. A line without a leading slash is a message to the current room."""
    line = line.strip("\r\n")
    if not line.strip():
        raise ProtocolError(Code.EMPTY, "Empty line. Type /help for the list of commands.")
    if not line.startswith("/"):
        return core.Message(text=line)
    name, _, rest = line[1:].partition(" ")
    command = COMMANDS.get(name.lower())
    if command is None:
        raise ProtocolError(Code.UNKNOWN_COMMAND, unknown_command(name, COMMANDS))
    if command.type in TEXT_UNSUPPORTED:
        raise ProtocolError(Code.NOT_SUPPORTED, TEXT_UNSUPPORTED[command.type])
    fields = _bind(command, rest)
    if command.type == "history" and "limit" not in fields and str(fields.get("room", "")).isdigit():
        fields["limit"] = fields.pop("room")  # "/history 20": the last 20 of the current room
    if name.lower() == "me":
        fields["action"] = True
    type_ = command.type
    if type_ == "history" and str(fields.get("room", "")).startswith("@"):  # /history @bob: a private talk
        type_ = "private_history"
        fields["user"] = fields.pop("room")[1:]
    try:
        return REQUESTS_BY_TYPE[type_].model_validate(fields)
    except ValidationError as exc:
        err = exc.errors(include_url=False, include_input=False)[0]
        raise ProtocolError(Code.BAD_REQUEST, f"{plain_error(err)} Usage: {command.usage}") from None


def unknown_command(name: str, known: Iterable[str]) -> str:
    """``Unknown command: /jion. Did you mean /join?`` (the suggestion only when one is close)."""
    close = difflib.get_close_matches(name.lower(), list(known), n=1, cutoff=0.6)
    hint = f" Did you mean /{close[0]}?" if close else " Type /help for the list."
    return f"Unknown command: /{name[:32]}.{hint}"


def plain_error(err: Mapping[str, Any]) -> str:
    """One sentence for a field pydantic refused, without pydantic's words: ``Limit must be a whole
    number.``, ``Room: names are 1 to 32 characters...``."""
    loc = err.get("loc")
    field = str(loc[-1]).replace("_", " ") if loc else "value"
    kind: str = err.get("type", "")
    ctx: Mapping[str, Any] = err.get("ctx") or {}
    if kind.startswith("int_"):
        what = "must be a whole number"
    elif kind in ("string_too_short", "too_short"):
        what = "is empty" if ctx.get("min_length") == 1 else f"must be at least {ctx.get('min_length')} characters"
    elif kind in ("string_too_long", "too_long"):
        what = f"must be at most {ctx.get('max_length')} characters"
    elif kind in ("greater_than_equal", "greater_than"):
        what = f"must be at least {ctx.get('ge', ctx.get('gt'))}"
    elif kind in ("less_than_equal", "less_than"):
        what = f"must be at most {ctx.get('le', ctx.get('lt'))}"
    elif kind == "value_error":
        what = str(ctx.get("error") or err.get("msg", "")).removeprefix("Value error, ")
        return f"Invalid {field}: {what}."
    elif kind.startswith("bool"):
        what = "must be 0 or 1"
    else:
        what = "is not valid"
    return f"{field.capitalize()} {what}."


def _bind(command: Command, rest: str) -> dict[str, Any]:
    """The fields of ``command`` from the rest of its line, by its parameters' markers."""
    fields: dict[str, Any] = {}
    for param in command.params:
        name = param.rstrip("?*!")
        optional = "?" in param
        if "*" in param:
            value = rest.strip()
            rest = ""
        else:
            value, _, rest = rest.strip().partition(" ")
        if not value:
            if optional:
                continue
            raise ProtocolError(Code.BAD_REQUEST, f"Usage: {command.usage}")
        if param.endswith("!"):
            if value not in ("0", "1", "true", "false", "yes", "no"):
                raise ProtocolError(Code.BAD_REQUEST, f"{name} must be 0 or 1. Usage: {command.usage}")
            fields[name] = value in ("1", "true", "yes")
        else:
            fields[name] = value
    if rest.strip():
        raise ProtocolError(Code.BAD_REQUEST, f"Too many arguments. Usage: {command.usage}")
    return fields
