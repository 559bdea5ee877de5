"""The read side of an IRC session: lines in, checked as IRC servers check them (length, UTF-8, rate),
parsed and handed to the connection's :class:`IrcClient`, one at a time and in order."""

from __future__ import annotations

import logging
from functools import partial

from utuvox.chat.limits import SessionLimiter
from utuvox.chat.service import Chat
from utuvox.chat.session import Session
from utuvox.protocol import ProtocolError
from utuvox.protocol.irc import numerics as n
from utuvox.protocol.irc.lines import MAX_CLIENT_TAGS, MAX_LINE, LineError, parse

from ..connection import Connection
from .client import IrcClient
from .outbox import IrcOutbox
from .registry import IrcRegistry

log = logging.getLogger("utuvox.irc")


async def irc_read_loop(chat: Chat, session: Session, conn: Connection, outbox: IrcOutbox,
                        limiter: SessionLimiter | None, registry: IrcRegistry[IrcClient]) -> None:
    client = IrcClient(chat, session, outbox, registry)
    requests = limiter.requests if limiter is not None else None
    try:
        while not outbox.closing:
            frame = None
            try:
                frame = await conn.receive()
            except ProtocolError:
                client.in_turn(partial(client.num, n.ERR_INPUTTOOLONG, "Input line too long"))
                continue
            if frame is None:
                return
            wait = requests.take() if requests is not None else 0.0
            if wait:
                assert limiter is not None
                exc = chat.limits.refuse(session, limiter, chat.clock.now(), wait, "requests")
                client.in_turn(partial(client.fail, "*", "RATE_LIMITED", exc.message))
                continue
            data = (frame if isinstance(frame, bytes) else frame.encode()).rstrip(b"\r")
            if not data.strip():
                continue
            if not _fits(client, data):
                continue
            try:
                text = data.decode()
            except UnicodeDecodeError:
                # UTF8ONLY: a line that is not UTF-8 is refused, and the connection goes on.
                client.in_turn(partial(client.fail, "*", "INVALID_UTF8", "Message rejected: it is not UTF-8"))
                continue
            try:
                line = parse(text)
            except LineError:
                continue
            pipelined = _pipelined(line.command, line.params[0] if line.params else "")
            if not pipelined:
                await session.catch_up()
            try:
                await client.handle(line, pipelined=pipelined)
            except Exception:
                log.exception("internal error handling IRC %s", line.command)
                client.send("NOTICE", client.me, f"{line.command}: internal server error")
    finally:
        registry.remove(client)


def _fits(client: IrcClient, data: bytes) -> bool:
    """512 bytes for the line without its tags (CR LF included), 8191 for the tags."""
    body = data
    if data[:1] == b"@":
        tags, _, body = data.partition(b" ")
        if len(tags) + 1 > MAX_CLIENT_TAGS + 2:  # '@' and the space included
            client.in_turn(partial(client.num, n.ERR_INPUTTOOLONG, "Input line was too long"))
            return False
    if len(body) + 2 > MAX_LINE:
        client.in_turn(partial(client.num, n.ERR_INPUTTOOLONG, "Input line was too long"))
        return False
    return True


def _pipelined(command: str, targets: str) -> bool:
    """Messages to rooms are committed as a group, as JSON ``message`` requests are; any other line but a
    PING waits for them (a PING is answered after the messages sent before it are stored: cmd_ping)."""
    if command == "PRIVMSG" or command == "NOTICE":
        if "," not in targets:
            return targets[:1] == "#"
        return all(t[:1] == "#" for t in targets.split(","))
    return command == "PING"  # it waits for what came before it itself, without holding up the lines behind it
