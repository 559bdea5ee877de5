"""Rate limits, caps and the login throttle. Rules, not sockets.

Rates are token buckets: a bucket holds up to ``burst`` tokens, gains ``per_second`` of them each second,
and every request, message, join or login attempt takes one. A session has its own buckets, and so does
each user across all of their sessions (so opening more connections buys no more rate). An empty bucket
means the client is told ``rate_limited`` with the seconds after which a retry will succeed
(``retry_after``); a client that keeps going regardless runs out of patience (``strikes``: requests made
before the end of a wait it was told of, tolerated up to a number that grows back by one per second) and
is disconnected. A client that waits as told is never disconnected, however often it is refused.

Requests and messages sit on the hot path (~10^5 a second through one connection), so they are not taken
from the buckets one by one: a :class:`Meter` takes a few tokens at once (an eighth of the burst, at most
64) and then lets that many frames through with one integer decrement each; the clock is read and floats
computed only when that credit runs out. The rates hold exactly over time; a burst may overshoot by one
chunk.

Failed logins are throttled per account and per address with a delay that doubles after each failure
beyond a few free ones, up to a cap, so that guessing is slow but a real user is never locked out for
long. An address from which the account logged in successfully before is exempt from the per-account
delay: someone hammering an account from elsewhere cannot lock its owner out.
"""

from __future__ import annotations

import ipaddress
import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

from pydantic import Field
from pydantic.dataclasses import dataclass

from utuvox.protocol import Code, ProtocolError
from utuvox.protocol.units import byte_size as text_size

from .clock import Clock
from .section import NOT_A_SETTING, Env, Section
from .session import Identity, Session

if TYPE_CHECKING:
    pass

log = logging.getLogger("utuvox.limits")


# --- token buckets --------------------------------------------------------------------------------


class TokenBucket:
    """``burst`` tokens at most, refilled at ``rate`` per second. Starts full."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def take(self, now: float) -> float:
        """Take one token: ``0.0`` if there was one, else the seconds until there will be (nothing taken)."""
        tokens = self.tokens + (now - self.stamp) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        self.stamp = now
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return 0.0
        self.tokens = tokens
        return (1.0 - tokens) / self.rate

    def take_up_to(self, now: float, n: int) -> int:
        """Take as many whole tokens as there are, up to ``n``; returns how many were taken."""
        tokens = self.tokens + (now - self.stamp) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        self.stamp = now
        got = min(n, int(tokens))
        self.tokens = tokens - got
        return got

    def wait(self, now: float) -> float:
        """Seconds until one token is there (0.0: now)."""
        missing = 1.0 - (self.tokens + (now - self.stamp) * self.rate)
        return missing / self.rate if missing > 0 else 0.0

    def full(self, now: float) -> bool:
        """Whether the bucket would be full by ``now`` (its owner has been quiet long enough to forget)."""
        return self.tokens + (now - self.stamp) * self.rate >= self.burst


@dataclass(frozen=True)
class Rate:
    """A steady rate per second and the burst allowed above it; a setting, not a bucket."""

    per_second: Annotated[float, Field(gt=0)]
    burst: Annotated[float, Field(ge=1)]

    def bucket(self, now: float) -> TokenBucket:
        return TokenBucket(self.per_second, self.burst, now)

    @property
    def chunk(self) -> int:
        return chunk_of(self.burst)


def chunk_of(burst: float) -> int:
    """Tokens a :class:`Meter` takes at once: small against the burst, so the burst barely moves."""
    return max(1, min(64, int(burst // 8)))


class Meter:
    """The hot-path check of one kind (requests, messages) for one session: its own bucket, and its
    user's once logged in, read in chunks of credit."""

    __slots__ = ("chunk", "left", "now", "refills", "session", "user")

    def __init__(self, session: TokenBucket, chunk: int, now: Callable[[], float]) -> None:
        self.session = session
        self.now = now  # the clock, read only when the credit runs out
        self.user: TokenBucket | None = None
        self.chunk = chunk
        self.left = 0  # frames still allowed from the last chunk
        self.refills = 0  # how often the credit ran out: with ``left``, shows that frames went through

    def attach(self, user: TokenBucket) -> None:
        """Count against ``user``'s bucket too, in chunks no larger than it allows: one session must not
        hold the credit its user's other sessions need."""
        self.user = user
        self.chunk = min(self.chunk, chunk_of(user.burst))

    def take(self) -> float:
        """0.0 if one more is allowed, else the seconds until it will be."""
        left = self.left - 1
        if left >= 0:
            self.left = left
            return 0.0
        return self._refill()

    def _refill(self) -> float:
        self.refills += 1
        now = self.now()
        got = self.session.take_up_to(now, self.chunk)
        user = self.user
        if got and user is not None:
            granted = user.take_up_to(now, got)
            self.session.tokens += got - granted  # what the user's bucket could not match goes back
            got = granted
        if got:
            self.left = got - 1
            return 0.0
        self.left = 0
        return max(self.session.wait(now), user.wait(now) if user is not None else 0.0)


