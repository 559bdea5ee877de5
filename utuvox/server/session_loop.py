"""One loop serves every session, whatever the transport: read a frame, decode it with the session's
codec, hand it to the chat layer, queue the answer. A reader task and the outbox's writer task run side
by side; when either ends, the session ends.

One session, one order: a pipelined request (a room message) is answered when its commit is done, while
the loop goes on reading; any other request, and any error, waits until the session's pipelined writes
before it are answered. So the replies and echoes a session's requests cause go out in request order,
a session's reads see its own writes, and a run of messages is still committed as a group.
"""

from __future__ import annotations

import contextlib
import logging

import trio

from utuvox.chat.limits import SessionLimiter
from utuvox.chat.service import Chat
from utuvox.chat.session import Session
from utuvox.protocol import Code, ProtocolError, Reply, Request, json_codec, text_codec
from utuvox.protocol.core import Error, Notice

from .connection import Connection
from .irc.client import IrcClient
from .irc.loop import irc_read_loop
from .irc.outbox import IrcOutbox
from .irc.registry import IrcRegistry
from .keepalive import Watchdog
from .outbox import Codec, Flusher, Outbox

log = logging.getLogger("utuvox.server")

SETTLE_AT_EOF = 5.0  # seconds a session whose peer stopped sending waits for its last commits' answers
DRAIN_AT_EOF = 2.0  # seconds it then has to send them
WELCOME = ("Welcome to UtuVox! /register <username> <password> to sign up, /login <username> <password> "
           "to sign in, /help for all commands.")


async def run_session(chat: Chat, conn: Connection, codec: Codec, *, queue_limit: int, flusher: Flusher,
                      operator: str | None = None, watchdog: Watchdog | None = None,
                      irc: IrcRegistry[IrcClient] | None = None, queue_bytes: int = 8 * 1024 * 1024) -> None:
    outbox = (IrcOutbox if codec == "irc" else Outbox)(conn, codec, queue_limit, flusher, max_bytes=queue_bytes)
    session = Session(peer=outbox, transport=conn.transport, address=conn.address, operator=operator)
    outbox.session = session
    conn.attach(outbox.send_framed)
    chat.connect(session)
    limiter = chat.limits.of(session)
    watch = watchdog.watch(session, outbox, limiter, codec, conn) if watchdog is not None else None
    log.info("connection %d from %s (%s, %s)", session.id, conn.address, conn.transport, codec)
    if codec == "text":
        outbox.send(Notice(text=WELCOME))
    try:
        # The outbox's lifetime scope is how the session ends: finish() gives it a deadline, abort()
        # and the writer, once it has drained a finishing outbox, cancel it.
        with outbox.lifetime:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(outbox.run)
                if isinstance(outbox, IrcOutbox):
                    await irc_read_loop(chat, session, conn, outbox, limiter, irc or IrcRegistry())
                else:
                    await _read_loop(chat, session, conn, codec, outbox, limiter)
                # The reader is done: the peer closed its side, or the session is ending (quit, ban).
                # A peer that only stopped writing (``printf ... | nc``) still gets the answers to what
                # it sent; then the writer flushes what is queued and ends the session.
                if not outbox.closing:
                    with trio.move_on_after(SETTLE_AT_EOF):
                        await session.settle()
                outbox.finish(within=DRAIN_AT_EOF)
                await trio.sleep_forever()
    except Exception:
        # Sessions run in the listeners' handler nursery: a bug met while serving one connection must
        # end that connection, not every other one with it.
        log.exception("connection %d failed", session.id)
        outbox.abort("internal error")
    finally:
        if watchdog is not None:
            watchdog.forget(watch)
        with trio.CancelScope(shield=True):
            await chat.disconnect(session)
            outbox.closed()  # before the close: the descriptor's number may be reused at once
            with trio.move_on_after(1):
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    await conn.aclose()
        reason = outbox.reason or "closed"
        who = session.user.name if session.user else "anonymous"
        log.info("connection %d (%s) ended: %s", session.id, who, reason)


async def _answer(session: Session, outbox: Outbox, reply: Reply, request: Request | None = None) -> None:
    """Queue a reply after the answers to the session's earlier writes (request order)."""
    if session.unacked:
        await session.settle()
    outbox.send(reply, request)


async def _read_loop(chat: Chat, session: Session, conn: Connection, codec: Codec, outbox: Outbox,
                     limiter: SessionLimiter | None) -> None:
    requests = limiter.requests if limiter is not None else None
    while not outbox.closing:
        # Drop the last frame, request and reply before waiting: an idle session would keep them alive
        # (over a kilobyte each, times thousands of idle connections).
        frame = request = reply = None
        try:
            frame = await conn.receive()
        except ProtocolError as exc:
            await _answer(session, outbox, Error(code=exc.code, message=exc.message))
            continue
        if frame is None:
            return
        # Every frame costs a token, garbage included; while credit lasts this is one decrement.
        wait = requests.take() if requests is not None else 0.0
        try:
            if codec == "json":
                request = json_codec.decode_request(frame)
            else:
                line = frame if isinstance(frame, str) else frame.decode("utf-8", errors="replace")
                if not line.strip():
                    continue  # an empty line in text mode is nothing, as at a shell prompt
                request = text_codec.parse_line(line)
        except ProtocolError as exc:
            bad = _refused(chat, session, limiter, wait, exc.re) if wait else exc
            await _answer(session, outbox, Error(re=bad.re, code=bad.code, message=bad.message,
                                                 retry_after=bad.retry_after))
            continue
        if wait:
            refused = _refused(chat, session, limiter, wait, request.id)
            await _answer(session, outbox, Error(re=refused.re, code=refused.code, message=refused.message,
                                                 retry_after=refused.retry_after), request)
            continue
        if not request.pipelined:
            await session.catch_up()
        try:
            reply = await chat.handle(session, request)
        except ProtocolError as exc:
            reply = Error(re=request.id, code=exc.code, message=exc.message, retry_after=exc.retry_after)
        except Exception:
            log.exception("internal error handling %s", request.type)
            reply = Error(re=request.id, code=Code.INTERNAL, message="Internal server error.")
        if reply is not None:
            await _answer(session, outbox, reply, request)


def _refused(chat: Chat, session: Session, limiter: SessionLimiter | None, wait: float,
             re: int | str | None) -> ProtocolError:
    """The ``rate_limited`` answer to a frame over the request rate (it may close the session)."""
    assert limiter is not None
    exc = chat.limits.refuse(session, limiter, chat.clock.now(), wait, "requests")
    exc.re = re
    return exc
