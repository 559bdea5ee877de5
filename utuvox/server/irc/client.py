"""One IRC connection's state and commands: registration (CAP, SASL, PASS, NICK, USER), then the
commands of RFC 2812 and IRCv3 mapped onto the chat layer's requests.

Every command that touches accounts, rooms or messages becomes the same request model a JSON client
sends, handled by :meth:`Chat.handle`; what comes back is rendered as numerics. IRC-only state (the
capabilities, the nick, away, modes, the label of the command being answered) lives here.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import fnmatch
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import partial

from utuvox.chat.service import Chat
from utuvox.chat.session import Session, let_others_in
from utuvox.protocol import ProtocolError, Reply, Request
from utuvox.protocol import admin as a
from utuvox.protocol import core as p
from utuvox.protocol.errors import Code
from utuvox.protocol.irc import numerics as n
from utuvox.protocol.irc import render
from utuvox.protocol.irc.lines import MAX_LINE, Line, clean, escape_tag, format_line
from utuvox.protocol.names import is_valid_name

from .caps import CAPS, FLAG_OF, cap_ls_lines
from .outbox import IrcOutbox
from .registry import IrcRegistry
from .targets import room_of

log = logging.getLogger("utuvox.irc")

NICKLEN = 32
MAX_TARGETS = 4
VERSION = "utuvox-0.1"
CHANNEL_MODES = "+nt"
MOTD = ["Welcome to UtuVox over IRC.", "#room is the UtuVox room 'room'; accounts are UtuVox accounts.",
        "Log in with SASL PLAIN or PASS account:password; REGISTER creates an account."]
# Commands allowed before registration is complete.
BEFORE_REGISTRATION = {"CAP", "AUTHENTICATE", "PASS", "NICK", "USER", "PING", "PONG", "QUIT", "REGISTER"}


def valid_nick(nick: str) -> bool:
    # A subset of UtuVox names (a guest's nick is the name the other transports see) that IRC can carry:
    # a letter first, then letters, digits, '_' and '-'.
    return 0 < len(nick) <= NICKLEN and nick[0].isascii() and nick[0].isalpha() and is_valid_name(nick) \
        and "." not in nick


class IrcClient:
    def __init__(self, chat: Chat, session: Session, outbox: IrcOutbox, registry: IrcRegistry[IrcClient]) -> None:
        self.chat = chat
        self.session = session
        self.outbox = outbox
        self.registry = registry
        self.nick: str | None = None
        self.wanted_nick: str | None = None  # the last NICK asked for, taken or not
        self.ident: str | None = None
        self.realname = ""
        self.password: str | None = None  # PASS, used at the end of registration
        self.registered = False
        self.caps: set[str] = set()
        self.cap_version = 0
        self.negotiating = False
        self.sasl: str | None = None  # the mechanism in progress
        self.sasl_buffer = ""
        self.away: str | None = None
        self.invisible = False
        self.oper = False
        # When the client last did something (WHOX idle time): wall seconds, as a float because every
        # line sets it and a datetime costs more than the rest of reading the line.
        self.last_active = time.time()
        # Labeled-response: the label of the command being handled and the lines it has produced.
        self.label: str | None = None
        self._captured: list[str] | None = None
        outbox.labels = {}
        registry.add(self)

    # --- output ---------------------------------------------------------------------------------

    @property
    def me(self) -> str:
        return self.nick or "*"

    @property
    def source(self) -> str:
        # Before registration ends (a 900 after SASL) the ident is the one USER gave, if it came.
        return render.prefix(self.me, self.session.ident or (f"~{self.ident}" if self.ident else None))

    def has(self, cap: str) -> bool:
        return cap in self.caps

    def send(self, command: str, *params: str, source: str | None = "", tags: dict[str, str] | None = None) -> None:
        """One line; from the server unless ``source`` says otherwise (None: no source)."""
        line = format_line(command, *params, source=render.SERVER_NAME if source == "" else source, tags=tags)
        if self._captured is not None:
            self._captured.append(line)
        else:
            self.outbox.send_line(line)

    def send_raw(self, line: str) -> None:
        """A line formatted already (CR LF included)."""
        if self._captured is not None:
            self._captured.append(line)
        else:
            self.outbox.send_line(line)

    def num(self, code: str, *params: str) -> None:
        self.send(code, self.me, *params)

    def fail(self, command: str, code: str, *context: str) -> None:
        self.send("FAIL", command, code, *context)

    def in_turn(self, reply: Callable[[], None]) -> None:
        """Send the lines ``reply`` makes once the session's earlier messages are answered: what the read
        loop says of a line itself (too long, not UTF-8, over the rate) must not overtake their echoes."""
        if not self.session.unacked:
            reply()
            return
        self._captured = []
        try:
            reply()
        finally:
            lines, self._captured = self._captured, None
        self.session.after_writes(partial(self._flush_labeled, lines, None))

    def new_batch_id(self) -> str:
        return secrets.token_hex(4)

    def _flush_labeled(self, lines: list[str] | None = None, label: str | None = None) -> None:
        """Send what a labeled command produced: one line carries the label, several go in a batch,
        none get an ACK. (Without arguments: what the command being handled produced.)"""
        if lines is None:
            lines, self._captured = self._captured or [], None
            label, self.label = self.label, None
        if label is None:
            for line in lines:
                self.outbox.send_line(line)
            return
        if not lines:
            self.outbox.send_line(format_line("ACK", source=render.SERVER_NAME, tags={"label": label}))
        elif len(lines) == 1:
            self.outbox.send_line(_tag(lines[0], {"label": label}))
        elif self.has("batch"):
            ref = self.new_batch_id()
            self.outbox.send_line(format_line("BATCH", "+" + ref, "labeled-response", source=render.SERVER_NAME,
                                              tags={"label": label}))
            for line in lines:
                self.outbox.send_line(_tag(line, {"batch": ref}))
            self.outbox.send_line(format_line("BATCH", "-" + ref, source=render.SERVER_NAME))
        else:
            for line in lines:
                self.outbox.send_line(line)

    # --- dispatch -------------------------------------------------------------------------------

    async def handle(self, line: Line, *, pipelined: bool = False) -> None:
        """Carry out one line. A ``pipelined`` line (a message to channels) is read while the session's
        earlier messages commit: what it answers at once (an error numeric) then waits for them, so it
        cannot overtake their echoes or a PONG."""
        command = line.command
        if line.tags and "label" in line.tags and self.has("labeled-response"):
            self.label = line.tags["label"][:64]
            self._captured = []
        hold = pipelined and self.session.unacked > 0
        if hold and self._captured is None:
            self._captured = []
        try:
            await self._dispatch(command, line)
        except ProtocolError as exc:
            self.error(command, exc)
        finally:
            if hold:
                lines, self._captured = self._captured or [], None
                label, self.label = self.label, None
                if lines or label is not None:
                    self.session.after_writes(partial(self._flush_labeled, lines, label))
            else:
                self._flush_labeled()

    async def _dispatch(self, command: str, line: Line) -> None:
        handler = COMMANDS.get(command)
        if handler is None:
            if not self.registered and command not in BEFORE_REGISTRATION:
                self.num(n.ERR_NOTREGISTERED, "You have not registered")
            else:
                self.num(n.ERR_UNKNOWNCOMMAND, command[:32], "Unknown command")
            return
        if not self.registered and command not in BEFORE_REGISTRATION:
            self.num(n.ERR_NOTREGISTERED, "You have not registered")
            return
        if command not in ("PING", "PONG"):
            self.last_active = time.time()
        await handler(self, line)

    async def request(self, request: Request) -> Reply | None:
        return await self.chat.handle(self.session, request)

    def error(self, command: str, exc: ProtocolError) -> None:
        """A chat error that no command mapped to a numeric: as ergo does for its own, a NOTICE."""
        if exc.code == Code.RATE_LIMITED:
            self.fail(command, "RATE_LIMITED", exc.message)
            return
        self.send("NOTICE", self.me, f"{command}: {exc.message}")

    def need(self, line: Line, count: int) -> bool:
        if len(line.params) < count or (count and not line.params[count - 1] and line.command != "USER"):
            self.num(n.ERR_NEEDMOREPARAMS, line.command, "Not enough parameters")
            return False
        return True

    # --- registration ---------------------------------------------------------------------------

    async def cmd_cap(self, line: Line) -> None:
        if not self.need(line, 1):
            return
        sub = line.params[0].upper()
        if sub == "LS":
            version = line.param(1)
            self.cap_version = max(self.cap_version, int(version) if version.isdigit() else 301)
            if self.cap_version >= 302:
                self.caps.add("cap-notify")
            if not self.registered:
                self.negotiating = True
            for params in cap_ls_lines(self.cap_version >= 302,
                                       before_connect=self.registry.register_before_connect):
                self.send("CAP", self.me, "LS", *params)
        elif sub == "LIST":
            self.send("CAP", self.me, "LIST", " ".join(sorted(self.caps - {"cap-notify"})))
        elif sub == "REQ":
            if not self.registered:
                self.negotiating = True
            wanted = line.param(1).split()
            adding = {c for c in wanted if not c.startswith("-")}
            removing = {c[1:] for c in wanted if c.startswith("-")}
            if not wanted or any(c not in CAPS for c in adding | removing) or (self.caps & removing & {"sasl"}
                                                                               and self.session.user is not None):
                self.send("CAP", self.me, "NAK", line.param(1))
                return
            self.caps |= adding
            self.caps -= removing
            self._update_flags()
            self.send("CAP", self.me, "ACK", line.param(1))
        elif sub == "END":
            if not self.registered:
                self.negotiating = False
                await self.try_register()
        else:
            self.num(n.ERR_INVALIDCAPCMD, sub[:32], "Invalid CAP command")

    def _update_flags(self) -> None:
        flags = 0
        for cap in self.caps:
            flags |= FLAG_OF.get(cap, 0)
        self.outbox.flags = flags
        self.outbox.echo = self.session.echo_private = "echo-message" in self.caps

    async def cmd_authenticate(self, line: Line) -> None:
        if not self.need(line, 1):
            return
        arg = line.params[0]
        if "sasl" not in self.caps:
            self.num(n.ERR_SASLFAIL, "SASL authentication failed: request the sasl capability first")
            return
        if self.session.user is not None and not self.session.user.guest:
            self.num(n.ERR_SASLALREADY, "You have already authenticated using SASL")
            return
        if arg == "*":
            if self.sasl is not None:
                self.sasl, self.sasl_buffer = None, ""
            self.num(n.ERR_SASLABORTED, "SASL authentication aborted")
            return
        if self.sasl is None:
            if arg.upper() != "PLAIN":
                self.num(n.RPL_SASLMECHS, "PLAIN", "are available SASL mechanisms")
                self.num(n.ERR_SASLFAIL, "SASL authentication failed")
                return
            self.sasl = "PLAIN"
            self.send("AUTHENTICATE", "+", source=None)
            return
        if len(arg) > 400:
            self.sasl = None
            self.sasl_buffer = ""
            self.num(n.ERR_SASLTOOLONG, "SASL message too long")
            return
        if arg != "+":
            self.sasl_buffer += arg
        if len(self.sasl_buffer) > 4096:
            self.sasl, self.sasl_buffer = None, ""
            self.num(n.ERR_SASLFAIL, "SASL authentication failed: message too long")
            return
        if len(arg) == 400:
            return  # more to come
        payload, self.sasl_buffer, self.sasl = self.sasl_buffer, "", None
        try:
            authzid, authcid, password = base64.b64decode(payload, validate=True).decode().split("\0")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            self.num(n.ERR_SASLFAIL, "SASL authentication failed: bad message")
            return
        account = authcid or authzid
        if authzid and authzid.lower() != account.lower():
            self.num(n.ERR_SASLFAIL, "SASL authentication failed: authorization identity differs")
            return
        if await self.log_in(account, password):
            self.num(n.RPL_SASLSUCCESS, "SASL authentication successful")
        else:
            self.num(n.ERR_SASLFAIL, "SASL authentication failed")

    async def log_in(self, account: str, password: str) -> bool:
        """Log the session in (SASL or PASS); on failure, say nothing (the caller does)."""
        if not is_valid_name(account) or not password or len(password) > 1024:
            return False
        guest = self.session.user if self.session.user is not None and self.session.user.guest else None
        if guest is not None:
            self.chat.sign_out_guest(self.session)
        try:
            await self.request(p.Login(username=account, password=password))
        except ProtocolError as exc:
            if guest is not None:
                self.chat.sign_in_guest(self.session, guest.name)
            if exc.code == Code.BANNED:
                self.num(n.ERR_YOUREBANNEDCREEP, exc.message)
            return False
        user = self.session.user
        assert user is not None
        self.num(n.RPL_LOGGEDIN, self.source, user.name, f"You are now logged in as {user.name}")
        if self.registered:
            self.notify_account(user.name)
        return True

    async def cmd_pass(self, line: Line) -> None:
        if self.registered:
            self.num(n.ERR_ALREADYREGISTERED, "You may not reregister")
            return
        if self.need(line, 1):
            self.password = line.params[-1]

    async def cmd_nick(self, line: Line) -> None:
        if not line.params or not line.params[0]:
            self.num(n.ERR_NONICKNAMEGIVEN, "No nickname given")
            return
        nick = self.wanted_nick = line.params[0]
        if not valid_nick(nick):
            self.num(n.ERR_ERRONEUSNICKNAME, nick[:64], "Erroneous nickname")
            return
        if self.nick == nick:
            return
        # Before registration only other connections' nicks count: SASL may still make this one the
        # account whose name it is (checked in full when registration ends).
        if await self.nick_taken(nick, accounts=self.registered):
            self.num(n.ERR_NICKNAMEINUSE, nick, "Nickname is already in use")
            return
        if not self.registered:
            self.registry.take(self, nick)
            self.nick = nick
            await self.try_register()
            return
        old_source = self.source
        user = self.session.user
        if user is not None and user.guest:
            self.chat.sign_in_guest(self.session, nick)
        self.registry.take(self, nick)
        self.nick = self.session.nick = self.outbox.nick = nick
        self.chat.elsewhere.changed(self.session)  # the other nodes learn the nick is taken
        self.send("NICK", nick, source=old_source)
        for other in self.neighbours():
            other.outbox.send_line(format_line("NICK", nick, source=old_source))

    async def nick_taken(self, nick: str, *, accounts: bool = True) -> bool:
        """Whether ``nick`` belongs to someone else: another connection's nick, a name logged in, or an
        account (a nick equal to an account's name is that account's)."""
        mine = self.session.user.key if self.session.user is not None and not self.session.user.guest else None
        key = nick.lower()
        if key == mine:
            return False
        for holder in self.registry.holders(nick):
            if holder is not self:
                holder_user = holder.session.user
                if mine is None or holder_user is None or holder_user.key != mine:
                    return True
        # Sessions signed in under that name: before registration only a guest's counts (a name in use by an
        # account's sessions elsewhere may still be this connection's own, once it logs in).
        if any(s is not self.session and (accounts or (s.user is not None and s.user.guest))
               for s in self.chat.sessions_of(nick)):
            return True
        # On the other nodes of a cluster, as they last told: a nick someone uses there (not this account).
        if any(r.holds_nick(key) and (mine is None or r.user_key != mine) for r in self.chat.elsewhere.sessions()):
            return True
        if not accounts or (self.session.user is not None and self.session.user.guest
                            and self.session.user.key == key):
            return False
        return await self.chat.store.get_user(nick) is not None

    async def cmd_user(self, line: Line) -> None:
        if self.registered:
            self.num(n.ERR_ALREADYREGISTERED, "You may not reregister")
            return
        if len(line.params) < 4 or not line.params[0] or not line.params[3]:
            self.num(n.ERR_NEEDMOREPARAMS, "USER", "Not enough parameters")
            return
        ident = "".join(c for c in line.params[0] if c.isascii() and (c.isalnum() or c in "_-."))[:10] or "user"
        self.ident = ident
        self.realname = clean(line.params[3])[:100]
        await self.try_register()

    async def try_register(self) -> None:
        if self.registered or self.nick is None or self.ident is None or self.negotiating:
            return
        if self.sasl is not None:
            # Registration completed during SASL: abort it, and register without an account.
            self.sasl, self.sasl_buffer = None, ""
            self.num(n.ERR_SASLABORTED, "SASL authentication aborted")
        if self.password is not None and self.session.user is None:
            account, sep, password = self.password.partition(":")
            if not sep:
                account, password = self.nick, self.password
            if not await self.log_in(account, password):
                self.num(n.ERR_PASSWDMISMATCH, "Password incorrect")
                self.outbox.close("Bad password", "auth_failed")
                return
        user = self.session.user
        if user is None:
            if not self.registry.guests:
                self.outbox.close("This server requires an account: log in with SASL or PASS account:password",
                                  "not_logged_in")
                return
            if await self.nick_taken(self.nick):
                self.num(n.ERR_NICKNAMEINUSE, self.nick, "Nickname is already in use")
                self.nick = None
                return
            self.chat.sign_in_guest(self.session, self.nick)
        elif await self.nick_taken(self.nick):
            # Logged in as an account whose name is taken as this nick by someone else: use the account's.
            self.num(n.ERR_NICKNAMEINUSE, self.nick, "Nickname is already in use")
            self.nick = None
            return
        self.registered = True
        self.session.nick = self.outbox.nick = self.nick
        self.session.ident = "~" + self.ident
        self.session.realname = self.realname
        self.chat.elsewhere.changed(self.session)
        self.registry.take(self, self.nick)
        self.welcome()

    def welcome(self) -> None:
        me = self.me
        self.num(n.RPL_WELCOME, f"Welcome to the UtuVox IRC network {self.source}")
        self.num(n.RPL_YOURHOST, f"Your host is {render.SERVER_NAME}, running version {VERSION}")
        self.num(n.RPL_CREATED, "This server was created " + self.chat.started_at.strftime("%Y-%m-%d %H:%M:%S UTC"))
        self.num(n.RPL_MYINFO, render.SERVER_NAME, VERSION, "iBo", "nt")
        tokens = isupport_tokens(self.chat)
        for i in range(0, len(tokens), 12):
            self.num(n.RPL_ISUPPORT, *tokens[i:i + 12], "are supported by this server")
        self.lusers()
        self.motd()
        user = self.session.user
        if user is not None and user.is_bot:
            self.send("MODE", me, "+B", source=self.source)

    def lusers(self) -> None:
        users = self.chat.users_online()
        self.registry.max_users = most = max(self.registry.max_users, users)
        invisible = sum(1 for c in self.registry.registered() if c.invisible)
        unknown = sum(1 for s in self.chat.all_sessions() if s.user is None)
        ops = sum(1 for s in self.chat.signed_in_sessions() if s.user and s.user.is_admin)
        self.num(n.RPL_LUSERCLIENT, f"There are {users - invisible} users and {invisible} invisible on 1 server(s)")
        self.num(n.RPL_LUSEROP, str(ops), "IRC Operators online")
        self.num(n.RPL_LUSERUNKNOWN, str(unknown), "unregistered connections")
        self.num(n.RPL_LUSERCHANNELS, str(self.chat.room_count()), "channels formed")
        self.num(n.RPL_LUSERME, f"I have {users} clients and 0 servers")
        self.num(n.RPL_LOCALUSERS, str(users), str(most), f"Current local users {users}, max {most}")
        self.num(n.RPL_GLOBALUSERS, str(users), str(most), f"Current global users {users}, max {most}")

    def motd(self) -> None:
        self.num(n.RPL_MOTDSTART, f"- {render.SERVER_NAME} Message of the day - ")
        for text in MOTD:
            self.num(n.RPL_MOTD, f"- {text}")
        self.num(n.RPL_ENDOFMOTD, "End of /MOTD command")

    async def cmd_lusers(self, line: Line) -> None:
        self.lusers()

    async def cmd_motd(self, line: Line) -> None:
        self.motd()

    async def cmd_ping(self, line: Line) -> None:
        """A PONG follows the commits of the messages sent before its PING (clients sync on it). While
        those commit, the lines behind the PING are read on: a bot pipelining messages and PINGs is
        not held up at each PING. With a label, or private messages on their way in, it waits here."""
        if not line.params:
            self.num(n.ERR_NEEDMOREPARAMS, "PING", "Not enough parameters")
            return
        session = self.session
        if session.unacked and self.label is None and not session.incoming:
            # Straight to the outbox when due: by then another line may be being handled and captured.
            pong = format_line("PONG", render.SERVER_NAME, line.params[0], source=render.SERVER_NAME)
            session.after_writes(partial(self.outbox.send_line, pong))
            return
        await session.catch_up()
        await let_others_in()
        self.send("PONG", render.SERVER_NAME, line.params[0])

    async def cmd_pong(self, line: Line) -> None:
        pass  # an answer to our keepalive PING: the read itself is what counts

    async def cmd_quit(self, line: Line) -> None:
        reason = clean(line.param(0))[:200]
        self.session.quit_reason = reason or "Client quit"
        await self.session.settle()
        self.outbox.close(f"Quit: {reason}" if reason else "Quit", "quit")

    async def cmd_register(self, line: Line) -> None:
        if len(line.params) < 3:
            self.fail("REGISTER", "INVALID_PARAMS", "Not enough parameters")
            return
        account, _email, password = line.params[0], line.params[1], line.params[2]
        if account == "*":
            account = self.nick or self.wanted_nick or ""
        if not self.registered and not self.registry.register_before_connect:
            self.fail("REGISTER", "COMPLETE_CONNECTION_REQUIRED", account or "*", "Finish connecting first")
            return
        user = self.session.user
        if user is not None and not user.guest:
            self.fail("REGISTER", "ALREADY_AUTHENTICATED", account, "You are already logged in")
            return
        if not is_valid_name(account) or not valid_nick(account):
            self.fail("REGISTER", "BAD_ACCOUNT_NAME", account or "*", "Account names are letters, digits, _ and -")
            return
        if account.lower() != (self.nick or self.wanted_nick or "").lower():
            self.fail("REGISTER", "ACCOUNT_NAME_MUST_BE_NICK", account, "Register your current nick")
            return
        if not password or len(password) > 1024:
            self.fail("REGISTER", "UNACCEPTABLE_PASSWORD", account, "Bad password")
            return
        if user is not None:
            self.chat.sign_out_guest(self.session)
        try:
            await self.request(p.Register(username=account, password=password))
        except ProtocolError as exc:
            if user is not None:
                self.chat.sign_in_guest(self.session, user.name)
            if exc.code == Code.NAME_TAKEN:
                self.fail("REGISTER", "ACCOUNT_EXISTS", account, "Account already exists")
            else:
                self.fail("REGISTER", "TEMPORARILY_UNAVAILABLE", account, exc.message)
            return
        self.send("REGISTER", "SUCCESS", account, "Account created")
        self.num(n.RPL_LOGGEDIN, self.source, account, f"You are now logged in as {account}")
        if self.registered:
            self.notify_account(account)

    def notify_account(self, account: str) -> None:
        for other in self.neighbours():
            if other.has("account-notify"):
                other.outbox.send_line(format_line("ACCOUNT", account, source=self.source))

    # --- who is where ---------------------------------------------------------------------------

    def neighbours(self) -> list[IrcClient]:
        """The other IRC connections sharing a room with this one."""
        seen: dict[IrcClient, None] = {}
        for room in self.session.rooms:
            for member in self.chat.members(room.lower()):
                other = self.registry.of(member)
                if other is not None and other is not self and other.registered:
                    seen[other] = None
        return list(seen)

    def nick_of(self, session: Session) -> str:
        if session.nick is not None:
            return session.nick
        return session.user.name if session.user is not None else "*"

    def find(self, nick: str) -> Session | None:
        """The session behind a nick: an IRC connection holding it, else a session logged in under it."""
        for holder in self.registry.holders(nick):
            if holder.registered:
                return holder.session
        for session in self.chat.sessions_of(nick):
            if session.nick is None or session.nick.lower() == nick.lower():
                return session
        return None

    def client_info(self, session: Session) -> tuple[str, str, str]:
        """(ident, realname, away) of any session; other transports have no ident or realname."""
        other = self.registry.of(session)
        name = self.nick_of(session)
        if other is not None:
            return (session.ident or "~" + name[:9], other.realname or name, other.away or "")
        return ("~" + name[:9], name, "")

    def is_op(self, session: Session, room_name: str) -> bool:
        user = session.user
        room = self.chat.room_here(room_name)
        if user is None or room is None:
            return False
        return user.is_admin or (room.created_by is not None and room.created_by.lower() == user.key)

    def members(self, room_name: str) -> list[Session]:
        seen: dict[str, Session] = {}
        for s in self.chat.members(room_name.lower()):
            if s.user is not None:
                seen.setdefault(self.nick_of(s).lower(), s)
        return list(seen.values())

    # --- channels -------------------------------------------------------------------------------

    async def cmd_join(self, line: Line) -> None:
        if not self.need(line, 1):
            return
        if line.params[0] == "0":
            for room in list(self.session.rooms):
                await self.part(room, "")
            return
        for target in line.params[0].split(",")[:MAX_TARGETS * 5]:
            if not target:
                continue
            if not target.startswith("#"):
                self.num(n.ERR_NOSUCHCHANNEL, target[:64], "No such channel")
                continue
            name = room_of(target)
            if name is None:
                self.num(n.ERR_BADCHANNAME, target[:64], "Illegal channel name")
                continue
            await self.join(name)

    async def join(self, name: str) -> None:
        if any(r.lower() == name.lower() for r in self.session.rooms):
            return
        try:
            if self.chat.has_room(name):
                joined = await self.request(p.Join(room=name))
            else:
                try:
                    joined = await self.request(p.Create(room=name))
                except ProtocolError as exc:
                    if exc.code != Code.ROOM_EXISTS:
                        raise
                    # Created by someone else this instant (the chat answers once it exists): join it.
                    joined = await self.request(p.Join(room=name))
        except ProtocolError as exc:
            if exc.code in (Code.LIMIT_REACHED, Code.RATE_LIMITED):
                self.num(n.ERR_TOOMANYCHANNELS, "#" + name, exc.message)
            elif exc.code == Code.NO_SUCH_ROOM:
                self.num(n.ERR_NOSUCHCHANNEL, "#" + name, "No such channel")
            else:
                self.num(n.ERR_BADCHANNAME, "#" + name, exc.message)
            return
        assert isinstance(joined, p.Joined)
        room = joined.room
        user = self.session.user
        assert user is not None
        chan = render.channel(room)
        tags = {"time": render.server_time(datetime.now(UTC))} if self.has("server-time") else None
        if self.has("extended-join"):
            self.send("JOIN", chan, "*" if user.guest else user.name, self.realname or self.me,
                      source=self.source, tags=tags)
        else:
            self.send("JOIN", chan, source=self.source, tags=tags)
        if joined.topic:
            self.num(n.RPL_TOPIC, chan, joined.topic)
            self.num(n.RPL_TOPICWHOTIME, chan, joined.topic_by or render.SERVER_NAME,
                     str(int(joined.topic_ts.timestamp())) if joined.topic_ts else "0")
        self.names(room)
        if self.away is not None:
            for other in self.neighbours():
                if other.has("away-notify") and room in other.session.rooms:
                    other.outbox.send_line(format_line("AWAY", self.away, source=self.source))

    async def cmd_part(self, line: Line) -> None:
        if not self.need(line, 1):
            return
        reason = clean(line.param(1))[:200]
        for target in line.params[0].split(","):
            name = room_of(target)
            if name is None or not self.chat.has_room(name):
                self.num(n.ERR_NOSUCHCHANNEL, target[:64], "No such channel")
                continue
            room = self.chat.room(name).name
            if room not in self.session.rooms:
                self.num(n.ERR_NOTONCHANNEL, target, "You're not on that channel")
                continue
            await self.part(room, reason)

    async def part(self, room: str, reason: str) -> None:
        await self.request(p.Leave(room=room, reason=reason or None))
        params = [render.channel(room), reason] if reason else [render.channel(room)]
        self.send("PART", *params, source=self.source)

    async def cmd_topic(self, line: Line) -> None:
        if not self.need(line, 1):
            return
        name = room_of(line.params[0])
        room = self.chat.room_here(name) if name else None
        if room is None:
            self.num(n.ERR_NOSUCHCHANNEL, line.params[0][:64], "No such channel")
            return
        chan = render.channel(room.name)
        if len(line.params) < 2:
            if room.topic:
                self.num(n.RPL_TOPIC, chan, room.topic)
                self.num(n.RPL_TOPICWHOTIME, chan, room.topic_by or render.SERVER_NAME, str(int(room.topic_ts or 0)))
            else:
                self.num(n.RPL_NOTOPIC, chan, "No topic is set")
            return
        if room.name not in self.session.rooms:
            self.num(n.ERR_NOTONCHANNEL, chan, "You're not on that channel")
            return
        text = clean(line.params[1])[:390]
        try:
            await self.request(p.Topic(room=room.name, text=text))
        except ProtocolError as exc:
            if exc.code == Code.FORBIDDEN:
                self.num(n.ERR_CHANOPRIVSNEEDED, chan, "You're not channel operator")
                return
            raise
        self.send("TOPIC", chan, text, source=self.source)

    def names(self, room_name: str) -> None:
        room = self.chat.room_here(room_name)
        chan = render.channel(room.name if room else room_name)
        if room is not None:
            entries = []
            for s in self.members(room.name):
                nick = self.nick_of(s)
                if self.has("userhost-in-names"):
                    nick = render.prefix(nick, self.client_info(s)[0])
                entries.append(("@" if self.is_op(s, room.name) else "") + nick)
            # 353 lines stay under the 512-byte limit: a few dozen names each.
            for i in range(0, len(entries), 20):
                self.num(n.RPL_NAMREPLY, "=", chan, " ".join(entries[i:i + 20]))
        self.num(n.RPL_ENDOFNAMES, chan, "End of /NAMES list")

    async def cmd_names(self, line: Line) -> None:
        if not line.params:
            self.num(n.RPL_ENDOFNAMES, "*", "End of /NAMES list")
            return
        for target in line.params[0].split(","):
            name = room_of(target)
            if name is None or not self.chat.has_room(name):
                self.num(n.RPL_ENDOFNAMES, target[:64], "End of /NAMES list")
                continue
            self.names(name)

    async def cmd_list(self, line: Line) -> None:
        wanted = None
        if line.params and line.params[0].startswith("#"):
            wanted = {t.lower() for t in line.params[0].split(",")}
        self.num(n.RPL_LISTSTART, "Channel", "Users  Name")
        for room in sorted(self.chat.rooms_here(), key=lambda r: r.key):
            chan = render.channel(room.name)
            if wanted is not None and chan.lower() not in wanted:
                continue
            self.num(n.RPL_LIST, chan, str(len(self.members(room.name))), room.topic or "")
        self.num(n.RPL_LISTEND, "End of /LIST")

    async def cmd_mode(self, line: Line) -> None:
        if not self.need(line, 1):
            return
        target = line.params[0]
        if target.startswith("#"):
            await self.channel_mode(target, line.params[1:])
            return
        if target.lower() != self.me.lower():
            if self.find(target) is None:
                self.num(n.ERR_NOSUCHNICK, target[:64], "No such nick/channel")
            else:
                self.num(n.ERR_USERSDONTMATCH, "Can't change mode for other users")
            return
        if len(line.params) < 2:
            self.num(n.RPL_UMODEIS, self.user_modes())
            return
        await self.set_user_modes(line.params[1])

    def user_modes(self) -> str:
        user = self.session.user
        return "+" + ("i" if self.invisible else "") + ("o" if self.oper else "") + \
            ("B" if user is not None and user.is_bot else "")

    async def set_user_modes(self, spec: str) -> None:
        adding = True
        changed: list[str] = []
        unknown = False
        for c in spec:
            if c in "+-":
                adding = c == "+"
            elif c == "i":
                if self.invisible != adding:
                    self.invisible = adding
                    changed.append(("+" if adding else "-") + c)
            elif c == "B":
                user = self.session.user
                if user is not None and user.is_bot != adding:
                    self.session.user = dataclasses.replace(user, is_bot=adding)
                    changed.append(("+" if adding else "-") + c)
            elif c == "o":
                if not adding and self.oper:
                    self.oper = False
                    changed.append("-o")
            else:
                unknown = True
        if unknown:
            self.num(n.ERR_UMODEUNKNOWNFLAG, "Unknown MODE flag")
        if changed:
            self.send("MODE", self.me, _join_modes(changed), source=self.source)

    async def channel_mode(self, target: str, args: list[str]) -> None:
        name = room_of(target)
        room = self.chat.room_here(name) if name else None
        if room is None:
            self.num(n.ERR_NOSUCHCHANNEL, target[:64], "No such channel")
            return
        chan = render.channel(room.name)
        if not args:
            self.num(n.RPL_CHANNELMODEIS, chan, CHANNEL_MODES)
            # Rooms do not record when they were made: the server's start is the same for every reader.
            self.num(n.RPL_CREATIONTIME, chan, str(int(self.chat.started_at.timestamp())))
            return
        spec = args[0]
        if spec.lstrip("+") in ("b", "e", "I") and len(args) == 1:
            self.num(n.RPL_ENDOFBANLIST, chan, "End of channel ban list")
            return
        if not self.is_op(self.session, room.name):
            self.num(n.ERR_CHANOPRIVSNEEDED, chan, "You're not channel operator")
            return
        for c in spec:
            if c not in "+-nt":
                self.num(n.ERR_UNKNOWNMODE, c, "is an unknown mode char to me")
                return

    # --- messages -------------------------------------------------------------------------------

    async def cmd_privmsg(self, line: Line) -> None:
        await self.message(line, notice=False)

    async def cmd_notice(self, line: Line) -> None:
        await self.message(line, notice=True)

    async def message(self, line: Line, *, notice: bool) -> None:
        if not line.params or not line.params[0]:
            if not notice:
                self.num(n.ERR_NORECIPIENT, f"No recipient given ({line.command})")
            return
        if len(line.params) < 2 or not line.params[1]:
            if not notice:
                self.num(n.ERR_NOTEXTTOSEND, "No text to send")
            return
        text = line.params[1]
        # What cannot be relayed in one line (":source COMMAND target :text" and CR LF), with this sender's
        # prefix, is refused rather than cut. (Short texts fit whatever the prefix: not worth counting.)
        fixed = 0 if len(text) < 64 else len(self.source.encode()) + len(line.command) + len(text.encode()) + 6
        for target in line.params[0].split(",")[:MAX_TARGETS]:
            if fixed and fixed + len(target.encode()) > MAX_LINE:
                self.num(n.ERR_INPUTTOOLONG, "Message too long to relay in one line")
                continue
            if target.startswith("#"):
                await self.to_room(target, text, notice, line)
            else:
                await self.to_nick(target, text, notice, line)

    async def to_room(self, target: str, text: str, notice: bool, line: Line) -> None:
        # Only valid names are rooms, so looking the name up is checking it too.
        room = self.chat.room_here(target[1:])
        if room is None:
            if not notice:
                self.num(n.ERR_NOSUCHCHANNEL, target[:64], "No such channel")
            return
        if room.name not in self.session.rooms:
            if not notice:
                self.num(n.ERR_CANNOTSENDTOCHAN, render.channel(room.name), "Cannot send to channel")
            return
        # Only the fields that are set: validating a None costs as much as a value.
        fields: dict[str, object] = {"text": text}
        if not notice and (action := render.action_text(text)):  # (an empty one stays as it came)
            # /me: an action, as every other transport has it ("* carol waves"), not CTCP bytes in a text
            fields["text"], fields["action"] = action, True
        if room.name != self.session.current_room:  # else the request's room is the current one
            fields["room"] = room.name
        if notice:
            fields["notice"] = True
        if line.tags and (tags := client_tags(line)):
            fields["tags"] = tags
        request = p.Message.model_validate(fields)
        if self.label is not None:
            # The answer comes with the commit (IrcOutbox.acknowledge), not now.
            self.outbox.labels[id(request)] = self.label
            self.label = None
        try:
            await self.chat.handle(self.session, request)
        except ProtocolError as exc:
            self.outbox.labels.pop(id(request), None)
            if exc.code == Code.TOO_LONG:
                self.num(n.ERR_INPUTTOOLONG, "Message too long")
            elif not notice:
                self.num(n.ERR_CANNOTSENDTOCHAN, render.channel(room.name), exc.message)

    async def to_nick(self, target: str, text: str, notice: bool, line: Line) -> None:
        session = self.find(target)
        # On another node of a cluster, people are known by their account names.
        remote = session is None and bool(self.chat.elsewhere.sessions_of(target.lower()))
        if not remote and (session is None or session.user is None):
            if not notice:
                self.num(n.ERR_NOSUCHNICK, target[:64], "No such nick/channel")
            return
        to = session.user.name if session is not None and session.user is not None else target
        other = self.registry.of(session) if session is not None else None
        self.outbox.own_private = None
        try:
            await self.request(p.Msg(to=to, text=text, notice=notice or None, tags=client_tags(line)))
        except ProtocolError as exc:
            if not notice:
                if exc.code in (Code.NO_SUCH_USER, Code.USER_OFFLINE):
                    self.num(n.ERR_NOSUCHNICK, target[:64], "No such nick/channel")
                elif exc.code == Code.TOO_LONG:
                    self.num(n.ERR_INPUTTOOLONG, "Message too long")
                else:
                    raise
            return
        own, self.outbox.own_private = self.outbox.own_private, None
        if self.has("echo-message") and own is not None:
            shown = self.nick_of(session) if session is not None else own.event.to
            self.send_raw(render.event_line(own.event, self.outbox.flags, self.source, to=shown))
        if not notice and other is not None and other.away is not None and session is not None:
            self.num(n.RPL_AWAY, self.nick_of(session), other.away)

    # --- queries --------------------------------------------------------------------------------

    async def cmd_who(self, line: Line) -> None:
        mask = line.param(0, "*") or "*"
        whox = parse_whox(line.param(1)) if len(line.params) > 1 else None
        name = room_of(mask)
        if name is not None and self.chat.has_room(name):
            room = self.chat.room(name)
            chan = render.channel(room.name)
            for s in self.members(room.name):
                self.who_reply(chan, s, whox)
        elif not mask.startswith("#"):
            pattern = mask.lower()
            mine = set(self.session.rooms)
            seen: set[str] = set()
            for s in self.chat.signed_in_sessions():
                nick = self.nick_of(s)
                if nick.lower() in seen:
                    continue
                other = self.registry.of(s)
                if other is not None and other is not self and other.invisible and not mine & set(s.rooms) \
                        and nick.lower() != pattern:
                    continue  # +i: seen only by those who share a room
                ident, realname, _away = self.client_info(s)
                if any(fnmatch.fnmatchcase(field.lower(), pattern) for field in (nick, ident, realname)):
                    seen.add(nick.lower())
                    self.who_reply("*", s, whox)
        self.num(n.RPL_ENDOFWHO, mask, "End of WHO list")

    def who_reply(self, chan: str, session: Session, whox: tuple[str, str] | None = None) -> None:
        """A 352 line, or with WHOX (``whox`` is the fields asked for and the token) a 354 line."""
        ident, realname, away = self.client_info(session)
        user = session.user
        flags = ("G" if away else "H") + ("*" if user is not None and user.is_admin else "") + \
            ("B" if user is not None and user.is_bot else "")
        if chan != "*" and self.is_op(session, chan[1:]):
            flags += "@"
        nick = self.nick_of(session)
        if whox is None:
            self.num(n.RPL_WHOREPLY, chan, ident, render.HOST, "*", nick, flags, f"0 {realname}")
            return
        fields, token = whox
        other = self.registry.of(session)
        idle = int(time.time() - other.last_active) if other is not None else 0
        values = {
            "t": token, "c": chan, "u": ident,
            "i": "255.255.255.255",  # addresses are never shown (every host is the server's)
            "h": render.HOST, "s": render.SERVER_NAME, "n": nick, "f": flags, "d": "0", "l": str(max(idle, 0)),
            "a": user.name if user is not None and not user.guest else "0",
            "o": "n/a", "r": realname,
        }
        # The order of the reply is the specification's, whatever the order asked for.
        params = [values[c] for c in WHOX_FIELDS if c in fields]
        if params:
            self.num(n.RPL_WHOSPCRPL, *params)

    async def cmd_whois(self, line: Line) -> None:
        if not self.need(line, 1):
            return
        target = line.params[-1]
        session = self.find(target)
        if session is None or session.user is None:
            self.num(n.ERR_NOSUCHNICK, target[:64], "No such nick/channel")
            self.num(n.RPL_ENDOFWHOIS, target[:64], "End of /WHOIS list")
            return
        nick = self.nick_of(session)
        ident, realname, away = self.client_info(session)
        user = session.user
        self.num(n.RPL_WHOISUSER, nick, ident, render.HOST, "*", realname)
        if session.rooms:
            chans = [("@" if self.is_op(session, r) else "") + render.channel(r) for r in session.rooms]
            self.num(n.RPL_WHOISCHANNELS, nick, " ".join(chans))
        self.num(n.RPL_WHOISSERVER, nick, render.SERVER_NAME, "UtuVox")
        if away:
            self.num(n.RPL_AWAY, nick, away)
        if user.is_admin:
            self.num(n.RPL_WHOISOPERATOR, nick, "is an IRC operator")
        if not user.guest:
            self.num(n.RPL_WHOISACCOUNT, nick, user.name, "is logged in as")
        if user.is_bot:
            self.num(n.RPL_WHOISBOT, nick, "is a bot")
        self.num(n.RPL_ENDOFWHOIS, nick, "End of /WHOIS list")

    async def cmd_away(self, line: Line) -> None:
        text = clean(line.param(0))[:200]
        self.away = text or None
        if text:
            self.num(n.RPL_NOWAWAY, "You have been marked as being away")
        else:
            self.num(n.RPL_UNAWAY, "You are no longer marked as being away")
        params = [text] if text else []
        for other in self.neighbours():
            if other.has("away-notify"):
                other.outbox.send_line(format_line("AWAY", *params, source=self.source))

    async def cmd_ison(self, line: Line) -> None:
        nicks = " ".join(line.params).split()
        self.num(n.RPL_ISON, " ".join(x for x in nicks if self.find(x) is not None))

    async def cmd_userhost(self, line: Line) -> None:
        if not self.need(line, 1):
            return
        replies = []
        for nick in line.params[:5]:
            session = self.find(nick)
            if session is None:
                continue
            ident, _realname, away = self.client_info(session)
            oper = "*" if session.user is not None and session.user.is_admin else ""
            replies.append(f"{self.nick_of(session)}{oper}={'-' if away else '+'}{ident}@{render.HOST}")
        self.num(n.RPL_USERHOST, " ".join(replies))

    # --- operators ------------------------------------------------------------------------------

    async def cmd_oper(self, line: Line) -> None:
        if not self.need(line, 2):
            return
        name, password = line.params[0], line.params[1]
        limits = self.chat.limits
        limits.check_login(self.session, name if is_valid_name(name) else None)
        account = await self.chat.store.get_user(name) if is_valid_name(name) else None
        ok = await self.chat.passwords.verify(account.password_hash if account else None, password)
        if not ok or account is None or not account.is_admin or account.banned:
            limits.login_failed(self.session, name if is_valid_name(name) else None)
            self.num(n.ERR_PASSWDMISMATCH, "Password incorrect")
            return
        user = self.session.user
        assert user is not None
        # The operator's credentials give this connection an admin's rights, under its own name.
        self.session.user = dataclasses.replace(user, is_admin=True)
        self.oper = True
        log.info("OPER %s by %s from %s", account.name, user.name, self.session.address)
        await self.chat.store.add_admin_log(actor=user.name, via="irc", action="oper", target=account.name,
                                            outcome="ok", detail=None)
        self.num(n.RPL_YOUREOPER, "You are now an IRC operator")
        self.send("MODE", self.me, "+o", source=self.source)

    def require_oper(self) -> bool:
        if not self.session.is_operator:
            self.num(n.ERR_NOPRIVILEGES, "Permission Denied- You're not an IRC operator")
            return False
        return True

    async def cmd_kill(self, line: Line) -> None:
        if not self.need(line, 1) or not self.require_oper():
            return
        target = line.params[0]
        session = self.find(target)
        if session is None:
            self.num(n.ERR_NOSUCHNICK, target[:64], "No such nick/channel")
            return
        reason = clean(line.param(1))[:200] or None
        await self.request(a.Kick(session=session.id, reason=reason))

    async def cmd_kline(self, line: Line) -> None:
        if not self.need(line, 1) or not self.require_oper():
            return
        params = list(line.params)
        if params[0].isdigit() and len(params) > 1:
            params.pop(0)  # a duration: bans here last until UNKLINE
        target = params[0].split("@")[0].lstrip("~")
        session = self.find(target)
        account = session.user.name if session is not None and session.user is not None \
            and not session.user.guest else target
        reason = clean(params[1])[:200] if len(params) > 1 else None
        if not is_valid_name(account) or await self.chat.store.get_user(account) is None:
            self.send("NOTICE", self.me, f"KLINE: no account {account}: a guest cannot be banned, KILL ends it")
            return
        await self.request(a.BanUser(username=account, reason=reason or None))
        self.send("NOTICE", self.me, f"KLINE: account {account} is banned")

    async def cmd_unkline(self, line: Line) -> None:
        if not self.need(line, 1) or not self.require_oper():
            return
        account = line.params[0].split("@")[0].lstrip("~")
        if is_valid_name(account):
            await self.request(a.UnbanUser(username=account))
            self.send("NOTICE", self.me, f"UNKLINE: account {account} is no longer banned")

    async def cmd_tagmsg(self, line: Line) -> None:
        """Tags only (a typing notice, a reaction): passed on to those who asked for message-tags, never
        stored."""
        if not self.need(line, 1):
            return
        tags = client_tags(line)
        target = line.params[0]
        if target.startswith("#"):
            name = room_of(target)
            room = self.chat.room_here(name) if name else None
            if room is None or room.name not in self.session.rooms:
                self.num(n.ERR_CANNOTSENDTOCHAN if room else n.ERR_NOSUCHCHANNEL, target[:64], "Cannot send")
                return
            receivers = [s for s in self.chat.members(room.key) if s is not self.session]
            target = render.channel(room.name)
        else:
            session = self.find(target)
            if session is None or session.user is None:
                self.num(n.ERR_NOSUCHNICK, target[:64], "No such nick/channel")
                return
            receivers = [s for s in self.chat.sessions_of(session.user.name) if s is not self.session]
            target = self.nick_of(session)
        mid = f"~x:{time.time_ns() // 1000}"
        now = render.server_time(datetime.now(UTC))
        for s in receivers:
            other = self.registry.of(s)
            if other is not None and other.has("message-tags"):
                extra = {"time": now} if other.has("server-time") else {}
                other.outbox.send_line(format_line("TAGMSG", target, source=self.source,
                                                   tags={**extra, "msgid": mid, **(tags or {})}))
        if self.has("echo-message"):
            extra = {"time": now} if self.has("server-time") else {}
            self.send("TAGMSG", target, source=self.source, tags={**extra, "msgid": mid, **(tags or {})})

    async def cmd_chathistory(self, line: Line) -> None:
        from .history import chathistory  # the CHATHISTORY command has a module of its own

        await chathistory(self, line)

    async def cmd_whowas(self, line: Line) -> None:
        if not line.params or not line.params[0]:
            self.num(n.ERR_NEEDMOREPARAMS, "WHOWAS", "Not enough parameters")
            return
        target = line.params[0]
        count = int(line.params[1]) if len(line.params) > 1 and line.params[1].lstrip("-").isdigit() else 0
        pattern = target.lower()
        found = [g for g in reversed(self.registry.gone) if fnmatch.fnmatchcase(g[0].lower(), pattern)]
        if count > 0:
            found = found[:count]
        if not found:
            self.num(n.ERR_WASNOSUCHNICK, target[:64], "There was no such nickname")
        for nick, ident, realname in found:
            self.num(n.RPL_WHOWASUSER, nick, ident, render.HOST, "*", realname)
            self.num(n.RPL_WHOISSERVER, nick, render.SERVER_NAME, "UtuVox")
        self.num(n.RPL_ENDOFWHOWAS, target[:64], "End of WHOWAS")

    async def cmd_time(self, line: Line) -> None:
        now = datetime.now(UTC)
        self.num(n.RPL_TIME, render.SERVER_NAME, str(int(now.timestamp())), "0",
                 now.strftime("%A %B %d %Y -- %H:%M:%S +00:00"))

    async def cmd_info(self, line: Line) -> None:
        for text in (f"{VERSION}: a chat server with rooms, accounts, bots and files.",
                     "IRC, text mode, JSON over TCP and WebSocket, all in the same rooms."):
            self.num(n.RPL_INFO, text)
        self.num(n.RPL_ENDOFINFO, "End of INFO list")

    async def cmd_version(self, line: Line) -> None:
        self.num("351", VERSION, render.SERVER_NAME, "UtuVox")
        tokens = isupport_tokens(self.chat)
        for i in range(0, len(tokens), 12):
            self.num(n.RPL_ISUPPORT, *tokens[i:i + 12], "are supported by this server")


WHOX_FIELDS = "tcuihsnfdlaor"


def parse_whox(arg: str) -> tuple[str, str] | None:
    """The fields and the token of a WHOX request (``[flags]%fields[,token]``); None for a plain WHO."""
    _flags, percent, rest = arg.partition("%")
    if not percent:
        return None
    fields, _, token = rest.partition(",")
    fields = "".join(c for c in fields if c in WHOX_FIELDS)
    if "t" in fields and not (token.isdigit() and len(token) <= 3):
        token = token[:3] if token[:3].isdigit() else "0"  # the token is at most three digits
    return fields, token


def client_tags(line: Line) -> dict[str, str] | None:
    tags = {k: v for k, v in line.tags.items() if k.startswith("+") and len(k) > 1}
    return tags or None


def isupport_tokens(chat: Chat) -> list[str]:
    return ["AWAYLEN=200", "BOT=B", "CASEMAPPING=ascii", "CHANLIMIT=#:100", "CHANMODES=b,,,nt",
            "CHANNELLEN=33", "CHANTYPES=#", "CHATHISTORY=100", "MSGREFTYPES=msgid,timestamp", "KICKLEN=200",
            f"MAXTARGETS={MAX_TARGETS}", "MODES=4", "NETWORK=UtuVox", f"NICKLEN={NICKLEN}", "PREFIX=(ov)@+",
            f"TARGMAX=PRIVMSG:{MAX_TARGETS},NOTICE:{MAX_TARGETS},JOIN:,PART:,NAMES:1,WHOIS:1",
            "TOPICLEN=390", "USERLEN=10", "UTF8ONLY", "WHOX"]


def _tag(line: str, tags: dict[str, str]) -> str:
    """Add tags to a formatted line."""
    extra = ";".join(f"{k}={escape_tag(v)}" for k, v in tags.items())
    if line.startswith("@"):
        return "@" + extra + ";" + line[1:]
    return "@" + extra + " " + line


def _join_modes(changes: list[str]) -> str:
    out, sign = "", ""
    for change in changes:
        if change[0] != sign:
            sign = change[0]
            out += sign
        out += change[1:]
    return out


Command = Callable[[IrcClient, Line], Awaitable[None]]
COMMANDS: dict[str, Command] = {
    name[4:].upper(): func for name, func in vars(IrcClient).items() if name.startswith("cmd_")
}

