"""The chat domain: accounts, rooms, membership, messages, history. Rules, not sockets.

A session hands :meth:`Chat.handle` a validated request; the answer is a reply (or ``None`` when the
reply is sent later, as for a message, which is acknowledged only once committed). Events go out
through the bus. Handlers for other capabilities (files, administration) register themselves in
:attr:`Chat.handlers` from their own modules.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any

import trio

from utuvox.protocol import Code, ProtocolError, Reply, Request, json_codec, utc_now
from utuvox.protocol import core as p
from utuvox.protocol.schema import SERVER_FRAME
from utuvox.protocol.text_codec import COMMANDS
from utuvox.store import Conflict, RoomRecord, Store, StoredEvent, StoreError, UserRecord

from .admin_key import AdminKey
from .bus import Bus
from .clock import Clock
from .config import ChatConfig
from .delivery import InOrder
from .elsewhere import Elsewhere, SingleNode
from .limits import Limits, address_key
from .listing import SortedKeys
from .passwords import Passwords
from .rejoin import Rejoins
from .rooms import Room
from .session import Identity, Peer, Session, let_others_in
from .wire import Wire

log = logging.getLogger("utuvox.chat")

Handler = Callable[[Session, Any], Awaitable[Reply | None]]


class Chat:
    def __init__(self, store: Store, bus: Bus, config: ChatConfig, admin_key: AdminKey,
                 clock: Clock | None = None) -> None:
        self.store = store
        self.bus = bus
        self.config = config
        self.admin_key = admin_key
        self.clock = clock = clock or Clock()  # every timeout and rate of the rules reads this one
        self.passwords = Passwords(config)
        self.limits = Limits(config.limits, clock)
        self.rooms: dict[str, Room] = {}
        self.room_keys = SortedKeys()  # the keys of ``rooms``, for listings a page at a time
        self.rooms_created: dict[str, int] = {}  # by user key: rooms they created that still exist
        self.sessions: dict[int, Session] = {}
        self.by_user: dict[str, dict[Session, None]] = {}
        self.online_keys = SortedKeys()  # the keys of ``by_user``
        # Accounts being changed (ban, password, admin status...), and a count of finished changes: a
        # login decides rights on the account as it is once no change is under way (settled_account).
        self._changing: dict[str, int] = {}
        self._generations: dict[str, int] = {}
        self._settled = trio.lowlevel.ParkingLot()
        self.started_at = clock.wall()
        self.messages_sent = 0
        # Set when the server shuts down: new requests are refused while the last ones are acknowledged, and
        # the sessions it closes are not people leaving (see rejoin.py).
        self.stopping = False
        self.rejoins = Rejoins(config.rejoin_grace, clock)
        # Other nodes of a cluster (none by default), and in-order delivery of what any node commits.
        self.elsewhere: Elsewhere = SingleNode()
        self._held: dict[Session, dict[int, Callable[[], None]]] = {}  # answers waiting for earlier ones
        self.delivery = InOrder(store, self.publish, self._followed)
        self.handlers: dict[str, Handler] = {
            "register": self._register,
            "login": self._login,
            "changepassword": self._change_password,
            "create": self._create,
            "join": self._join,
            "leave": self._leave,
            "message": self._message,
            "msg": self._msg,
            "history": self._history,
            "private_history": self._private_history,
            "topic": self._topic,
            "list_all_users": self._list_all_users,
            "list_users_in_room": self._list_users_in_room,
            "list_all_rooms": self._list_all_rooms,
            "whoami": self._whoami,
            "whereami": self._whereami,
            "help": self._help,
            "ping": self._ping,
            "quit": self._quit,
        }
        # Called with (session) when a session ends, by capabilities that hold per-session state.
        self.on_disconnect: list[Callable[[Session], Awaitable[None]]] = []
        # Called with (room) after a room is deleted, by capabilities that keep things per room (files).
        self.on_room_deleted: list[Callable[[Room], Awaitable[None]]] = []

    async def start(self) -> None:
        """Load the rooms and how far their events go: two queries, however many rooms there are."""
        last = await self.store.room_seqs()
        for record in await self.store.list_rooms():
            await self.adopt_room(record, last.get(record.id, 0))
        self.rejoins.started(self.rooms.values())

    async def close_rejoins(self) -> None:
        """Once the rejoin grace is over, store the leave of whoever was in a room at the last stop and has
        not come back (the server runs this in the background)."""
        await self.rejoins.wait_closed()
        await self.ensure_loaded_all()
        for room in list(self.rooms.values()):
            for name in self.rejoins.absentees(room):
                if room.deleted or self.user_in_room(room, name):
                    continue
                try:
                    await self.record_and_wait(room, lambda seq, room=room, name=name: p.LeaveEvent(
                        room=room.name, seq=seq, user=name))
                except StoreError as exc:
                    log.error("could not record %s leaving %s: %s", name, room.name, exc)
        self.rejoins.forget()

    async def ensure_loaded_all(self) -> None:
        for room in list(self.rooms.values()):
            await self.ensure_loaded(room)

    async def adopt_room(self, record: RoomRecord, last: int | None = None) -> Room:
        """The live state of a stored room, made on first sight (at start, or created by another node)."""
        if last is None:
            last = await self.store.last_seq(record.id)
        room = self.rooms.get(record.name.lower())
        if room is None or room.id != record.id:
            room = Room(record.id, record.name, last, self.config.recent_cache,
                        created_by=record.created_by.lower() if record.created_by else None)
            self.add_room(room)
        room.topic, room.topic_by, room.topic_ts = record.topic, record.topic_by, record.topic_ts
        return room

    async def find_room(self, name: str) -> Room:
        """The named room; one another node created may not have been heard of yet: ask the store."""
        room = self.rooms.get(name.lower())
        if room is None and not isinstance(self.elsewhere, SingleNode):
            record = await self.store.get_room(name)
            if record is not None:
                room = await self.adopt_room(record)
        return room if room is not None else self.room(name)  # (which says it does not exist)

    def add_room(self, room: Room) -> None:
        old = self.rooms.get(room.key)
        if old is not None:
            self.drop_room(old)
        self.rooms[room.key] = room
        self.room_keys.add(room.key)
        if room.created_by is not None:
            self.rooms_created[room.created_by] = self.rooms_created.get(room.created_by, 0) + 1

    def drop_room(self, room: Room) -> None:
        """Forget a deleted room (a later room of the same name is another room)."""
        if self.rooms.get(room.key) is not room:
            return
        del self.rooms[room.key]
        self.room_keys.discard(room.key)
        if room.created_by is not None:
            left = self.rooms_created.get(room.created_by, 0) - 1
            if left > 0:
                self.rooms_created[room.created_by] = left
            else:
                self.rooms_created.pop(room.created_by, None)

    # --- sessions -------------------------------------------------------------------------------

    def connect(self, session: Session) -> None:
        self.sessions[session.id] = session
        self.limits.open(session)

    async def disconnect(self, session: Session) -> None:
        """The connection is gone: leave its rooms (telling the others) and forget it."""
        self.sessions.pop(session.id, None)
        self.limits.close(session)
        for hook in self.on_disconnect:
            await hook(session)
        for room_name in list(session.rooms):
            room = self.rooms.get(room_name.lower())
            if room is not None:
                await self._part(session, room, session.quit_reason or "Connection closed", quit=True,
                                 record=not self.stopping)
        session.rooms.clear()
        self._forget_user(session)
        self.elsewhere.gone(session)

    def _forget_user(self, session: Session) -> None:
        if session.user is None:
            return
        sessions = self.by_user.get(session.user.key)
        if sessions is not None:
            sessions.pop(session, None)
            if not sessions:
                del self.by_user[session.user.key]
                self.online_keys.discard(session.user.key)

    def _sign_in(self, session: Session, identity: Identity) -> None:
        session.user = identity
        self.by_user.setdefault(identity.key, {})[session] = None
        self.online_keys.add(identity.key)
        self.limits.signed_in(session, identity)
        self.elsewhere.changed(session)

    def sign_in_guest(self, session: Session, nick: str) -> None:
        """An IRC connection that gave only a nick: it acts under that name, marked as a guest. A guest
        changing nick is signed in again under the new one."""
        if session.user is not None:
            self._forget_user(session)
        self._sign_in(session, Identity(nick, False, False, guest=True))

    def sign_out_guest(self, session: Session) -> None:
        """A guest about to log in or register: it no longer holds its nick as a name."""
        if session.user is not None and session.user.guest:
            self._forget_user(session)
            session.user = None

    def guest_holds(self, name: str) -> bool:
        return any(s.user is not None and s.user.guest for s in self.by_user.get(name.lower(), ()))

    # --- accounts changing while they are used --------------------------------------------------

    @contextlib.asynccontextmanager
    async def changing_account(self, name: str) -> AsyncIterator[None]:
        """Around a change of an account's rights or password and its effect on live sessions (write,
        then update or close them): logins of the account wait for it to end, so none can sign in with
        what the account was before."""
        key = name.lower()
        self._changing[key] = self._changing.get(key, 0) + 1
        try:
            yield
        finally:
            left = self._changing[key] - 1
            if left:
                self._changing[key] = left
            else:
                del self._changing[key]
            self._generations[key] = self._generations.get(key, 0) + 1
            self._settled.unpark_all()

    async def settled_account(self, name: str) -> UserRecord | None:
        """The account as stored, read when no change to it was under way from before the read to after
        it. The caller acts on it before its next ``await``."""
        key = name.lower()
        while True:
            while key in self._changing:
                await self._settled.park()
            generation = self._generations.get(key, 0)
            user = await self.store.get_user(name)
            if key not in self._changing and self._generations.get(key, 0) == generation:
                return user

    def end_sessions(self, username: str, reason: str, code: str, *, besides: Session | None = None) -> int:
        """Close every session of a user (but ``besides``) with a goodbye; how many."""
        victims = [s for s in self.sessions_of(username) if s is not besides]
        for victim in victims:
            victim.peer.close(reason, code)
        return len(victims)

    def sessions_of(self, username: str) -> list[Session]:
        return list(self.by_user.get(username.lower(), ()))

    async def settle_user(self, session: Session) -> None:
        """Wait until the messages the session's user has sent so far, from any of its sessions, are
        committed and delivered: what that user says next then reaches every receiver after them.
        (The session's own earlier writes are settled already: the session loop sees to that.)"""
        if session.user is None:
            return
        marks = [(other, other.writes_started) for other in self.sessions_of(session.user.name)
                 if other.unacked]
        for other, upto in marks:
            await other.settle(upto)

    # --- dispatch -------------------------------------------------------------------------------

    async def handle(self, session: Session, request: Request) -> Reply | None:
        handler = self.handlers.get(request.type)
        if handler is None:
            raise ProtocolError(Code.UNKNOWN_TYPE, f"Unknown type: {request.type}.")
        if self.stopping:
            raise ProtocolError(Code.SHUTTING_DOWN, "The server is shutting down; nothing more is taken.")
        if type(request).admin_only and not session.is_operator:
            raise ProtocolError(Code.FORBIDDEN, "Permission denied: that command is for admins only.")
        if not type(request).anonymous and session.user is None and session.transport != "admin":
            raise ProtocolError(Code.NOT_LOGGED_IN, "You must log in first: /login <username> <password>.")
        try:
            return await handler(session, request)
        except StoreError as exc:
            log.error("storage error on %s: %s", request.type, exc)
            raise ProtocolError(Code.STORAGE, "The server could not store that; nothing was changed.") from None

    # --- helpers --------------------------------------------------------------------------------

    @staticmethod
    def identity(session: Session) -> Identity:
        if session.user is None:
            raise ProtocolError(Code.NOT_LOGGED_IN, "You must log in first: /login <username> <password>.")
        return session.user

    def room(self, name: str) -> Room:
        room = self.rooms.get(name.lower())
        if room is None:
            raise ProtocolError(Code.NO_SUCH_ROOM, f"Room '{name}' does not exist. Create it with /create {name}.")
        return room

    def my_room(self, session: Session, name: str | None) -> Room:
        """The named room, or the current one; the session must be in it."""
        name = name or session.current_room
        if name is None:
            raise ProtocolError(Code.NOT_IN_ROOM, "You are not in any room. Join one with /join <room>.")
        room = self.room(name)
        if room.name not in session.rooms:
            raise ProtocolError(Code.NOT_IN_ROOM, f"You are not in room '{room.name}'.")
        return room

    def user_in_room(self, room: Room, username: str, *, besides: Session | None = None) -> bool:
        """Whether the user has a session in the room, on this node or another."""
        key = username.lower()
        return any(s.user is not None and s.user.key == key and s is not besides
                   for s in self.bus.members(room.key)) or self.elsewhere.in_room(room.key, key)

    def _followed(self, room: Room) -> bool:
        """Whether a session here gets the room's events (a member, or an operator tailing)."""
        return any(True for _ in self.bus.members(room.key)) or bool(getattr(self.bus, "taps", None))

    def publish(self, room: Room, wire: Wire) -> None:
        room.remember(wire.event)  # type: ignore[arg-type]
        self.bus.publish(room.key, wire)

    def record(self, room: Room, event: p.MessageEvent | p.JoinEvent | p.LeaveEvent | p.FileEvent,
               on_done: Callable[[int, BaseException | None], None] | None = None,
               origin: Session | None = None) -> None:
        """Queue a room event (made with ``seq=0``) for commit. The store numbers it; once durable it is
        remembered and published in seq order, then ``on_done(seq, None)`` runs (or ``on_done(0, error)``
        and nothing is published). ``origin`` is the session whose request made it."""
        line = json_codec.encode(event)
        kind, user = event.type, event.user

        def committed(seq: int, error: BaseException | None) -> None:
            if error is not None or room.deleted:
                if on_done is not None:
                    on_done(seq, error)
                return
            wire = Wire.encoded(event.model_copy(update={"seq": seq}),
                                line.replace(b',"seq":0,', b',"seq":%d,' % seq, 1), origin)
            self.delivery.committed(room, seq, wire, on_done or _nothing)

        self.store.submit_event(StoredEvent(room.id, 0, event.ts.timestamp(), kind, user, line[:-1].decode()),
                                committed)

    async def record_and_wait(self, room: Room, make: Callable[[int], Any], origin: Session | None = None) -> None:
        """Commit a room event built by ``make(0)`` and wait until it is durable and published."""
        await self.store.wait_for_room()
        done = trio.Event()
        failure: list[BaseException] = []

        def on_done(_seq: int, error: BaseException | None) -> None:
            if error is not None:
                failure.append(error)
            done.set()

        self.record(room, make(0), on_done, origin)
        await done.wait()
        if failure:
            raise StoreError(str(failure[0]))

    async def ensure_loaded(self, room: Room) -> None:
        if room.loaded:
            return
        async with room.load_lock:
            if room.loaded:
                return
            stored = await self.store.history(room.id, before=None, limit=self.config.recent_cache)
            # Events committed but not yet delivered here are left out: they come through delivery, in
            # order, and a member must not get them twice.
            room.merge_loaded([self.parse_event(s) for s in stored if s.seq <= room.delivered])

    @staticmethod
    def parse_event(stored: StoredEvent) -> Any:
        return SERVER_FRAME.validate_json(stored.body)

    def unique_users(self, room: Room) -> list[p.UserInfo]:
        """The room's users, each once however many sessions (on however many nodes) they have in it."""
        seen: dict[str, p.UserInfo] = {}
        for s in self.bus.members(room.key):
            if s.user is not None and s.user.key not in seen:
                seen[s.user.key] = p.UserInfo(name=s.user.name, is_admin=s.user.is_admin, is_bot=s.user.is_bot)
        for r in self.elsewhere.room_members(room.key):
            if r.user is not None and r.user.lower() not in seen:
                seen[r.user.lower()] = p.UserInfo(name=r.user, is_admin=r.is_admin, is_bot=r.is_bot)
        return sorted(seen.values(), key=lambda u: u.name.lower())

    # --- accounts -------------------------------------------------------------------------------

    def _login_failed(self, session: Session, account: str | None) -> None:
        """A wrong password (or admin key): delays grow on every node, not just this one."""
        self.limits.login_failed(session, account)
        if session.transport != "admin":
            self.elsewhere.tell("login_failed", account=account.lower() if account else None,
                                address=address_key(session.address))

    def _login_succeeded(self, session: Session, account: str) -> None:
        self.limits.login_succeeded(session, account)
        if session.transport != "admin":
            self.elsewhere.tell("login_succeeded", account=account.lower(), address=address_key(session.address))

    async def _register(self, session: Session, req: p.Register) -> Reply:
        if session.user is not None:
            raise ProtocolError(Code.ALREADY_LOGGED_IN, f"You are already logged in as {session.user.name}.")
        self.limits.check_login(session, None)
        is_admin = False
        if req.admin_key is not None:
            if not self.admin_key.matches(req.admin_key):
                self._login_failed(session, None)  # a guessed admin key is a guessed password
                raise ProtocolError(Code.FORBIDDEN, "Invalid admin key.")
            is_admin = True
        if await self.store.get_user(req.username) is not None or self.guest_holds(req.username):
            raise ProtocolError(Code.NAME_TAKEN, f"Username '{req.username}' is already taken.")
        hashed = await self.passwords.hash(req.password, who=session.address)
        if is_admin and not self.admin_key.matches(req.admin_key or ""):  # changed while hashing
            raise ProtocolError(Code.FORBIDDEN, "Invalid admin key.")
        try:
            user = await self.store.create_user(req.username, hashed, is_admin=is_admin, is_bot=req.bot)
        except Conflict:
            raise ProtocolError(Code.NAME_TAKEN, f"Username '{req.username}' is already taken.") from None
        # An admin may have banned or changed the new account already.
        current = await self.settled_account(user.name)
        if current is None or current.banned or current.password_hash != hashed:
            raise ProtocolError(Code.AUTH_FAILED, "The account was changed while it was being created; log in.")
        user = current
        self._sign_in(session, Identity(user.name, user.is_admin, user.is_bot))
        log.info("registered %s (admin=%s, bot=%s) from %s", user.name, is_admin, req.bot, session.address)
        if is_admin:
            await self.store.add_admin_log(actor=user.name, via=session.transport, action="register_admin",
                                           target=user.name, outcome="ok", detail=None)
        return p.LoggedIn(re=req.id, user=user.name, is_admin=user.is_admin, is_bot=user.is_bot, registered=True)

    async def _login(self, session: Session, req: p.Login) -> Reply:
        if session.user is not None:
            raise ProtocolError(Code.ALREADY_LOGGED_IN, f"You are already logged in as {session.user.name}.")
        self.limits.check_login(session, req.username)
        user = await self.store.get_user(req.username)
        ok = await self.passwords.verify(user.password_hash if user else None, req.password, who=session.address)
        if not ok or user is None:
            log.info("failed login for %r from %s", req.username, session.address)
            self._login_failed(session, req.username)
            raise ProtocolError(Code.AUTH_FAILED, "Invalid username or password.")
        verified = user.password_hash
        if self.passwords.needs_rehash(verified):
            verified = await self.passwords.hash(req.password, who=session.address)
            async with self.changing_account(user.name):
                await self.store.update_user(user.name, password_hash=verified)
        # The hash took a while: decide on the account as it is now (a ban, a demotion or a new password
        # made meanwhile applies), and sign in before the next await.
        current = await self.settled_account(user.name)
        if current is None or current.password_hash != verified:
            log.info("login for %s from %s refused: the password changed meanwhile", user.name, session.address)
            raise ProtocolError(Code.AUTH_FAILED, "Invalid username or password.")
        user = current
        self._login_succeeded(session, user.name)
        if user.banned:
            log.info("banned user %s refused from %s", user.name, session.address)
            reason = f": {user.ban_reason}" if user.ban_reason else "."
            raise ProtocolError(Code.BANNED, f"You are banned from this server{reason}")
        self.limits.check_sessions(len(self.by_user.get(user.name.lower(), ()))
                                   + len(self.elsewhere.sessions_of(user.name.lower())))
        self._sign_in(session, Identity(user.name, user.is_admin, user.is_bot))
        log.info("login %s from %s (%s)", user.name, session.address, session.transport)
        return p.LoggedIn(re=req.id, user=user.name, is_admin=user.is_admin, is_bot=user.is_bot)

    async def _change_password(self, session: Session, req: p.ChangePassword) -> Reply:
        me = self.identity(session)
        self.limits.check_login(session, me.name)
        user = await self.store.get_user(me.name)
        if user is None or not await self.passwords.verify(user.password_hash, req.old_password, who=session.address):
            self._login_failed(session, me.name)
            raise ProtocolError(Code.AUTH_FAILED, "The old password is wrong.")
        hashed = await self.passwords.hash(req.new_password, who=session.address)
        async with self.changing_account(me.name):
            await self.store.update_user(me.name, password_hash=hashed)
            # Whoever else is signed in with the old password is signed out, as careful web apps do.
            ended = self.end_sessions(me.name, "Your password was changed; log in again.", "password_changed",
                                      besides=session)
        log.info("password changed for %s (%d other session(s) ended)", me.name, ended)
        return p.Ok(re=req.id)

    # --- rooms ----------------------------------------------------------------------------------

    async def _create(self, session: Session, req: p.Create) -> Reply:
        me = self.identity(session)
        if req.room.lower() in self.rooms:
            raise ProtocolError(Code.ROOM_EXISTS, f"Room '{req.room}' already exists.")
        self._check_join(session, None)
        self.limits.check_create(session, self.rooms_created.get(me.key, 0))
        try:
            record = await self.store.create_room(req.room, me.name)
        except Conflict:
            raise ProtocolError(Code.ROOM_EXISTS, f"Room '{req.room}' already exists.") from None
        room = Room(record.id, record.name, 0, self.config.recent_cache, created_by=me.key)
        room.loaded = True
        self.add_room(room)
        self.elsewhere.tell("room_created", id=room.id, name=room.name)
        log.info("room %s created by %s", room.name, me.name)
        joined = await self._enter(session, room, req)
        return joined.model_copy(update={"created": True})

    async def _join(self, session: Session, req: p.Join) -> Reply:
        room = await self.find_room(req.room)
        if room.name not in session.rooms:
            self._check_join(session, room)
        return await self._enter(session, room, req)

    def _check_join(self, session: Session, room: Room | None) -> None:
        """Rates and caps before a session enters a room it is not in (``room=None``: a new one)."""
        me = self.identity(session)
        joined = {r for s in self.by_user.get(me.key, ()) for r in s.rooms}
        members = sum(1 for _ in self.bus.members(room.key)) if room is not None else 0
        self.limits.check_join(session, joined, members)

    async def _enter(self, session: Session, room: Room, req: Request) -> p.Joined:
        me = self.identity(session)
        if room.name in session.rooms:
            session.rooms.remove(room.name)
            session.rooms.append(room.name)  # already in: it becomes the current room
        else:
            await self.ensure_loaded(room)
            if not self.user_in_room(room, me.name) and not self.rejoins.is_resume(room, me.key):
                face = session.face()
                await self.record_and_wait(
                    room, lambda seq: p.JoinEvent(room=room.name, seq=seq, user=me.name, **face), session)
                # With nobody here in the room, other nodes' events may have been skipped meanwhile.
                await self.ensure_loaded(room)
            if room.deleted:
                raise ProtocolError(Code.NO_SUCH_ROOM, f"Room '{room.name}' does not exist.")
            # From the snapshot to the subscription there is no await: nothing can fall between them.
            self.bus.subscribe(room.key, session)
            session.rooms.append(room.name)
            self.elsewhere.changed(session)
        recent = list(room.recent)[-self.config.join_history:]
        return p.Joined(re=req.id, room=room.name, history=recent, last_seq=room.delivered, **self._topic_of(room))

    async def _part(self, session: Session, room: Room, reason: str | None = None, *, quit: bool = False,
                    record: bool = True) -> None:
        self.bus.unsubscribe(room.key, session)
        if room.name in session.rooms:
            session.rooms.remove(room.name)
            self.elsewhere.changed(session)
        me = session.user
        if record and me is not None and not room.deleted and not self.user_in_room(room, me.name):
            face = session.face()
            try:
                await self.record_and_wait(
                    room, lambda seq: p.LeaveEvent(room=room.name, seq=seq, user=me.name, reason=reason,
                                                  quit=quit or None, **face),
                    session)
            except StoreError as exc:
                log.error("could not record %s leaving %s: %s", me.name, room.name, exc)

    async def _leave(self, session: Session, req: p.Leave) -> Reply:
        room = self.my_room(session, req.room)
        await self._part(session, room, req.reason or None)
        return p.Left(re=req.id, room=room.name, current=session.current_room)

    # --- messages -------------------------------------------------------------------------------

    async def _message(self, session: Session, req: p.Message) -> None:
        me = self.identity(session)
        self.limits.check_message(session)
        room = self.my_room(session, req.room)
        if not req.text.strip():
            raise ProtocolError(Code.EMPTY, "Message is empty.")
        if len(req.text) > self.config.max_message_chars:
            raise ProtocolError(Code.TOO_LONG, f"Message is longer than {self.config.max_message_chars} characters.")
        # Back-pressure first (a pipelining sender may only get so far ahead of the disk), then queue the
        # event with no await in between: the store numbers it inside the commit, in the order queued.
        if session.unacked >= self.config.max_unacked:
            await session.settle(below=self.config.max_unacked)
        if self.store.backlogged:
            await self.store.wait_for_room()
        if room.deleted:  # while this session waited above
            raise ProtocolError(Code.NO_SUCH_ROOM, f"Room '{room.name}' does not exist.")
        event = p.MessageEvent(ts=utc_now(), room=room.name, seq=0, user=me.name, text=req.text,
                               action=True if req.action else None, notice=req.notice or None, tags=req.tags,
                               **session.face())
        peer = session.peer
        ticket = session.writes_started  # this write's place among the session's writes
        session.write_started()

        def answer(seq: int, error: BaseException | None) -> None:
            if error is None:
                self.messages_sent += 1
                peer.acknowledge(req, room.name, seq)
            else:
                log.error("message not stored in %s: %s", room.name, error)
                peer.send(p.Error(re=req.id, code=Code.STORAGE, message="The server could not store that message."),
                          req)
            session.write_settled()

        def acknowledged(seq: int, error: BaseException | None) -> None:
            if ticket == session.writes_settled and session not in self._held:
                answer(seq, error)  # the next answer due: always so on one node
            else:
                self._hold(session, ticket, partial(answer, seq, error))

        self.record(room, event, acknowledged, session)
        return None

    def _hold(self, session: Session, ticket: int, answer: Callable[[], None]) -> None:
        """Answer a session's writes in the order they were made. With several nodes, a message in one
        room may wait for another node's events (a gap) while the session's next message, in another
        room, is delivered at once: its answer waits here for the first."""
        held = self._held.setdefault(session, {})
        held[ticket] = answer
        while (due := held.pop(session.writes_settled, None)) is not None:
            due()
        if not held:
            del self._held[session]

    async def _msg(self, session: Session, req: p.Msg) -> Reply:
        me = self.identity(session)
        self.limits.check_message(session)
        if not req.text.strip():
            raise ProtocolError(Code.EMPTY, "Message is empty.")
        if len(req.text) > self.config.max_message_chars:
            raise ProtocolError(Code.TOO_LONG, f"Message is longer than {self.config.max_message_chars} characters.")
        targets = self.sessions_of(req.to)
        remote = self.elsewhere.sessions_of(req.to.lower())
        if not targets and not remote:
            if await self.store.get_user(req.to) is None:
                raise ProtocolError(Code.NO_SUCH_USER, f"User '{req.to}' does not exist.")
            raise ProtocolError(Code.USER_OFFLINE, f"User '{req.to}' is not online.")
        to = targets[0].user.name if targets and targets[0].user else (remote[0].user if remote else None) or req.to
        await self.settle_user(session)
        face = session.face()
        event = p.PrivateMessage(user=me.name, to=to, text=req.text, notice=req.notice or None, tags=req.tags, **face)
        # Stored before it is delivered, for both people: each can page the conversation later. A
        # guest's conversations are not kept (a guest's name is not theirs once they leave).
        if not me.guest and not (targets and targets[0].user and targets[0].user.guest):
            # The recipients' next requests wait for this delivery (Session.take_incoming).
            waiting = self.sessions_of(to)
            for target in waiting:
                target.incoming_started()
            try:
                seq = await self.store.add_private(ts=event.ts.timestamp(), sender=me.name, recipient=to,
                                                   body=event.model_dump_json(exclude_none=True))
                event = event.model_copy(update={"seq": seq})
                self.deliver_private(event, session)
            finally:
                for target in waiting:
                    target.incoming_done()
        else:
            self.deliver_private(event, session)
        if remote:
            self.elsewhere.tell("private_message", event=event.model_dump(mode="json"))
        return p.Ok(re=req.id, seq=event.seq)

    def hear_from(self, elsewhere: Elsewhere) -> None:
        """Take what the other nodes of a cluster tell the chat: rooms they made, private messages to
        users on this node, and failed logins (so login delays hold cluster-wide)."""
        throttle = self.limits.throttle

        def room_created(m: dict[str, Any]) -> None:
            if m["name"].lower() not in self.rooms:
                room = Room(int(m["id"]), m["name"], 0, self.config.recent_cache)
                self.add_room(room)  # created elsewhere: counted against its creator there
                room.loaded = True  # a new room: whatever it has, the doorbells bring

        elsewhere.on("room_created", room_created)
        elsewhere.on("private_message",
                     lambda m: self.deliver_private(p.PrivateMessage.model_validate(m["event"])))
        elsewhere.on("login_failed", lambda m: throttle.failed(m["account"], m["address"], self.clock.now()))
        elsewhere.on("login_succeeded", lambda m: throttle.succeeded(m["account"], m["address"]))

    def deliver_private(self, event: p.PrivateMessage, origin: Session | None = None) -> None:
        """Hand a private message to the recipient's sessions on this node; and, when it was sent from
        here (``origin``), to the sender's other sessions (an IRC client of the same account, say) and to
        the sending session itself if it asked to see its own (IRC echo-message)."""
        wire = Wire(event, origin)
        for target in self.sessions_of(event.to):
            target.peer.deliver(wire)
        if origin is not None and event.to.lower() != event.user.lower():
            for other in self.sessions_of(event.user):
                if other is not origin or origin.echo_private:
                    other.peer.deliver(wire)

    async def _history(self, session: Session, req: p.History) -> Reply:
        room = self.room(req.room) if req.room else self.my_room(session, None)
        if room.name not in session.rooms and not session.is_operator:
            raise ProtocolError(Code.NOT_IN_ROOM, f"Join room '{room.name}' to read its history.")
        limit = min(req.limit or self.config.join_history, self.config.history_page_max)
        if req.after is None and req.after_ts is None and req.before_ts is None:
            events, more = await self.history_page(room, req.before, limit, peer=session.peer)
            return p.HistoryPage(re=req.id, room=room.name, events=events, more=more)
        after, before = req.after, req.before
        if req.after_ts is not None:
            after = max(after or 0, await self.seq_after(room, req.after_ts))
        if req.before_ts is not None:
            at = await self.store.seq_at(room.id, req.before_ts.timestamp())
            before = at if before is None else min(before, at)
        events, more = await self.room_events(room, after=after, before=before, limit=limit, latest=after is None)
        return p.HistoryPage(re=req.id, room=room.name, events=events, more=more)

    async def seq_after(self, room: Room, ts: datetime) -> int:
        """The last sequence number at or before ``ts`` (events after it are strictly later)."""
        return await self.store.seq_at(room.id, ts.timestamp() + 1e-6) - 1

    async def room_events(self, room: Room, *, after: int | None, before: int | None, limit: int,
                          latest: bool) -> tuple[list[Any], bool]:
        """Events with ``after < seq < before``: the newest ``limit`` if ``latest``, else the oldest; and
        whether more lie beyond them."""
        stored = await self.store.history_range(room.id, after=after, before=before, limit=limit + 1, latest=latest)
        more = len(stored) > limit
        stored = stored[-limit:] if latest else stored[:limit]
        return [self.parse_event(s) for s in stored], more

    async def private_events(self, me: Identity, other: str, *, after: int | None, before: int | None, limit: int,
                             latest: bool) -> tuple[list[p.PrivateMessage], bool]:
        found = await self.store.private_history(me.name, other, after=after, before=before, limit=limit + 1,
                                                 latest=latest)
        more = len(found) > limit
        found = found[-limit:] if latest else found[:limit]
        return [p.PrivateMessage.model_validate_json(m.body).model_copy(update={"seq": m.id}) for m in found], more

    async def _private_history(self, session: Session, req: p.PrivateHistory) -> Reply:
        me = self.identity(session)
        user = await self.store.get_user(req.user)
        if user is None:
            raise ProtocolError(Code.NO_SUCH_USER, f"User '{req.user}' does not exist.")
        limit = min(req.limit or self.config.join_history, self.config.history_page_max)
        after, before = req.after, req.before
        if req.after_ts is not None:
            at = await self.store.private_id_at(me.name, user.name, req.after_ts.timestamp() + 1e-6)
            after = max(after or 0, at - 1)
        if req.before_ts is not None:
            at = await self.store.private_id_at(me.name, user.name, req.before_ts.timestamp())
            before = at if before is None else min(before, at)
        messages, more = await self.private_events(me, user.name, after=after, before=before, limit=limit,
                                                   latest=after is None)
        return p.PrivateHistoryPage(re=req.id, user=user.name, messages=messages, more=more)

    # --- topics ---------------------------------------------------------------------------------

    @staticmethod
    def _topic_of(room: Room) -> dict[str, Any]:
        if room.topic is None:
            return {}
        return {"topic": room.topic, "topic_by": room.topic_by,
                "topic_ts": datetime.fromtimestamp(room.topic_ts or 0, UTC)}

    async def _topic(self, session: Session, req: p.Topic) -> Reply:
        me = self.identity(session)
        room = self.room(req.room)
        if req.text is None:
            info = self._topic_of(room)
            return p.RoomTopic(re=req.id, room=room.name, topic=info.get("topic"), by=info.get("topic_by"),
                               set_at=info.get("topic_ts"))
        if room.name not in session.rooms and not session.is_operator:
            raise ProtocolError(Code.NOT_IN_ROOM, f"You are not in room '{room.name}'.")
        # A guest who created a room keeps its rights while it holds the name.
        creator = room.created_by is not None and room.created_by.lower() == me.key
        if not (creator or me.is_admin):
            raise ProtocolError(Code.FORBIDDEN,
                                f"Only the creator of room '{room.name}' or an admin may set its topic.")
        topic = req.text or None
        now = utc_now()
        await self.store.set_topic(room.id, topic, me.name, now.timestamp())
        room.topic, room.topic_by, room.topic_ts = topic, me.name, now.timestamp()
        face = {"nick": session.nick} if session.nick and session.nick != me.name else {}
        self.bus.publish(room.key, Wire(p.TopicEvent(ts=now, room=room.name, user=me.name, topic=topic, **face),
                                        session))
        return p.Ok(re=req.id)

    async def history_page(self, room: Room, before: int | None, limit: int,
                           peer: Peer | None = None) -> tuple[list[Any], bool]:
        """At most ``limit`` events before ``before``, oldest first, and whether older ones exist. A page
        also stops at ``history_page_bytes`` (keeping the newest), and with ``peer`` given it waits until
        the page fits in the peer's send queue before building it: a client that asks faster than it
        reads waits, it does not pile pages up in memory."""
        await self.ensure_loaded(room)
        budget = self.config.history_page_bytes
        events = room.page(before, limit)
        if events is None:
            stored = await self.store.history(room.id, before=before, limit=limit + 1)
            more = len(stored) > limit
            stored = stored[-limit:]
            cut, cost = _newest_within(stored, [len(s.body) + 2 for s in stored], budget)
            more = more or cut > 0
            stored = stored[cut:]
            if peer is not None:
                await peer.reserve(cost)
            events = [self.parse_event(s) for s in stored]
        else:
            cut, cost = _newest_within(events, [event_cost(e) for e in events], budget)
            events = events[cut:]
            more = bool(events) and events[0].seq > 1
            if peer is not None:
                await peer.reserve(cost)
        return events, more

    # --- lists ----------------------------------------------------------------------------------

    def page_size(self, limit: int | None) -> int:
        return min(limit or self.config.list_page_max, self.config.list_page_max)

    async def _list_all_users(self, session: Session, req: p.ListAllUsers) -> Reply:
        await trio.lowlevel.checkpoint()  # pipelined listings take turns with everyone else's requests
        size = self.page_size(req.limit)
        if isinstance(self.elsewhere, SingleNode):
            keys, next_key = self.online_keys.page(req.after, size)
            users = []
            for key in keys:
                sessions = self.by_user.get(key)
                u = next(iter(sessions)).user if sessions else None
                if u is not None:
                    users.append(p.UserInfo(name=u.name, is_admin=u.is_admin, is_bot=u.is_bot))
            return p.UserList(re=req.id, users=users, next=next_key)
        # Several nodes: everyone online anywhere, sorted here, then the page.
        online = [next(iter(sessions)).user for sessions in self.by_user.values() if sessions]
        seen = {u.key: p.UserInfo(name=u.name, is_admin=u.is_admin, is_bot=u.is_bot) for u in online if u}
        for r in self.elsewhere.sessions():
            if r.user is not None and r.user.lower() not in seen:
                seen[r.user.lower()] = p.UserInfo(name=r.user, is_admin=r.is_admin, is_bot=r.is_bot)
        after = (req.after or "").lower()
        ordered = [seen[k] for k in sorted(seen) if k > after]
        return p.UserList(re=req.id, users=ordered[:size],
                          next=ordered[size - 1].name.lower() if len(ordered) > size else None)

    async def _list_users_in_room(self, session: Session, req: p.ListUsersInRoom) -> Reply:
        room = self.room(req.room) if req.room else self.my_room(session, None)
        return p.UserList(re=req.id, room=room.name, users=self.unique_users(room))

    async def _list_all_rooms(self, session: Session, req: p.ListAllRooms) -> Reply:
        await trio.lowlevel.checkpoint()  # pipelined listings take turns with everyone else's requests
        keys, next_key = self.room_keys.page(req.after, self.page_size(req.limit))
        rooms = [p.RoomInfo(name=r.name, members=len(self.unique_users(r)))
                 for r in (self.rooms.get(k) for k in keys) if r is not None]
        return p.RoomList(re=req.id, rooms=rooms, next=next_key)

    async def _whoami(self, session: Session, req: p.WhoAmI) -> Reply:
        me = session.user
        return p.WhoAmIReply(re=req.id, user=me.name if me else None, is_admin=bool(me and me.is_admin),
                             is_bot=bool(me and me.is_bot))

    async def _whereami(self, session: Session, req: p.WhereAmI) -> Reply:
        return p.WhereAmIReply(re=req.id, room=session.current_room, rooms=list(session.rooms))

    async def _help(self, session: Session, req: p.Help) -> Reply:
        def line(usage: str, description: str) -> str:
            return f"{usage} - {description}"

        commands = [line(c.usage, c.description) for c in COMMANDS.values() if not c.admin]
        admin = [line(c.usage, c.description) for c in COMMANDS.values() if c.admin] if session.is_operator else []
        return p.HelpReply(re=req.id, commands=commands, admin_commands=admin)

    async def _ping(self, session: Session, req: p.Ping) -> Reply:
        await let_others_in()
        return p.Pong(re=req.id)

    async def _quit(self, session: Session, req: p.Quit) -> None:
        # Like every request, a quit is handled once the messages sent before it are answered, so a client
        # that says something and leaves knows it was stored.
        session.peer.close("Goodbye.", "quit")
        return None


def _nothing(_seq: int, _error: BaseException | None) -> None:
    pass


def event_cost(event: Any) -> int:
    """An upper bound of a room event's JSON size: UTF-8 takes at most 4 bytes a character, an escaped
    quote 2, and the fields around the text fit in 256."""
    text = getattr(event, "text", None)
    if text is None:
        text = getattr(event, "original", "") + getattr(event, "name", "")
    return 256 + 4 * len(text)


def _newest_within(items: list[Any], costs: list[int], budget: int) -> tuple[int, int]:
    """How many of the oldest ``items`` to drop so that the rest cost at most ``budget`` (the newest one
    is always kept), and what the rest cost."""
    total = 0
    for i in range(len(items) - 1, -1, -1):
        if total + costs[i] > budget and i < len(items) - 1:
            return i + 1, total
        total += costs[i]
    return 0, total
