"""The chat domain: accounts, rooms, membership, messages, history. Rules, not sockets.

:class:`Chat` holds the live state (rooms, sessions, who is signed in as whom, who tails what) behind
methods, and the mechanisms every command shares: signing in, recording and publishing room events in
order, holding answers in a session's order, deleting a room. A session hands :meth:`Chat.handle` a
validated request; the command table (:mod:`utuvox.chat.commands`) says what the request needs and which
handler answers it. The answer is a reply, or ``None`` when it is sent later (a message is acknowledged
only once committed). Events go out through the bus.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, Protocol

import trio

from utuvox.protocol import Code, ProtocolError, Reply, Request, json_codec, utc_now
from utuvox.protocol import core as p
from utuvox.protocol.stored import load_event, load_private
from utuvox.store import Conflict, RoomRecord, Store, StoredEvent, StoreError, UserRecord

from .admin_key import AdminKey
from .bus import Bus
from .clock import Clock
from .commands import Audit, RateCheck
from .config import ChatConfig
from .delivery import InOrder, stored_wire
from .elsewhere import Elsewhere, SingleNode
from .limits import Limits, address_key
from .listing import SortedKeys
from .passwords import Passwords
from .rejoin import Rejoins
from .rooms import Room
from .session import Identity, Peer, Session
from .wire import Wire

log = logging.getLogger("utuvox.chat")

SessionHook = Callable[[Session], Awaitable[None]]
RoomHook = Callable[[Room], Awaitable[None]]



# --- the command table ------------------------------------------------------------------------------
#
# A request reaches :meth:`Chat.handle`, which looks its type up in the table and applies the declared
# steps in one place and one order: the server is not stopping; an operator, if the command is for
# admins; a signed-in user, unless the request is anonymous; the rate bucket it draws from; the room it
# acts in, which the session must be in; the quota it counts against; then the handler, inside the audit
# (the admin log) if it has one. Features (files, administration) bring their commands as lists of
# :class:`Command` and the server registers them; nothing else changes the chat.
#
# Adding a request type: its model in ``utuvox/protocol``, a handler (a function of a :class:`Call` and
# the request; the core's are in :mod:`utuvox.chat.handlers`), and one :class:`Command` line in the
# feature's list (``CORE`` in :mod:`utuvox.chat.handlers` for the core).


@dataclass(eq=False, slots=True)
class Call:
    """One request being handled: the chat, the session that made it, and what the steps found."""

    chat: Chat
    session: Session
    room: Room | None = None  # the room the request acts in, for commands that declare ``member``
    _audit: Audit | None = None

    @property
    def audit(self) -> Audit:
        """What the admin log is to say of this request, filled in by the handler (made when first asked
        for: most requests are not audited, and a message is handled tens of thousands of times a second)."""
        audit = self._audit
        if audit is None:
            audit = self._audit = Audit()
        return audit


Handler = Callable[[Call, Any], Awaitable[Reply | None]]


class Quota(Protocol):
    """A budget a request counts against: checked before the handler, charged after it succeeds."""

    def check(self, call: Call, request: Any) -> None: ...

    def charge(self, call: Call, request: Any, reply: Reply | None) -> None: ...


class Auditor(Protocol):
    """Runs an action and writes its outcome, whatever it is, to the admin log."""

    async def audited(self, call: Call, request: Any, handler: Handler) -> Reply | None: ...


@dataclass(frozen=True, slots=True)
class Command:
    request: type[Request]
    handler: Handler
    member: bool = False  # acts in the request's ``room`` (or the current room): the session must be in it
    rate: RateCheck | None = None
    quota: Quota | None = None
    audit: Auditor | None = None
    # Read from the request type once: every request reads them.
    admin: bool = field(init=False)
    login: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "admin", bool(self.request.admin_only))
        object.__setattr__(self, "login", not self.request.anonymous)

    @property
    def type(self) -> str:
        return str(self.request.model_fields["type"].default)


class CommandTable:
    def __init__(self) -> None:
        self._commands: dict[str, Command] = {}

    def add(self, commands: Iterable[Command]) -> None:
        for command in commands:
            if command.type in self._commands:
                raise ValueError(f"two commands for request type {command.type!r}")
            self._commands[command.type] = command

    def get(self, kind: str) -> Command | None:
        return self._commands.get(kind)

    def __contains__(self, kind: object) -> bool:
        return kind in self._commands


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
        self._commands = CommandTable()
        self._rooms: dict[str, Room] = {}
        self._room_keys = SortedKeys()  # the keys of ``_rooms``, for listings a page at a time
        self._rooms_created: dict[str, int] = {}  # by user key: rooms they created that still exist
        self._creating: dict[str, trio.Event] = {}  # by room key: rooms being created, set once they are
        self._sessions: dict[int, Session] = {}
        self._by_user: dict[str, dict[Session, None]] = {}
        self._online_keys = SortedKeys()  # the keys of ``_by_user``
        # Operators tailing rooms: the room key each follows, or None for every room.
        self._taps: dict[Session, str | None] = {}
        # Accounts being changed (ban, password, admin status...), and a count of finished changes: a
        # login decides rights on the account as it is once no change is under way (settled_account).
        self._changing: dict[str, int] = {}
        self._generations: dict[str, int] = {}
        self._settled = trio.lowlevel.ParkingLot()
        self.started_at = clock.wall()
        self.messages_sent = 0
        # Set when the server shuts down: new requests are refused while the last ones are acknowledged, and
        # the sessions it closes are not people leaving (see rejoin.py).
        self._stopping = False
        self.rejoins = Rejoins(config.rejoin_grace, clock)
        # Other nodes of a cluster (none by default), and in-order delivery of what any node commits.
        self.elsewhere: Elsewhere = SingleNode()
        self._held: dict[Session, dict[int, Callable[[], None]]] = {}  # answers waiting for earlier ones
        self.delivery = InOrder(store, self.publish, self._followed)
        # Run when a session ends / after a room is deleted, by capabilities that keep state per session
        # or per room (files, administration).
        self._on_disconnect: list[SessionHook] = []
        self._on_room_deleted: list[RoomHook] = []

    # --- what capabilities register ---------------------------------------------------------------

    def register(self, commands: Iterable[Command]) -> None:
        """Add request types this chat answers (the core's, files', administration's)."""
        self._commands.add(commands)

    def answers(self, kind: str) -> bool:
        return kind in self._commands

    def when_disconnected(self, hook: SessionHook) -> None:
        self._on_disconnect.append(hook)

    def when_room_deleted(self, hook: RoomHook) -> None:
        self._on_room_deleted.append(hook)

    @property
    def stopping(self) -> bool:
        return self._stopping

    def stop_taking_requests(self) -> None:
        """The server is shutting down: every request from now on is refused."""
        self._stopping = True

    async def start(self) -> None:
        """Load the rooms and how far their events go: two queries, however many rooms there are."""
        last = await self.store.room_seqs()
        for record in await self.store.list_rooms():
            await self.adopt_room(record, last.get(record.id, 0))
        self.rejoins.started(self._rooms.values())

    async def close_rejoins(self) -> None:
        """Once the rejoin grace is over, store the leave of whoever was in a room at the last stop and has
        not come back (the server runs this in the background)."""
        await self.rejoins.wait_closed()
        await self.ensure_loaded_all()
        for room in list(self._rooms.values()):
            for name in self.rejoins.absentees(room):
                if room.deleted or self.user_in_room(room, name):
                    continue
                try:
                    await self.record_and_wait(room, partial(_absent, room.name, name))
                except StoreError as exc:
                    log.error("could not record %s leaving %s: %s", name, room.name, exc)
        self.rejoins.forget()

    async def ensure_loaded_all(self) -> None:
        for room in list(self._rooms.values()):
            await self.ensure_loaded(room)

    async def adopt_room(self, record: RoomRecord, last: int | None = None) -> Room:
        """The live state of a stored room, made on first sight (at start, or created by another node)."""
        if last is None:
            last = await self.store.last_seq(record.id)
        room = self._rooms.get(record.name.lower())
        if room is None or room.id != record.id:
            room = Room(record.id, record.name, last, self.config.recent_cache,
                        created_by=record.created_by.lower() if record.created_by else None)
            self.add_room(room)
        room.topic, room.topic_by, room.topic_ts = record.topic, record.topic_by, record.topic_ts
        return room

    async def find_room(self, name: str) -> Room:
        """The named room; one another node created may not have been heard of yet: ask the store."""
        room = self._rooms.get(name.lower())
        if room is None and not isinstance(self.elsewhere, SingleNode):
            record = await self.store.get_room(name)
            if record is not None:
                room = await self.adopt_room(record)
        return room if room is not None else self.room(name)  # (which says it does not exist)

    def add_room(self, room: Room) -> None:
        old = self._rooms.get(room.key)
        if old is not None:
            self.drop_room(old)
        self._rooms[room.key] = room
        self._room_keys.add(room.key)
        if room.created_by is not None:
            self._rooms_created[room.created_by] = self._rooms_created.get(room.created_by, 0) + 1

    def drop_room(self, room: Room) -> None:
        """Forget a deleted room (a later room of the same name is another room)."""
        if self._rooms.get(room.key) is not room:
            return
        del self._rooms[room.key]
        self._room_keys.discard(room.key)
        if room.created_by is not None:
            left = self._rooms_created.get(room.created_by, 0) - 1
            if left > 0:
                self._rooms_created[room.created_by] = left
            else:
                self._rooms_created.pop(room.created_by, None)

    # --- sessions -------------------------------------------------------------------------------

    def connect(self, session: Session) -> None:
        self._sessions[session.id] = session
        self.limits.open(session)

    async def disconnect(self, session: Session) -> None:
        """The connection is gone: leave its rooms (telling the others) and forget it."""
        self._sessions.pop(session.id, None)
        self._taps.pop(session, None)
        self.limits.close(session)
        for hook in self._on_disconnect:
            await hook(session)
        for room_name in list(session.rooms):
            room = self._rooms.get(room_name.lower())
            if room is not None:
                await self.part(session, room, session.quit_reason or "Connection closed", quit=True,
                                 record=not self._stopping)
        session.rooms.clear()
        self._forget_user(session)
        self.elsewhere.gone(session)

    def _forget_user(self, session: Session) -> None:
        if session.user is None:
            return
        sessions = self._by_user.get(session.user.key)
        if sessions is not None:
            sessions.pop(session, None)
            if not sessions:
                del self._by_user[session.user.key]
                self._online_keys.discard(session.user.key)

    def _sign_in(self, session: Session, identity: Identity) -> None:
        session.user = identity
        self._by_user.setdefault(identity.key, {})[session] = None
        self._online_keys.add(identity.key)
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
        return any(s.user is not None and s.user.guest for s in self._by_user.get(name.lower(), ()))

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
        return list(self._by_user.get(username.lower(), ()))

    def session(self, session_id: int) -> Session | None:
        return self._sessions.get(session_id)

    def all_sessions(self) -> tuple[Session, ...]:
        """Every session on this node, in the order they connected (their ids grow)."""
        return tuple(self._sessions.values())

    def session_count(self) -> int:
        return len(self._sessions)

    def users_online(self) -> int:
        """Accounts (and guests) with a session on this node."""
        return len(self._by_user)

    def online_page(self, after: str | None, size: int) -> tuple[list[Identity], str | None]:
        """Signed-in users on this node, a page at a time in name order, and the cursor of the next page."""
        keys, next_key = self._online_keys.page(after, size)
        users = []
        for key in keys:
            sessions = self._by_user.get(key)
            user = next(iter(sessions)).user if sessions else None
            if user is not None:
                users.append(user)
        return users, next_key

    def signed_in_sessions(self) -> list[Session]:
        """Every session here that is signed in (as an account or a guest)."""
        return [s for sessions in self._by_user.values() for s in sessions]

    def online_users(self) -> list[Identity]:
        return [u for sessions in self._by_user.values() if sessions
                for u in (next(iter(sessions)).user,) if u is not None]

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
        """Answer a request: the steps its command declares, in this order, then its handler."""
        command = self._commands.get(request.type)
        if command is None:
            raise ProtocolError(Code.UNKNOWN_TYPE, f"Unknown type: {request.type}.")
        if self._stopping:
            raise ProtocolError(Code.SHUTTING_DOWN, "The server is shutting down; nothing more is taken.")
        if command.admin and not session.is_operator:
            raise ProtocolError(Code.FORBIDDEN, "Permission denied: that command is for admins only.")
        if command.login and session.user is None and session.transport != "admin":
            raise ProtocolError(Code.NOT_LOGGED_IN, "You must log in first: /login <username> <password>.")
        call = Call(self, session)
        if command.rate is not None:
            command.rate(self.limits, session, request)
        if command.member:
            call.room = self.my_room(session, getattr(request, "room", None))
        if command.quota is not None:
            command.quota.check(call, request)
        try:
            if command.audit is not None:
                reply = await command.audit.audited(call, request, command.handler)
            else:
                reply = await command.handler(call, request)
        except StoreError as exc:
            log.error("storage error on %s: %s", request.type, exc)
            raise ProtocolError(Code.STORAGE, "The server could not store that; nothing was changed.") from None
        if command.quota is not None:
            command.quota.charge(call, request, reply)
        return reply

    # --- helpers --------------------------------------------------------------------------------

    @staticmethod
    def identity(session: Session) -> Identity:
        if session.user is None:
            raise ProtocolError(Code.NOT_LOGGED_IN, "You must log in first: /login <username> <password>.")
        return session.user

    def room_here(self, name: str) -> Room | None:
        """The named room as this node knows it, or ``None``."""
        return self._rooms.get(name.lower())

    def rooms_here(self) -> list[Room]:
        return list(self._rooms.values())

    def page_size(self, limit: int | None) -> int:
        return min(limit or self.config.list_page_max, self.config.list_page_max)

    def room_count(self) -> int:
        return len(self._rooms)

    def rooms_page(self, after: str | None, size: int) -> tuple[list[Room], str | None]:
        keys, next_key = self._room_keys.page(after, size)
        return [r for r in (self._rooms.get(k) for k in keys) if r is not None], next_key

    def room(self, name: str) -> Room:
        room = self._rooms.get(name.lower())
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
        return any(True for _ in self.bus.members(room.key)) or bool(self._taps)

    def publish(self, room: Room, wire: Wire) -> None:
        """A committed room event, in seq order: remembered for joins and recent pages, and sent out."""
        room.recent.append(wire.kept())
        self.publish_once(room, wire)

    def publish_once(self, room: Room, wire: Wire) -> None:
        """Send an event to the room's members and to the operators tailing it."""
        self.bus.publish(room.key, wire)
        if self._taps:
            for session in self.tapping(room.key):
                session.peer.deliver(wire)

    def record(self, room: Room, event: p.MessageEvent | p.JoinEvent | p.LeaveEvent | p.FileEvent,
               on_done: Callable[[int, BaseException | None], None] | None = None,
               origin: Session | None = None) -> None:
        """Queue a room event (made with ``seq=0``) for commit: :meth:`record_line` with its JSON line."""
        self.record_line(room, event.type, event.user, event.ts.timestamp(), json_codec.encode(event),
                         on_done or _nothing, origin)

    def record_line(self, room: Room, kind: str, user: str, ts: float, line: bytes,
                    on_done: Callable[[int, BaseException | None], None], origin: Session | None = None) -> None:
        """Queue a room event, given as its JSON line (numbered 0, of today's schema; a message's is made by
        :mod:`utuvox.protocol.event_lines`), for commit. The store numbers it; once durable it is remembered
        and published in seq order, then ``on_done(seq, None)`` runs (or ``on_done(0, error)`` and nothing
        is published). ``origin`` is the session whose request made it. No model is made unless a reader
        needs one."""

        def committed(seq: int, error: BaseException | None) -> None:
            if error is not None or room.deleted:
                on_done(seq, error)
                return
            wire = Wire.line(kind, room.name, seq, line.replace(b',"seq":0,', b',"seq":%d,' % seq, 1), origin)
            self.delivery.committed(room, seq, wire, on_done)

        self.store.submit_event(StoredEvent(room.id, 0, ts, kind, user, line[:-1].decode()), committed)

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
            room.merge_loaded([stored_wire(s) for s in stored if s.seq <= room.delivered])

    @staticmethod
    def parse_event(stored: StoredEvent) -> Any:
        return load_event(stored.version, stored.body)

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

    def login_failed(self, session: Session, account: str | None) -> None:
        """A wrong password (or admin key): delays grow on every node, not just this one."""
        self.limits.login_failed(session, account)
        if session.transport != "admin":
            self.elsewhere.tell("login_failed", account=account.lower() if account else None,
                                address=address_key(session.address))

    def login_succeeded(self, session: Session, account: str) -> None:
        self.limits.login_succeeded(session, account)
        if session.transport != "admin":
            self.elsewhere.tell("login_succeeded", account=account.lower(), address=address_key(session.address))

    def sign_in(self, session: Session, user: UserRecord) -> None:
        """The session acts as ``user`` from now on (checked by the caller against the account as it is)."""
        self.limits.check_sessions(len(self._by_user.get(user.name.lower(), ()))
                                   + len(self.elsewhere.sessions_of(user.name.lower())))
        self._sign_in(session, Identity(user.name, user.is_admin, user.is_bot))

    def reidentify(self, name: str, is_admin: bool, is_bot: bool) -> list[Session]:
        """An account's rights changed: its sessions here act with the new ones from their next request.
        Returns them. A session that is no longer an operator stops tailing."""
        identity = Identity(name, is_admin, is_bot)
        sessions = self.sessions_of(name)
        for live in sessions:
            live.user = identity
            if not live.is_operator:
                self._taps.pop(live, None)
        return sessions

    # --- rooms: entering and leaving ------------------------------------------------------------

    def rooms_created_by(self, user_key: str) -> int:
        return self._rooms_created.get(user_key, 0)

    def has_room(self, name: str) -> bool:
        return name.lower() in self._rooms

    def check_join(self, session: Session, room: Room | None) -> None:
        """Rates and caps before a session enters a room it is not in (``room=None``: a new one)."""
        me = self.identity(session)
        joined = {r for s in self._by_user.get(me.key, ()) for r in s.rooms}
        members = sum(1 for _ in self.bus.members(room.key)) if room is not None else 0
        self.limits.check_join(session, joined, members)

    async def create_room(self, session: Session, name: str) -> Room:
        """A new room, created by the session's user (who then enters it)."""
        me = self.identity(session)
        if name.lower() in self._rooms:
            raise ProtocolError(Code.ROOM_EXISTS, f"Room '{name}' already exists.")
        self.check_join(session, None)
        self.limits.check_create(session, self._rooms_created.get(me.key, 0))
        key = name.lower()
        pending = self._creating.get(key)
        if pending is not None:
            # Someone else is creating it this instant: once theirs is done, it exists (a join finds it).
            await pending.wait()
            raise ProtocolError(Code.ROOM_EXISTS, f"Room '{name}' already exists.")
        self._creating[key] = done = trio.Event()
        try:
            try:
                record = await self.store.create_room(name, me.name)
            except Conflict:
                raise ProtocolError(Code.ROOM_EXISTS, f"Room '{name}' already exists.") from None
            room = Room(record.id, record.name, 0, self.config.recent_cache, created_by=me.key)
            room.loaded = True
            self.add_room(room)
        finally:
            del self._creating[key]
            done.set()
        self.elsewhere.tell("room_created", id=room.id, name=room.name)
        log.info("room %s created by %s", room.name, me.name)
        return room

    async def enter(self, session: Session, room: Room, req: Request) -> p.Joined:
        """The session enters ``room`` (or, already in it, makes it its current room)."""
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
        recent = room.latest(self.config.join_history)
        return p.Joined(re=req.id, room=room.name, history=recent, last_seq=room.delivered, **self.topic_of(room))

    async def part(self, session: Session, room: Room, reason: str | None = None, *, quit: bool = False,
                   record: bool = True) -> None:
        """The session leaves ``room``; the others are told if its user has no other session there."""
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

    def members(self, room_key: str) -> tuple[Session, ...]:
        """The sessions here in the room (by its key)."""
        return tuple(self.bus.members(room_key))

    # --- topics ---------------------------------------------------------------------------------

    @staticmethod
    def topic_of(room: Room) -> dict[str, Any]:
        if room.topic is None:
            return {}
        return {"topic": room.topic, "topic_by": room.topic_by,
                "topic_ts": datetime.fromtimestamp(room.topic_ts or 0, UTC)}

    async def set_topic(self, session: Session, room: Room, topic: str | None) -> None:
        me = self.identity(session)
        now = utc_now()
        await self.store.set_topic(room.id, topic, me.name, now.timestamp())
        room.topic, room.topic_by, room.topic_ts = topic, me.name, now.timestamp()
        nick = session.nick if session.nick and session.nick != me.name else None
        event = p.TopicEvent(ts=now, room=room.name, user=me.name, topic=topic, nick=nick)
        self.publish_once(room, Wire(event, session))
        self.elsewhere.tell("topic", id=room.id, event=event.model_dump(mode="json"))

    def _topic_elsewhere(self, m: dict[str, Any]) -> None:
        """Another node set a room's topic (stored there already): take it, and tell the members here."""
        event = p.TopicEvent.model_validate(m["event"])
        room = self.room_here(event.room)
        if room is None or room.id != m["id"]:
            return
        room.topic, room.topic_by, room.topic_ts = event.topic, event.user, event.ts.timestamp()
        self.publish_once(room, Wire(event))

    # --- deleting rooms -------------------------------------------------------------------------

    def remove_room_here(self, room: Room, by: str) -> list[Session]:
        """The room is gone: from here on nothing new is published to it and nobody can enter it; its
        members on this node (and operators tailing it) are told, and its members removed. Returns them."""
        room.deleted = True
        self.drop_room(room)
        self.delivery.forget(room)
        wire = Wire(p.RoomDeleted(room=room.name, by=by))
        members = self.bus.drop_room(room.key)
        for session in [*members, *self.tapping(room.key)]:
            session.peer.deliver(wire)
        for session in members:
            if room.name in session.rooms:
                session.rooms.remove(room.name)
                self.elsewhere.changed(session)
        for session, only in tuple(self._taps.items()):
            if only == room.key:
                del self._taps[session]
        return members

    async def delete_room(self, room: Room, by: str) -> None:
        """Delete a room with its history, even with members inside (on every node): they are told and
        removed. A room created later under the same name starts fresh."""
        members = self.remove_room_here(room, by)
        try:
            await self.store.delete_room(room.id)
        except StoreError:
            # Still stored, so it still exists (empty of members); the caller reports the failure.
            room.deleted = False
            if room.key not in self._rooms:
                self.add_room(room)
            raise
        self.elsewhere.tell("room_deleted", id=room.id, name=room.name, by=by)
        log.info("room %s deleted by %s (%d sessions removed here)", room.name, by, len(members))
        for hook in self._on_room_deleted:
            try:
                await hook(room)
            except Exception:
                log.exception("cleanup after deleting room %s failed", room.name)

    # --- operators tailing rooms ----------------------------------------------------------------

    def tap(self, session: Session, room: Room | None) -> None:
        """The operator's session gets every event of ``room`` (or of every room) from now on."""
        self._taps[session] = room.key if room is not None else None

    def untap(self, session: Session) -> None:
        self._taps.pop(session, None)

    def is_tapping(self, session: Session) -> bool:
        return session in self._taps

    def tapping(self, room_key: str) -> list[Session]:
        """The tailing sessions that follow ``room_key`` and are not members of it (they get it as members)."""
        if not self._taps:
            return []
        return [s for s, only in tuple(self._taps.items())
                if (only is None or only == room_key) and all(r.lower() != room_key for r in s.rooms)]

    # --- messages -------------------------------------------------------------------------------

    def write(self, session: Session, room: Room, line: bytes, ts: float, req: Request) -> None:
        """Queue a session's message (its event's JSON line, see :meth:`record_line`, and its time) for
        commit; its ``ok`` (or error) goes out once it is committed, after the answers to the session's
        earlier writes."""
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

        def committed(seq: int, error: BaseException | None) -> None:
            if error is None and ticket == session.writes_settled and session not in self._held:
                # The next answer due (always so on one node; hold would answer it at once): answer's
                # first case, unrolled, as this runs for every message.
                self.messages_sent += 1
                peer.acknowledge(req, room.name, seq)
                session.write_settled()
            else:
                self.hold(session, ticket, partial(answer, seq, error))

        self.record_line(room, "message", self.identity(session).name, ts, line, committed, session)

    def hold(self, session: Session, ticket: int, answer: Callable[[], None]) -> None:
        """Answer a session's writes in the order they were made. With several nodes, a message in one
        room may wait for another node's events (a gap) while the session's next message, in another
        room, is delivered at once: its answer waits here for the first."""
        if ticket == session.writes_settled and session not in self._held:
            answer()  # the next answer due: always so on one node
            return
        held = self._held.setdefault(session, {})
        held[ticket] = answer
        while (due := held.pop(session.writes_settled, None)) is not None:
            due()
        if not held:
            del self._held[session]

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

    def meet(self, elsewhere: Elsewhere) -> None:
        """The other nodes from now on (at start, a :class:`SingleNode` naming this one; in a cluster, the
        cluster once it has joined): who is where, and whom to tell what happens here."""
        self.elsewhere = elsewhere

    def hear_from(self, elsewhere: Elsewhere) -> None:
        """Take what the other nodes of a cluster tell the chat: rooms they made, private messages to
        users on this node, and failed logins (so login delays hold cluster-wide)."""
        throttle = self.limits.throttle

        def room_created(m: dict[str, Any]) -> None:
            if m["name"].lower() not in self._rooms:
                room = Room(int(m["id"]), m["name"], 0, self.config.recent_cache)
                self.add_room(room)  # created elsewhere: counted against its creator there
                room.loaded = True  # a new room: whatever it has, the doorbells bring

        elsewhere.on("room_created", room_created)
        elsewhere.on("topic", self._topic_elsewhere)
        elsewhere.on("private_message",
                     lambda m: self.deliver_private(p.PrivateMessage.model_validate(m["event"])))
        elsewhere.on("login_failed", lambda m: throttle.failed(m["account"], m["address"], self.clock.now()))
        elsewhere.on("login_succeeded", lambda m: throttle.succeeded(m["account"], m["address"]))

    # --- history --------------------------------------------------------------------------------

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
        return [load_private(m.version, m.body).model_copy(update={"seq": m.id}) for m in found], more

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

def _absent(room: str, user: str, seq: int) -> p.LeaveEvent:
    return p.LeaveEvent(room=room, seq=seq, user=user)


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