# The defaults suit a server open to the internet, as IRC servers ship theirs: a person sends a few
# messages a second with a burst, a bot account (``is_bot``, which an admin can grant) ten times that.
# Benchmarks and tests that push 10^5 messages a second through one connection set their own.


class LimitsConfig(Section):
    """Rates, caps and the login throttle."""

    session_requests: Rate = Field(default=Rate(50, 200), description="requests one connection may make")
    user_requests: Rate = Field(default=Rate(100, 400), description="requests of one user, all connections")
    session_messages: Rate = Field(default=Rate(5, 20), description="messages one connection may send")
    user_messages: Rate = Field(default=Rate(10, 40), description="messages of one user, all connections")
    session_joins: Rate = Field(default=Rate(1, 20), description="rooms one connection may join")
    user_joins: Rate = Field(default=Rate(2, 40), description="rooms one user may join, all connections")
    session_logins: Rate = Field(default=Rate(0.2, 5),
                                 description="login, register and changepassword attempts of one connection")
    user_logins: Rate = Field(default=Rate(1, 10), description="login attempts on one account, from anywhere")
    # Bot accounts: these replace the request and message rates above, per connection and per user.
    bot_requests: Rate = Field(default=Rate(500, 2000),
                               description="requests of a bot account (per connection and per user)")
    bot_messages: Rate = Field(default=Rate(50, 200), description="messages of a bot account")
    user_creates: Rate = Field(default=Rate(0.1, 10), description="rooms one user may create")
    strikes: Annotated[int, Env("rate_limit_strikes")] = Field(
        default=20, ge=1, description="requests sent while told to wait, before a disconnect (one more is tolerated "
                                      "each second)")
    # failed logins: a delay doubling from login_delay_base up to login_delay_max after the free failures
    login_free_failures: int = Field(default=5, ge=0, description="failed logins on one account before delays start")
    address_free_failures: int = Field(default=20, ge=0,
                                       description="failed logins from one address, over all accounts, before delays "
                                                   "start")
    login_delay_base: float = Field(default=1.0, gt=0,
                                    description="the first delay after the free failures; it doubles with each "
                                                "further failure")
    login_delay_max: float = Field(default=30.0, gt=0, description="the longest delay a run of failed logins earns")
    login_failure_window: float = Field(default=900.0, gt=0, description="seconds after which failures are forgotten")
    # caps
    max_rooms_per_user: int = Field(default=100, ge=1, description="rooms one user is in at once, all connections")
    max_rooms_created_per_user: int = Field(default=50, ge=0,
                                            description="rooms that exist and were created by one user (admins: no "
                                                        "cap)")
    max_room_members: int = Field(default=20_000, ge=1, description="connections in one room")
    max_sessions_per_user: int = Field(default=10, ge=1, description="connections logged in as one user")
    max_upload_bytes_per_day: int = Field(default=10 * 1024**3, ge=0,
                                          description="bytes one user may upload per UTC day")
    max_tracked: Annotated[int, NOT_A_SETTING] = Field(default=100_000, ge=1,
                                                       description="accounts and addresses remembered by the throttle "
                                                                   "and the user buckets")


def address_key(address: str) -> str:
    """The part of a session's address (``host:port``) that limits apply to: the IP without the port,
    and for IPv6 its /64, since one subscriber usually holds a whole /64."""
    host = address.rsplit(":", 1)[0].strip("[]") if ":" in address else address
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        if ip.is_loopback:
            return str(ip)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


# --- per-session and per-user state ---------------------------------------------------------------


class UserLimiter:
    """The buckets one user shares across all of their sessions."""

    __slots__ = ("bot", "creates", "joins", "logins", "messages", "requests")

    def __init__(self, cfg: LimitsConfig, now: float) -> None:
        self.requests = cfg.user_requests.bucket(now)
        self.messages = cfg.user_messages.bucket(now)
        self.joins = cfg.user_joins.bucket(now)
        self.logins = cfg.user_logins.bucket(now)
        self.creates = cfg.user_creates.bucket(now)
        self.bot = False

    def make_bot(self, cfg: LimitsConfig, now: float) -> None:
        """A bot account: the request and message rates of bots."""
        if not self.bot:
            self.bot = True
            self.requests = cfg.bot_requests.bucket(now)
            self.messages = cfg.bot_messages.bucket(now)

    def idle(self, now: float) -> bool:
        return all(b.full(now) for b in (self.requests, self.messages, self.joins, self.logins, self.creates))


