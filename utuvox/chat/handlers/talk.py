"""Messages: to a room (stored, numbered, acknowledged once committed) and to a person."""

from __future__ import annotations

from utuvox.protocol import Code, ProtocolError, Reply, event_lines
from utuvox.protocol import core as p

from ..service import Call


def _check_text(call: Call, text: str) -> None:
    if not text.strip():
        raise ProtocolError(Code.EMPTY, "Message is empty.")
    limit = call.chat.config.max_message_chars
    if len(text) > limit:
        raise ProtocolError(Code.TOO_LONG, f"Message is longer than {limit} characters.")


async def message(call: Call, req: p.Message) -> None:
    chat, session, room = call.chat, call.session, call.room
    assert room is not None  # a member command
    me = chat.identity(session)
    _check_text(call, req.text)
    # Back-pressure first (a pipelining sender may only get so far ahead of the disk), then queue the
    # event with no await in between: the store numbers it inside the commit, in the order queued.
    limit = chat.config.max_unacked
    if session.unacked >= limit:
        await session.settle(below=limit)
    if chat.store.backlogged:
        await chat.store.wait_for_room()
    if room.deleted:  # while this session waited above
        raise ProtocolError(Code.NO_SUCH_ROOM, f"Room '{room.name}' does not exist.")
    # The event goes straight to its JSON line: everything in it is validated already (the request's
    # text and tags, the session's names), and the model is made later only if a reader needs one.
    micros = event_lines.now_micros()
    line = event_lines.message(micros, room.name, me.name, req.text, session.face(), req.action or None,
                               req.notice or None, req.tags)
    chat.write(session, room, line, micros / 1_000_000, req)
    return None


async def private(call: Call, req: p.Msg) -> Reply:
    chat, session = call.chat, call.session
    me = chat.identity(session)
    _check_text(call, req.text)
    targets = chat.sessions_of(req.to)
    remote = chat.elsewhere.sessions_of(req.to.lower())
    if not targets and not remote:
        if await chat.store.get_user(req.to) is None:
            raise ProtocolError(Code.NO_SUCH_USER, f"User '{req.to}' does not exist.")
        raise ProtocolError(Code.USER_OFFLINE, f"User '{req.to}' is not online.")
    to = targets[0].user.name if targets and targets[0].user else (remote[0].user if remote else None) or req.to
    await chat.settle_user(session)
    face = session.face()
    event = p.PrivateMessage(user=me.name, to=to, text=req.text, notice=req.notice or None, tags=req.tags, **face)
    # Stored before it is delivered, for both people: each can page the conversation later. A
    # guest's conversations are not kept (a guest's name is not theirs once they leave).
    if not me.guest and not (targets and targets[0].user and targets[0].user.guest):
        # The recipients' next requests wait for this delivery (Session.take_incoming).
        waiting = chat.sessions_of(to)
        for target in waiting:
            target.incoming_started()
        try:
            seq = await chat.store.add_private(ts=event.ts.timestamp(), sender=me.name, recipient=to,
                                               body=event.model_dump_json(exclude_none=True))
            event = event.model_copy(update={"seq": seq})
            chat.deliver_private(event, session)
        finally:
            for target in waiting:
                target.incoming_done()
    else:
        chat.deliver_private(event, session)
    if remote:
        chat.elsewhere.tell("private_message", event=event.model_dump(mode="json"))
    return p.Ok(re=req.id, seq=event.seq)
