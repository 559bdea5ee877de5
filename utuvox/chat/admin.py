"""Administration: the admin requests of operators (the admin socket) and of admin users in chat.

Both places call the same handlers, registered as commands (:meth:`Administration.commands`). Every
action that changes something or reads people's conversations is written to the admin log (who, what,
target, outcome) whatever its outcome, and is announced to the other operators on the admin socket. No
password or key ever reaches the admin log or the server's log: only the fact that one changed.

``tail`` is an operator's subscription to every room's events (:meth:`Chat.tap`): rooms created later
are covered without any bookkeeping.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import trio

from utuvox.protocol import Code, ProtocolError, Reply, as_datetime, iso, utc_now
from utuvox.protocol import admin as a
from utuvox.protocol import core as p
from utuvox.store import Conflict, StoreError

from .commands import Audit
from .elsewhere import Elsewhere, SingleNode
from .rooms import Room
from .service import Call, Chat, Command, Handler
from .session import Session
from .wire import Wire

log = logging.getLogger("utuvox.admin")

RATE_WINDOW = 10  # seconds over which stats reports rates
VIEW_HISTORY_DEFAULT = 100  # events view_room_history shows when no limit is given




class _AuditLog:
    """The admin log around an action: written whatever the outcome, and told to the other operators
    when ``notify`` and the action succeeded."""

    def __init__(self, admin: Administration, *, notify: bool) -> None:
        self.admin = admin
        self.notify = notify

    async def audited(self, call: Call, request: Any, handler: Handler) -> Reply | None:
        session = call.session
        call.audit.target = getattr(request, "username", None) or getattr(request, "room", None)
        outcome = "ok"
        try:
            return await handler(call, request)
        except ProtocolError as exc:
            outcome = exc.code
            raise
        except StoreError:
            outcome = Code.STORAGE
            raise
        except trio.Cancelled:
            outcome = "interrupted"
            raise
        except Exception:
            outcome = Code.INTERNAL
            raise
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(10):
                await self.admin.record(session.actor, session.transport, request.type, call.audit, str(outcome))
            if self.notify and outcome == "ok":
                self.admin.tell_operators(a.AdminAction(actor=session.actor, action=request.type,
                                                        target=call.audit.target, detail=call.audit.detail),
                                          besides=session)


class Administration:
    def __init__(self, chat: Chat) -> None:
        self.chat = chat
        self.closed_sessions = 0
        self.closed_bytes = 0
        self._samples: deque[tuple[float, int, int]] = deque(maxlen=RATE_WINDOW + 1)
        # Figures of the I/O shell for ``stats`` (slow consumers cut off, descriptors): set by the server.
        self.server_figures: Callable[[], dict[str, int]] = dict
        chat.when_disconnected(self._on_disconnect)

    def commands(self) -> list[Command]:
        """The admin requests: written to the admin log (``logged``), and told to the other operators too
        (``told``), or neither (reads of figures)."""
        logged, told = _AuditLog(self, notify=False), _AuditLog(self, notify=True)
        return [
            Command(a.DeleteRoom, self._delete_room, audit=told),
            Command(a.AddUser, self._add_user, audit=told),
            Command(a.EditUser, self._edit_user, audit=told),
            Command(a.ViewUsers, self._view_users),
            Command(a.ViewRoomHistory, self._view_room_history, audit=logged),
            Command(a.BanUser, self._ban_user, audit=told),
            Command(a.UnbanUser, self._unban_user, audit=told),
            Command(a.ChangeAdminKey, self._change_admin_key, audit=told),
            Command(a.Who, self._who),
            Command(a.Kick, self._kick, audit=told),
            Command(a.Announce, self._announce, audit=told),
            Command(a.Stats, self._stats),
            Command(a.AdminLogQuery, self._admin_log),
            Command(a.Tail, self._tail, audit=logged),
            Command(a.Untail, self._untail),
        ]

    # --- the admin log --------------------------------------------------------------------------

    async def record(self, actor: str, via: str, action: str, audit: Audit, outcome: str) -> None:
        """One row of the admin log (and one line of the server's log). Never raises for a storage error."""
        log.info("admin: %s via %s: %s %s -> %s", actor, via, action, audit.target or "-", outcome)
        try:
            await self.chat.store.add_admin_log(actor=actor, via=via, action=action, target=audit.target,
                                                outcome=outcome, detail=audit.detail)
        except StoreError as exc:
            log.error("could not write the admin log (%s by %s): %s", action, actor, exc)

    async def operator_connected(self, operator: str, uid: int | None, pid: int | None) -> None:
        """The admin socket accepted a connection from OS user ``operator``. That is no admin action: it
        goes to the server's log, not to the admin log (a scripted ``utuvox-console -c`` run would fill it
        with connections); what the operator then does is recorded, as ``console:<operator>``."""
        log.info("admin socket: console:%s connected (uid %s, pid %s)", operator, uid, pid)

    def tell_operators(self, event: a.AdminAction, *, besides: Session | None = None) -> None:
        """Tell the operators on the admin socket, on this node and every other."""
        self._tell_operators_here(event, besides)
        self.chat.elsewhere.tell("admin_action", event=event.model_dump(mode="json"))

    def _tell_operators_here(self, event: a.AdminAction, besides: Session | None = None) -> None:
        wire = Wire(event)
        for session in self.chat.all_sessions():
            if session.transport == "admin" and session is not besides:
                session.peer.deliver(wire)

    # --- the other nodes of a cluster -----------------------------------------------------------

    def hear_from(self, elsewhere: Elsewhere) -> None:
        """Carry out here what an admin did on another node: bans, kicks, deletions, announcements,
        changed accounts and the admin key; and tell this node's operators."""
        chat = self.chat

        def room_deleted(m: dict[str, Any]) -> None:
            room = chat.room_here(str(m["name"]))
            if room is not None and room.id == m["id"]:
                chat.remove_room_here(room, str(m["by"]))

        def ban(m: dict[str, Any]) -> None:
            for victim in chat.sessions_of(m["user"]):
                victim.peer.close(m["reason"], "banned")

        def kick(m: dict[str, Any]) -> None:
            if m.get("session") is not None:
                victim = chat.session(int(m["session"])) if m["at"] == elsewhere.node else None
                victims = [victim] if victim is not None else []
            else:
                victims = chat.sessions_of(m["user"])
            for victim in victims:
                victim.peer.close(m["reason"], "kicked")

        def announce(m: dict[str, Any]) -> None:
            event = p.Announcement.model_validate(m["event"])
            room = chat.room_here(event.room) if event.room else None
            if event.room is None or room is not None:
                self._announce_here(event, room)

        def user_changed(m: dict[str, Any]) -> None:
            self._update_sessions_here(m["name"], bool(m["is_admin"]), bool(m["is_bot"]), m["by"],
                                       bool(m["admin_changed"]))

        async def admin_key(_m: dict[str, Any]) -> None:
            await chat.admin_key.load()

        elsewhere.on("room_deleted", room_deleted)
        elsewhere.on("ban", ban)
        elsewhere.on("kick", kick)
        elsewhere.on("announce", announce)
        elsewhere.on("user_changed", user_changed)
        elsewhere.on("admin_key", admin_key)
        elsewhere.on("admin_action", lambda m: self._tell_operators_here(a.AdminAction.model_validate(m["event"])))
        vanished = getattr(elsewhere, "on_room_vanished", None)
        if vanished is not None:
            vanished.append(lambda room: chat.remove_room_here(room, "an admin"))

    # --- rooms ----------------------------------------------------------------------------------

    async def _delete_room(self, call: Call, req: a.DeleteRoom) -> Reply:
        session, audit = call.session, call.audit
        room = self.chat.room(req.room)
        audit.target = room.name
        await self.still_operator(session)
        await self.chat.delete_room(room, session.actor)
        return p.Ok(re=req.id, room=room.name)

    async def _view_room_history(self, call: Call, req: a.ViewRoomHistory) -> Reply:
        room = self.chat.room(req.room)
        call.audit.target = room.name
        limit = min(req.limit or VIEW_HISTORY_DEFAULT, self.chat.config.history_page_max)
        events, more = await self.chat.history_page(room, req.before, limit)
        return p.HistoryPage(re=req.id, room=room.name, events=events, more=more)

    # --- users ----------------------------------------------------------------------------------

    async def still_operator(self, session: Session) -> None:
        """Right before an admin user's action takes effect: is the account still an admin, as it is now?
        A demotion or a ban made while the request was under way (a password hashing) wins."""
        if session.transport == "admin" or session.user is None:
            return
        account = await self.chat.settled_account(session.user.name)
        if account is None or not account.is_admin or account.banned:
            raise ProtocolError(Code.FORBIDDEN, "Permission denied: you are no longer an admin.")

    async def _user(self, name: str) -> Any:
        user = await self.chat.store.get_user(name)
        if user is None:
            raise ProtocolError(Code.NO_SUCH_USER, f"User '{name}' does not exist.")
        return user

    async def _add_user(self, call: Call, req: a.AddUser) -> Reply:
        session, audit = call.session, call.audit
        store = self.chat.store
        if await store.get_user(req.username) is not None:
            raise ProtocolError(Code.NAME_TAKEN, f"Username '{req.username}' is already taken.")
        hashed = await self.chat.passwords.hash(req.password, who=session.address)
        await self.still_operator(session)
        try:
            user = await store.create_user(req.username, hashed, is_admin=req.is_admin, is_bot=req.bot)
        except Conflict:
            raise ProtocolError(Code.NAME_TAKEN, f"Username '{req.username}' is already taken.") from None
        audit.target = user.name
        audit.detail = f"admin={user.is_admin}, bot={user.is_bot}"
        return p.Ok(re=req.id)

    async def _edit_user(self, call: Call, req: a.EditUser) -> Reply:
        session, audit = call.session, call.audit
        user = await self._user(req.username)
        audit.target = user.name
        changes: dict[str, Any] = {}
        said: list[str] = []
        if req.new_password is not None:
            changes["password_hash"] = await self.chat.passwords.hash(req.new_password, who=session.address)
            said.append("password changed")
        if req.is_admin is not None and req.is_admin != user.is_admin:
            changes["is_admin"] = req.is_admin
            said.append(f"admin={req.is_admin}")
        if req.bot is not None and req.bot != user.is_bot:
            changes["is_bot"] = req.bot
            said.append(f"bot={req.bot}")
        if not changes:
            raise ProtocolError(Code.BAD_REQUEST, "No changes specified.")
        await self.still_operator(session)
        async with self.chat.changing_account(user.name):
            await self.chat.store.update_user(user.name, **changes)
            current = await self.chat.store.get_user(user.name) or user
            is_admin, is_bot = current.is_admin, current.is_bot
            if "password_hash" in changes:  # whoever is signed in with the old password is signed out
                ended = self.chat.end_sessions(user.name, f"Your password was changed by admin '{session.actor}'; "
                                               "log in again.", "password_changed", besides=session)
                said.append(f"{ended} session(s) ended")
            self._update_sessions_here(user.name, is_admin, is_bot, session.actor, "is_admin" in changes)
        self.chat.elsewhere.tell("user_changed", name=user.name, is_admin=is_admin, is_bot=is_bot, by=session.actor,
                                 admin_changed="is_admin" in changes)
        audit.detail = ", ".join(said)
        return p.Ok(re=req.id)

    def _update_sessions_here(self, name: str, is_admin: bool, is_bot: bool, by: str, admin_changed: bool) -> None:
        for live in self.chat.reidentify(name, is_admin, is_bot):  # takes effect at once, for the next request
            if admin_changed:
                old, new = ("a regular user", "an admin") if is_admin else ("an admin", "a regular user")
                live.peer.send(p.Notice(text=f"Your status has changed from {old} to {new} by admin '{by}'."))

    async def _view_users(self, call: Call, req: a.ViewUsers) -> Reply:
        elsewhere = self.chat.elsewhere
        size = self.chat.page_size(req.limit)
        records = await self.chat.store.list_users(after=req.after, limit=size + 1)
        page = records[:size]
        users = [
            a.AccountInfo(name=u.name, is_admin=u.is_admin, is_bot=u.is_bot, banned=u.banned, ban_reason=u.ban_reason,
                          created_at=as_datetime(u.created_at), sessions=len(self.chat.sessions_of(u.name))
                          + len(elsewhere.sessions_of(u.name.lower())))
            for u in page
        ]
        return a.UserTable(re=req.id, users=users, next=page[-1].name.lower() if len(records) > size else None)

    async def _ban_user(self, call: Call, req: a.BanUser) -> Reply:
        session, audit = call.session, call.audit
        user = await self._user(req.username)
        audit.target = user.name
        if session.user is not None and session.user.key == user.name.lower():
            raise ProtocolError(Code.FORBIDDEN, "You cannot ban yourself.")
        await self.still_operator(session)
        reason = "You have been banned by an admin" + (f": {req.reason}" if req.reason else ".")
        elsewhere = self.chat.elsewhere.sessions_of(user.name.lower())
        async with self.chat.changing_account(user.name):
            await self.chat.store.update_user(user.name, banned=True, ban_reason=req.reason)
            ended = self.chat.end_sessions(user.name, reason, "banned")
        self.chat.elsewhere.tell("ban", user=user.name, reason=reason)
        audit.detail = ((f"reason: {req.reason}; " if req.reason else "")
                        + f"{ended + len(elsewhere)} session(s) disconnected")
        return p.Ok(re=req.id)

    async def _unban_user(self, call: Call, req: a.UnbanUser) -> Reply:
        session, audit = call.session, call.audit
        user = await self._user(req.username)
        audit.target = user.name
        if not user.banned:
            raise ProtocolError(Code.BAD_REQUEST, f"User '{user.name}' is not banned.")
        await self.still_operator(session)
        async with self.chat.changing_account(user.name):
            await self.chat.store.update_user(user.name, banned=False, ban_reason=None)
        return p.Ok(re=req.id)

    async def _change_admin_key(self, call: Call, req: a.ChangeAdminKey) -> Reply:
        session, audit = call.session, call.audit
        audit.target = None
        await self.still_operator(session)
        try:
            await self.chat.admin_key.change(req.new_key)
        except OSError as exc:
            log.error("could not save the admin key: %s", exc.strerror or type(exc).__name__)
            raise ProtocolError(Code.STORAGE, "The admin key could not be saved; it is unchanged.") from None
        self.chat.elsewhere.tell("admin_key")  # the others read it from the database
        return p.Ok(re=req.id)

    # --- sessions -------------------------------------------------------------------------------

    async def _who(self, call: Call, req: a.Who) -> Reply:
        """Every session of every node, a page at a time: this node's first (by id), then the others' (as they
        last told; with several nodes the whole list comes in one page)."""
        await trio.lowlevel.checkpoint()
        elsewhere = self.chat.elsewhere
        node = elsewhere.node or None
        single = isinstance(elsewhere, SingleNode)
        size = self.chat.page_size(req.limit) if single else self.chat.session_count() + 1
        # Session ids only grow, so the dict (in insertion order) is in id order already.
        after = req.after or 0
        chosen: list[Session] = []
        more = False
        for s in self.chat.all_sessions():
            if s.id <= after:
                continue
            if len(chosen) == size:
                more = True
                break
            chosen.append(s)
        sessions = [
            a.SessionInfo(id=s.id, user=s.user.name if s.user else None, is_admin=bool(s.user and s.user.is_admin),
                          transport=s.transport, address=s.address, rooms=list(s.rooms), connected_at=s.connected_at,
                          operator=s.operator, tailing=self.chat.is_tapping(s),
                          bytes_sent=getattr(s.peer, "bytes_sent", 0), queued_bytes=getattr(s.peer, "pending_bytes", 0),
                          node=node)
            for s in chosen
        ]
        if not single:
            sessions += [
                a.SessionInfo(id=r.id, user=r.user, is_admin=r.is_admin, transport=r.transport, address=r.address,
                              rooms=list(r.rooms), connected_at=as_datetime(r.connected_at), operator=r.operator,
                              node=r.node)
                for r in sorted(elsewhere.sessions(), key=lambda r: (r.node, r.id))
            ]
        return a.SessionList(re=req.id, sessions=sessions, next=chosen[-1].id if more else None)

    async def _kick(self, call: Call, req: a.Kick) -> Reply:
        audit = call.audit
        reason = "You have been kicked by an admin" + (f": {req.reason}" if req.reason else ".")
        elsewhere = self.chat.elsewhere
        if req.session is not None:
            victim = self.chat.session(req.session)
            audit.target = f"#{req.session}"
            remote = [r for r in elsewhere.sessions() if r.id == req.session]
            if victim is None and remote:
                # On another node (session numbers are per node: this node's own come first).
                elsewhere.tell("kick", at=remote[0].node, session=req.session, reason=reason)
                who = f" ({remote[0].user})" if remote[0].user else ""
                audit.target = f"#{req.session} on {remote[0].node}{who}"
                return a.Kicked(re=req.id, session=req.session, user=remote[0].user, count=1)
            if victim is None:
                raise ProtocolError(Code.USER_OFFLINE, f"No session #{req.session} is connected.")
            if victim.user is not None:
                audit.target = f"#{req.session} ({victim.user.name})"
            victim.peer.close(reason, "kicked")
            return a.Kicked(re=req.id, session=req.session, user=victim.user.name if victim.user else None, count=1)
        assert req.username is not None
        victims = self.chat.sessions_of(req.username)
        remote = elsewhere.sessions_of(req.username.lower())
        if not victims and not remote:
            user = await self._user(req.username)
            raise ProtocolError(Code.USER_OFFLINE, f"User '{user.name}' is not online.")
        name = (victims[0].user.name if victims and victims[0].user else remote[0].user if remote else None) \
            or req.username
        audit.target = name
        for victim in victims:
            victim.peer.close(reason, "kicked")
        if remote:
            elsewhere.tell("kick", user=name, reason=reason)
        count = len(victims) + len(remote)
        audit.detail = (f"reason: {req.reason}; " if req.reason else "") + f"{count} session(s)"
        return a.Kicked(re=req.id, user=name, count=count)

    async def _announce(self, call: Call, req: a.Announce) -> Reply:
        session, audit = call.session, call.audit
        if len(req.text) > self.chat.config.max_message_chars:
            raise ProtocolError(Code.TOO_LONG,
                                f"Message is longer than {self.chat.config.max_message_chars} characters.")
        if not req.text.strip():
            raise ProtocolError(Code.EMPTY, "Message is empty.")
        room = self.chat.room(req.room) if req.room else None
        audit.target = room.name if room else None
        event = p.Announcement(text=req.text, room=room.name if room else None, by=session.actor)
        self._announce_here(event, room)
        self.chat.elsewhere.tell("announce", event=event.model_dump(mode="json"))
        return p.Ok(re=req.id, room=room.name if room else None)

    def _announce_here(self, event: p.Announcement, room: Room | None) -> None:
        wire = Wire(event)
        if room is None:
            targets: Iterable[Session] = self.chat.all_sessions()
        else:
            targets = [*self.chat.members(room.key), *self.chat.tapping(room.key)]
        for target in targets:
            target.peer.deliver(wire)

    async def _tail(self, call: Call, req: a.Tail) -> Reply:
        room = self.chat.room(req.room) if req.room else None
        call.audit.target = room.name if room else None
        self.chat.tap(call.session, room)
        return p.Ok(re=req.id, room=room.name if room else None)

    async def _untail(self, call: Call, req: a.Untail) -> Reply:
        self.chat.untap(call.session)
        return p.Ok(re=req.id)

    async def _on_disconnect(self, session: Session) -> None:
        self.closed_sessions += 1
        self.closed_bytes += getattr(session.peer, "bytes_sent", 0)

    # --- statistics -----------------------------------------------------------------------------

    def bytes_sent(self) -> int:
        return self.closed_bytes + sum(getattr(s.peer, "bytes_sent", 0) for s in self.chat.all_sessions())

    async def sample_rates(self, *, interval: float = 1.0) -> None:
        """Run in the server's nursery: a sample a second, so ``stats`` can report recent rates."""
        while True:
            self._samples.append((trio.current_time(), self.chat.messages_sent, self.bytes_sent()))
            await trio.sleep(interval)

    def rates(self, messages: int, sent: int) -> tuple[float, float]:
        if not self._samples:
            elapsed = max((utc_now() - self.chat.started_at).total_seconds(), 1e-3)
            return messages / elapsed, sent / elapsed
        then, old_messages, old_sent = self._samples[0]
        elapsed = max(trio.current_time() - then, 1e-3)
        return (messages - old_messages) / elapsed, (sent - old_sent) / elapsed

    async def _stats(self, call: Call, req: a.Stats) -> Reply:
        chat = self.chat
        by_transport: dict[str, int] = {}
        sessions = chat.all_sessions()
        for s in sessions:
            by_transport[s.transport] = by_transport.get(s.transport, 0) + 1
        sent = self.bytes_sent()
        queued = [getattr(s.peer, "pending_bytes", 0) for s in sessions]
        messages_rate, bytes_rate = self.rates(chat.messages_sent, sent)
        figures = self.server_figures()
        now = utc_now()
        return a.ServerStats(
            re=req.id, started_at=chat.started_at, uptime=(now - chat.started_at).total_seconds(),
            connections=len(sessions), by_transport=by_transport,
            connections_total=self.closed_sessions + len(sessions),
            users_online=chat.users_online(), users_registered=await chat.store.count_users(),
            rooms=chat.room_count(), messages=chat.messages_sent, messages_per_second=round(messages_rate, 2),
            bytes_sent=sent, bytes_per_second=round(bytes_rate, 1), node=chat.elsewhere.node or None,
            nodes=chat.elsewhere.nodes(),
            queued_bytes=sum(queued), queued_bytes_max=max(queued, default=0),
            slow_consumers=figures.get("slow_consumers", 0), open_files=figures.get("open_files", 0),
            max_open_files=figures.get("max_open_files", 0), refused_busy=figures.get("refused_busy", 0),
        )

    async def _admin_log(self, call: Call, req: a.AdminLogQuery) -> Reply:
        rows = await self.chat.store.admin_log(actor=req.actor, action=req.action,
                                               since=iso(req.since) if req.since else None, limit=req.limit)
        entries = [a.AdminLogEntry(id=r.id, ts=as_datetime(r.ts), actor=r.actor, via=r.via, action=r.action,
                                   target=r.target, outcome=r.outcome, detail=r.detail) for r in rows]
        return a.AdminLogPage(re=req.id, entries=entries)


def install(chat: Chat) -> Administration:
    """Administration of ``chat``, its requests registered. The server runs
    :meth:`Administration.sample_rates` in its nursery and reports admin socket connections to it."""
    admin = Administration(chat)
    chat.register(admin.commands())
    return admin