class SessionLimiter:
    """One session's buckets, and its user's once it has logged in."""

    __slots__ = ("clock", "hold_until", "joins", "logins", "messages", "requests", "strikes", "user")

    def __init__(self, cfg: LimitsConfig, clock: Callable[[], float]) -> None:
        now = clock()
        self.clock = clock
        self.requests = Meter(cfg.session_requests.bucket(now), cfg.session_requests.chunk, clock)
        self.messages = Meter(cfg.session_messages.bucket(now), cfg.session_messages.chunk, clock)
        self.joins = cfg.session_joins.bucket(now)
        self.logins = cfg.session_logins.bucket(now)
        self.strikes = TokenBucket(1.0, max(1, cfg.strikes), now)
        self.hold_until = 0.0  # the end of the last wait the client was told to make
        self.user: UserLimiter | None = None

    def sign_in(self, user: UserLimiter, cfg: LimitsConfig, now: float) -> None:
        if user.bot:
            self.requests = Meter(cfg.bot_requests.bucket(now), cfg.bot_requests.chunk, self.clock)
            self.messages = Meter(cfg.bot_messages.bucket(now), cfg.bot_messages.chunk, self.clock)
        self.user = user
        self.requests.attach(user.requests)
        self.messages.attach(user.messages)

    def strike(self, now: float, wait: float) -> bool:
        """A request was refused, the client told to wait ``wait`` seconds. True once it has too often
        come back before the end of a wait it was told to make: a client that waits is never struck."""
        ignored = now < self.hold_until
        self.hold_until = now + wait
        return ignored and self.strikes.take(now) > 0.0


def _seconds(wait: float) -> float:
    """``retry_after`` on the wire: milliseconds, rounded up, so that waiting exactly that long is enough."""
    return math.ceil(wait * 1000) / 1000


# --- failed logins --------------------------------------------------------------------------------


class _Failures:
    __slots__ = ("count", "last", "until")

    def __init__(self) -> None:
        self.count = 0
        self.last = 0.0
        self.until = 0.0  # no attempt before this time


class LoginThrottle:
    """Exponential delays after failed logins, per account and per address."""

    def __init__(self, cfg: LimitsConfig) -> None:
        self.cfg = cfg
        self.accounts: dict[str, _Failures] = {}
        self.addresses: dict[str, _Failures] = {}
        # account -> addresses it logged in from successfully (a few, newest last)
        self.trusted: dict[str, dict[str, None]] = {}

    def delay(self, failures: int, free: int) -> float:
        if failures <= free:
            return 0.0
        return min(self.cfg.login_delay_max, self.cfg.login_delay_base * 2.0 ** min(failures - free - 1, 32))

    def wait(self, account: str | None, address: str, now: float) -> float:
        """Seconds before an attempt on ``account`` from ``address`` may be made (0.0: now)."""
        wait = 0.0
        record = self.addresses.get(address)
        if record is not None:
            wait = record.until - now
        if account is not None and address not in self.trusted.get(account, ()):
            record = self.accounts.get(account)
            if record is not None:
                wait = max(wait, record.until - now)
        return max(wait, 0.0)

    def _bump(self, table: dict[str, _Failures], key: str, free: int, now: float) -> None:
        record = table.pop(key, None)  # re-inserted: the dict stays ordered oldest first
        if record is None or now - record.last > self.cfg.login_failure_window:
            record = _Failures()
        record.count += 1
        record.last = now
        record.until = now + self.delay(record.count, free)
        table[key] = record
        self._bound(table, now)

    def failed(self, account: str | None, address: str, now: float) -> None:
        self._bump(self.addresses, address, self.cfg.address_free_failures, now)
        if account is not None:
            self._bump(self.accounts, account, self.cfg.login_free_failures, now)

    def succeeded(self, account: str, address: str) -> None:
        """The right password: the account's failures are forgotten and the address is trusted for it.
        The address's own count stays, or one valid account would reset guessing at all the others."""
        self.accounts.pop(account, None)
        known = self.trusted.pop(account, {})
        known.pop(address, None)
        known[address] = None
        while len(known) > 8:
            del known[next(iter(known))]
        self.trusted[account] = known
        while len(self.trusted) > self.cfg.max_tracked:
            del self.trusted[next(iter(self.trusted))]

    def _bound(self, table: dict[str, _Failures], now: float) -> None:
        if len(table) <= self.cfg.max_tracked:
            return
        window = self.cfg.login_failure_window
        for key in [k for k, r in table.items() if now - r.last > window and r.until <= now]:
            del table[key]
        # Still too many: forget the oldest, down to nine tenths, so that the scan above stays rare.
        while len(table) > self.cfg.max_tracked * 9 // 10:
            del table[next(iter(table))]


