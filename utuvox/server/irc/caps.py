"""The IRCv3 capabilities offered, and what each changes in how events are rendered."""

from __future__ import annotations

from utuvox.protocol.irc import render

# name -> value advertised with CAP LS 302 (None: no value)
CAPS: dict[str, str | None] = {
    "account-notify": None,
    "account-tag": None,
    "away-notify": None,
    "batch": None,
    "cap-notify": None,
    "draft/account-registration": "before-connect",
    "draft/chathistory": None,
    "draft/event-playback": None,
    "echo-message": None,
    "extended-join": None,
    "labeled-response": None,
    "message-tags": None,
    "multi-prefix": None,
    "sasl": "PLAIN",
    "server-time": None,
    "userhost-in-names": None,
}

FLAG_OF: dict[str, int] = {
    "server-time": render.SERVER_TIME,
    "message-tags": render.MESSAGE_TAGS,
    "account-tag": render.ACCOUNT_TAG,
    "extended-join": render.EXTENDED_JOIN,
}


def cap_ls_lines(v302: bool, *, before_connect: bool = True, width: int = 400) -> list[list[str]]:
    """The parameters of the CAP LS reply lines after ``CAP <nick> LS``; with 302, long lists are split
    over lines marked ``*``."""
    values = dict(CAPS)
    if not before_connect:
        values["draft/account-registration"] = None
    items = [f"{k}={v}" if v302 and v else k for k, v in values.items()]
    lines: list[list[str]] = []
    current = ""
    for item in items:
        if current and len(current) + len(item) + 1 > width:
            lines.append(["*", current])
            current = item
        else:
            current = f"{current} {item}".strip()
    lines.append([current])
    if not v302 and len(lines) > 1:
        return [[" ".join(line[-1] for line in lines)]]
    return lines
