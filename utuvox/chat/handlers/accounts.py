"""Accounts: register, log in, change one's password."""

from __future__ import annotations

import logging

from utuvox.protocol import Code, ProtocolError, Reply
from utuvox.protocol import core as p
from utuvox.store import Conflict

from ..service import Call

log = logging.getLogger("utuvox.chat")


def _not_twice(call: Call) -> None:
    user = call.session.user
    if user is not None:
        raise ProtocolError(Code.ALREADY_LOGGED_IN, f"You are already logged in as {user.name}.")


async def register(call: Call, req: p.Register) -> Reply:
    chat, session = call.chat, call.session
    _not_twice(call)
    is_admin = False
    if req.admin_key is not None:
        if not chat.admin_key.matches(req.admin_key):
            chat.login_failed(session, None)  # a guessed admin key is a guessed password
            raise ProtocolError(Code.FORBIDDEN, "Invalid admin key.")
        is_admin = True
    if await chat.store.get_user(req.username) is not None or chat.guest_holds(req.username):
        raise ProtocolError(Code.NAME_TAKEN, f"Username '{req.username}' is already taken.")
    hashed = await chat.passwords.hash(req.password, who=session.address)
    if is_admin and not chat.admin_key.matches(req.admin_key or ""):  # changed while hashing
        raise ProtocolError(Code.FORBIDDEN, "Invalid admin key.")
    try:
        user = await chat.store.create_user(req.username, hashed, is_admin=is_admin, is_bot=req.bot)
    except Conflict:
        raise ProtocolError(Code.NAME_TAKEN, f"Username '{req.username}' is already taken.") from None
    # An admin may have banned or changed the new account already.
    current = await chat.settled_account(user.name)
    if current is None or current.banned or current.password_hash != hashed:
        raise ProtocolError(Code.AUTH_FAILED, "The account was changed while it was being created; log in.")
    user = current
    chat.sign_in(session, user)
    log.info("registered %s (admin=%s, bot=%s) from %s", user.name, is_admin, req.bot, session.address)
    if is_admin:
        await chat.store.add_admin_log(actor=user.name, via=session.transport, action="register_admin",
                                       target=user.name, outcome="ok", detail=None)
    return p.LoggedIn(re=req.id, user=user.name, is_admin=user.is_admin, is_bot=user.is_bot, registered=True)


async def login(call: Call, req: p.Login) -> Reply:
    chat, session = call.chat, call.session
    _not_twice(call)
    user = await chat.store.get_user(req.username)
    ok = await chat.passwords.verify(user.password_hash if user else None, req.password, who=session.address)
    if not ok or user is None:
        log.info("failed login for %r from %s", req.username, session.address)
        chat.login_failed(session, req.username)
        raise ProtocolError(Code.AUTH_FAILED, "Invalid username or password.")
    verified = user.password_hash
    if chat.passwords.needs_rehash(verified):
        verified = await chat.passwords.hash(req.password, who=session.address)
        async with chat.changing_account(user.name):
            await chat.store.update_user(user.name, password_hash=verified)
    # The hash took a while: decide on the account as it is now (a ban, a demotion or a new password
    # made meanwhile applies), and sign in before the next await.
    current = await chat.settled_account(user.name)
    if current is None or current.password_hash != verified:
        log.info("login for %s from %s refused: the password changed meanwhile", user.name, session.address)
        raise ProtocolError(Code.AUTH_FAILED, "Invalid username or password.")
    user = current
    chat.login_succeeded(session, user.name)
    if user.banned:
        log.info("banned user %s refused from %s", user.name, session.address)
        reason = f": {user.ban_reason}" if user.ban_reason else "."
        raise ProtocolError(Code.BANNED, f"You are banned from this server{reason}")
    chat.sign_in(session, user)
    log.info("login %s from %s (%s)", user.name, session.address, session.transport)
    return p.LoggedIn(re=req.id, user=user.name, is_admin=user.is_admin, is_bot=user.is_bot)


async def change_password(call: Call, req: p.ChangePassword) -> Reply:
    chat, session = call.chat, call.session
    me = chat.identity(session)
    user = await chat.store.get_user(me.name)
    if user is None or not await chat.passwords.verify(user.password_hash, req.old_password, who=session.address):
        chat.login_failed(session, me.name)
        raise ProtocolError(Code.AUTH_FAILED, "The old password is wrong.")
    hashed = await chat.passwords.hash(req.new_password, who=session.address)
    async with chat.changing_account(me.name):
        await chat.store.update_user(me.name, password_hash=hashed)
        # Whoever else is signed in with the old password is signed out, as careful web apps do.
        ended = chat.end_sessions(me.name, "Your password was changed; log in again.", "password_changed",
                                  besides=session)
    log.info("password changed for %s (%d other session(s) ended)", me.name, ended)
    return p.Ok(re=req.id)