# --- daily upload volume --------------------------------------------------------------------------


class UploadQuota:
    """Bytes each user stored by upload on the current UTC day (kept in memory: a restart forgets)."""

    def __init__(self, cfg: LimitsConfig, clock: Clock | None = None) -> None:
        self.cfg = cfg
        self.clock = clock or Clock()
        self.day = ""
        self.used: dict[str, int] = {}

    def _today(self) -> dict[str, int]:
        day = self.clock.wall().strftime("%Y-%m-%d")
        if day != self.day:
            self.day, self.used = day, {}
        return self.used

    def check(self, user: str, size: int, in_progress: int) -> None:
        limit = self.cfg.max_upload_bytes_per_day
        used = self._today().get(user, 0)
        if used + in_progress + size > limit:
            raise ProtocolError(Code.LIMIT_REACHED,
                                f"Upload limit reached: at most {text_size(limit)} per user per day; "
                                f"{text_size(used)} stored today"
                                + (f" and {text_size(in_progress)} in progress." if in_progress else "."))

    def add(self, user: str, size: int) -> None:
        used = self._today()
        used[user] = used.get(user, 0) + size


# --- the whole -------------------------------------------------------------------------------------


class Limits:
    """Every limit of the chat layer; :class:`~utuvox.chat.service.Chat` owns one (``chat.limits``)."""

    def __init__(self, cfg: LimitsConfig, clock: Clock | None = None) -> None:
        self.cfg = cfg
        self.clock = clock or Clock()
        self.sessions: dict[Session, SessionLimiter] = {}
        self.users: dict[str, UserLimiter] = {}
        self.throttle = LoginThrottle(cfg)
        self.uploads = UploadQuota(cfg, self.clock)
        self.rejected = 0  # requests refused for rate, for statistics
        self.flooders = 0  # sessions disconnected for ignoring rate_limited

    # --- sessions -------------------------------------------------------------------------------

    def open(self, session: Session) -> SessionLimiter | None:
        """The limiter of a new session; operators on the admin socket have none."""
        if session.transport == "admin":
            return None
        limiter = self.sessions[session] = SessionLimiter(self.cfg, self.clock.now)
        return limiter

    def close(self, session: Session) -> None:
        self.sessions.pop(session, None)

    def of(self, session: Session) -> SessionLimiter | None:
        """The session's limiter (``None`` on the admin socket, where nothing is limited)."""
        return self.sessions.get(session)

    def signed_in(self, session: Session, identity: Identity) -> None:
        limiter = self.sessions.get(session)
        if limiter is None:
            return
        now = self.clock.now()
        user = self._user(identity.key, now)
        if identity.is_bot:
            user.make_bot(self.cfg, now)
        limiter.sign_in(user, self.cfg, now)

    def _user(self, key: str, now: float) -> UserLimiter:
        """The buckets of the account ``key``, made on first use (a login attempt counts too, even for a
        name that does not exist: attempts are limited the same whether it does or not)."""
        user = self.users.get(key)
        if user is None:
            if len(self.users) >= self.cfg.max_tracked:
                self._forget_idle_users(now)
            user = self.users[key] = UserLimiter(self.cfg, now)
        return user

    def _forget_idle_users(self, now: float) -> None:
        # A user whose buckets are full again has nothing to remember; one still draining is kept, so
        # reconnecting does not refill them.
        active = {lim.user for lim in self.sessions.values()}
        for key in [k for k, u in self.users.items() if u not in active and u.idle(now)]:
            del self.users[key]
        # Still nearly full (a spray of made-up names): forget the oldest of the rest, a tenth at once, so
        # that this scan stays rare.
        excess = len(self.users) - self.cfg.max_tracked * 9 // 10
        if excess > 0:
            for key in [k for k, u in self.users.items() if u not in active][:excess]:
                del self.users[key]

    # --- refusing -------------------------------------------------------------------------------

    def refuse(self, session: Session, limiter: SessionLimiter, now: float, wait: float, what: str) -> ProtocolError:
        """The error for a request over its rate; disconnects a client that keeps ignoring them."""
        self.rejected += 1
        if limiter.strike(now, wait):
            self.flooders += 1
            who = session.user.name if session.user is not None else "anonymous"
            log.warning("disconnecting %s at %s: too many %s despite rate_limited", who, session.address, what)
            session.peer.close(f"Too many {what}, despite rate_limited errors.", Code.RATE_LIMITED)
        return ProtocolError(Code.RATE_LIMITED, f"Too many {what}; retry in {wait:.2f} s.",
                             retry_after=_seconds(wait))

    def check_message(self, session: Session) -> None:
        limiter = self.sessions.get(session)
        if limiter is None:
            return
        wait = limiter.messages.take()
        if wait:
            raise self.refuse(session, limiter, self.clock.now(), wait, "messages")

    def check_join(self, session: Session, joined_by_user: set[str], members: int) -> None:
        """Before ``session`` enters a room it is not in: the rate of joins, the rooms its user is in
        (``joined_by_user``: their names, over all the user's sessions) and the room's size."""
        limiter = self.sessions.get(session)
        if limiter is None:
            return
        cfg = self.cfg
        if len(joined_by_user) >= cfg.max_rooms_per_user:
            raise ProtocolError(Code.LIMIT_REACHED,
                                f"You are in {len(joined_by_user)} rooms, the most allowed; leave one first.")
        if members >= cfg.max_room_members:
            raise ProtocolError(Code.LIMIT_REACHED, f"That room is full ({cfg.max_room_members} connections).")
        now = self.clock.now()
        wait = limiter.joins.take(now)
        if not wait and limiter.user is not None:
            wait = limiter.user.joins.take(now)
        if wait:
            raise self.refuse(session, limiter, now, wait, "joins")

    def check_create(self, session: Session, created: int) -> None:
        """Before ``session`` creates a room: its user has ``created`` rooms that still exist."""
        limiter = self.sessions.get(session)
        if limiter is None or (session.user is not None and session.user.is_admin):
            return
        cap = self.cfg.max_rooms_created_per_user
        if created >= cap:
            raise ProtocolError(Code.LIMIT_REACHED, f"You have created {created} rooms, the most allowed.")
        if limiter.user is not None:
            now = self.clock.now()
            wait = limiter.user.creates.take(now)
            if wait:
                raise self.refuse(session, limiter, now, wait, "rooms created")

    def check_login(self, session: Session, account: str | None) -> None:
        """Before a password is checked (login, register, changepassword): this connection's attempts,
        the account's attempts, and the delays earned by earlier failures."""
        limiter = self.sessions.get(session)
        if limiter is None:
            return
        now = self.clock.now()
        key = account.lower() if account is not None else None
        wait = limiter.logins.take(now)
        if not wait and key is not None:
            wait = self._user(key, now).logins.take(now)
        if wait:
            raise self.refuse(session, limiter, now, wait, "login attempts")
        wait = self.throttle.wait(key, address_key(session.address), now)
        if wait:
            # Not a strike: waiting out a delay is what we ask of the client, and a second try soon after
            # a typo must not cost the connection.
            self.rejected += 1
            raise ProtocolError(Code.RATE_LIMITED, f"Too many failed attempts; retry in {wait:.1f} s.",
                                retry_after=_seconds(wait))

    def login_failed(self, session: Session, account: str | None) -> None:
        if session.transport != "admin":
            self.throttle.failed(account.lower() if account else None, address_key(session.address), self.clock.now())

    def login_succeeded(self, session: Session, account: str) -> None:
        if session.transport != "admin":
            self.throttle.succeeded(account.lower(), address_key(session.address))

    def check_sessions(self, user_sessions: int) -> None:
        if user_sessions >= self.cfg.max_sessions_per_user:
            raise ProtocolError(Code.LIMIT_REACHED, f"Too many connections logged in as this user "
                                                    f"({self.cfg.max_sessions_per_user}); close one first.")


# --- uploads ------------------------------------------------------------------------------------


UPLOAD_CHARGE_MIN = 4096  # bytes an upload counts against the daily volume at least: a file is never free


def charged(size: int) -> int:
    """What an upload of ``size`` bytes costs of the daily volume (an empty file still costs a row, a name
    in uploads/ and an event in the room)."""
    return max(size, UPLOAD_CHARGE_MIN)


__all__ = ["Limits", "LimitsConfig", "LoginThrottle", "Meter", "Rate", "SessionLimiter", "TokenBucket", "UploadQuota",
           "UserLimiter", "address_key", "charged"]
