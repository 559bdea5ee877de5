"""Rate limits, caps and the login throttle. Rules, not sockets.

Rates are token buckets: a bucket holds up to ``burst`` tokens, gains ``per_second`` of them each second,
and every request, message, join or login attempt takes one. A session has its own buckets, and so does
each user across all of their sessions (so opening more connections buys no more rate). An empty bucket
means the client is told ``rate_limited`` with the seconds after which a retry will succeed
(``retry_after``); a client that keeps going regardless runs out of patience (``strikes``: requests made
before the end of a wait it was told of, tolerated up to a number that grows back by one per second) and
is disconnected. A client that waits as told is never disconnected, however often it is refused.

The checks sit on the hot path of every request, so a bucket is a slotted object whose check is a few
float operations, with no allocation, and the clock is read once per frame by the caller.

Failed logins are throttled per account and per address with a delay that doubles after each failure
beyond a few free ones, up to a cap, so that guessing is slow but a real user is never locked out for
long. An address from which the account logged in successfully before is exempt from the per-account
delay: someone hammering an account from elsewhere cannot lock its owner out.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from utuvox.protocol import Code, ProtocolError, Reply

from .session import Identity, Session

if TYPE_CHECKING:
    from .service import Chat

monotonic = time.monotonic


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

    def full(self, now: float) -> bool:
        """Whether the bucket would be full by ``now`` (its owner has been quiet long enough to forget)."""
        return self.tokens + (now - self.stamp) * self.rate >= self.burst


@dataclass(frozen=True)
class Rate:
    per_second: float
    burst: float

    def __post_init__(self) -> None:
        if not (self.per_second > 0 and self.burst >= 1):
            raise ValueError("a rate needs per_second > 0 and burst >= 1")

    def bucket(self, now: float) -> TokenBucket:
        return TokenBucket(self.per_second, self.burst, now)


# The defaults are far above what a person or a well-behaved bot does, and above what the benchmarks
# push through one connection (a pipelining sender reaches ~10^5 messages/s): an operator facing the
# internet lowers them (docs/SECURITY.md lists values for that).
_FAST = Rate(200_000, 200_000)


@dataclass(frozen=True)
class LimitsConfig:
    session_requests: Rate = _FAST
    user_requests: Rate = _FAST
    session_messages: Rate = _FAST
    user_messages: Rate = _FAST
    session_joins: Rate = Rate(50, 200)
    user_joins: Rate = Rate(50, 200)
    session_logins: Rate = Rate(2, 10)  # login, register and changepassword attempts of one connection
    user_logins: Rate = Rate(20, 60)  # attempts on one account, from anywhere
    strikes: int = 50  # requests made during a wait the client was told of, tolerated (one more per second)
    # failed logins
    login_free_failures: int = 5  # per account, before delays start
    address_free_failures: int = 20  # per address, over all accounts
    login_delay_base: float = 1.0  # the first delay; it doubles with each further failure
    login_delay_max: float = 30.0
    login_failure_window: float = 900.0  # failures this old are forgotten
    # caps
    max_rooms_per_user: int = 100  # rooms one user is in at once, over all their sessions
    max_room_members: int = 20_000  # sessions in one room
    max_sessions_per_user: int = 100
    max_upload_bytes_per_day: int = 10 * 1024**3  # per user, per UTC day
    max_tracked: int = 100_000  # accounts and addresses remembered by the throttle and the user buckets


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

    __slots__ = ("joins", "logins", "messages", "requests")

    def __init__(self, cfg: LimitsConfig, now: float) -> None:
        self.requests = cfg.user_requests.bucket(now)
        self.messages = cfg.user_messages.bucket(now)
        self.joins = cfg.user_joins.bucket(now)
        self.logins = cfg.user_logins.bucket(now)

    def idle(self, now: float) -> bool:
        return all(b.full(now) for b in (self.requests, self.messages, self.joins, self.logins))


class SessionLimiter:
    """One session's buckets, and its user's once it has logged in."""

    __slots__ = ("hold_until", "joins", "logins", "messages", "requests", "strikes", "user")

    def __init__(self, cfg: LimitsConfig, now: float) -> None:
        self.requests = cfg.session_requests.bucket(now)
        self.messages = cfg.session_messages.bucket(now)
        self.joins = cfg.session_joins.bucket(now)
        self.logins = cfg.session_logins.bucket(now)
        self.strikes = TokenBucket(1.0, max(1, cfg.strikes), now)
        self.hold_until = 0.0  # the end of the last wait the client was told to make
        self.user: UserLimiter | None = None

    def request(self, now: float) -> float:
        """The hot-path check of every frame: 0.0, or the seconds to wait."""
        wait = self.requests.take(now)
        if wait or self.user is None:
            return wait
        return self.user.requests.take(now)

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
        while len(table) > self.cfg.max_tracked:  # still too many: forget the oldest
            del table[next(iter(table))]


# --- daily upload volume --------------------------------------------------------------------------


class UploadQuota:
    """Bytes each user stored by upload on the current UTC day (kept in memory: a restart forgets)."""

    def __init__(self, cfg: LimitsConfig) -> None:
        self.cfg = cfg
        self.day = ""
        self.used: dict[str, int] = {}

    def _today(self) -> dict[str, int]:
        day = datetime.now(UTC).strftime("%Y-%m-%d")
        if day != self.day:
            self.day, self.used = day, {}
        return self.used

    def check(self, user: str, size: int, in_progress: int) -> None:
        limit = self.cfg.max_upload_bytes_per_day
        used = self._today().get(user, 0)
        if used + in_progress + size > limit:
            raise ProtocolError(Code.LIMIT_REACHED,
                                f"Upload limit reached: at most {limit} bytes per user per day; {used} stored today"
                                + (f" and {in_progress} in progress." if in_progress else "."))

    def add(self, user: str, size: int) -> None:
        used = self._today()
        used[user] = used.get(user, 0) + size


# --- the whole -------------------------------------------------------------------------------------


class Limits:
    """Every limit of the chat layer; :class:`~utuvox.chat.service.Chat` owns one (``chat.limits``)."""

    def __init__(self, cfg: LimitsConfig) -> None:
        self.cfg = cfg
        self.sessions: dict[Session, SessionLimiter] = {}
        self.users: dict[str, UserLimiter] = {}
        self.throttle = LoginThrottle(cfg)
        self.uploads = UploadQuota(cfg)
        self.rejected = 0  # requests refused for rate, for statistics
        self.flooders = 0  # sessions disconnected for ignoring rate_limited

    # --- sessions -------------------------------------------------------------------------------

    def open(self, session: Session) -> SessionLimiter | None:
        """The limiter of a new session; operators on the admin socket have none."""
        if session.transport == "admin":
            return None
        limiter = self.sessions[session] = SessionLimiter(self.cfg, monotonic())
        return limiter

    def close(self, session: Session) -> None:
        self.sessions.pop(session, None)

    def signed_in(self, session: Session, identity: Identity) -> None:
        limiter = self.sessions.get(session)
        if limiter is None:
            return
        user = self.users.get(identity.key)
        if user is None:
            now = monotonic()
            if len(self.users) >= self.cfg.max_tracked:
                self._forget_idle_users(now)
            user = self.users[identity.key] = UserLimiter(self.cfg, now)
        limiter.user = user

    def _forget_idle_users(self, now: float) -> None:
        # A user whose buckets are full again has nothing to remember; one still draining is kept, so
        # reconnecting does not refill them.
        active = {lim.user for lim in self.sessions.values()}
        for key in [k for k, u in self.users.items() if u not in active and u.idle(now)]:
            del self.users[key]

    # --- refusing -------------------------------------------------------------------------------

    def refuse(self, session: Session, limiter: SessionLimiter, now: float, wait: float, what: str) -> ProtocolError:
        """The error for a request over its rate; disconnects a client that keeps ignoring them."""
        self.rejected += 1
        if limiter.strike(now, wait):
            self.flooders += 1
            session.peer.close(f"Disconnected: too many {what}, despite rate_limited errors.", Code.RATE_LIMITED)
        return ProtocolError(Code.RATE_LIMITED, f"Too many {what}; retry in {wait:.2f} s.",
                             retry_after=_seconds(wait))

    def check_message(self, session: Session) -> None:
        limiter = self.sessions.get(session)
        if limiter is None:
            return
        now = monotonic()
        wait = limiter.messages.take(now)
        if not wait and limiter.user is not None:
            wait = limiter.user.messages.take(now)
        if wait:
            raise self.refuse(session, limiter, now, wait, "messages")

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
        now = monotonic()
        wait = limiter.joins.take(now)
        if not wait and limiter.user is not None:
            wait = limiter.user.joins.take(now)
        if wait:
            raise self.refuse(session, limiter, now, wait, "joins")

    def check_login(self, session: Session, account: str | None) -> None:
        """Before a password is checked (login, register, changepassword): this connection's attempts,
        the account's attempts, and the delays earned by earlier failures."""
        limiter = self.sessions.get(session)
        if limiter is None:
            return
        now = monotonic()
        key = account.lower() if account is not None else None
        wait = limiter.logins.take(now)
        if not wait and key is not None:
            user = self.users.get(key)
            if user is not None:
                wait = user.logins.take(now)
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
            self.throttle.failed(account.lower() if account else None, address_key(session.address), monotonic())

    def login_succeeded(self, session: Session, account: str) -> None:
        if session.transport != "admin":
            self.throttle.succeeded(account.lower(), address_key(session.address))

    def check_sessions(self, user_sessions: int) -> None:
        if user_sessions >= self.cfg.max_sessions_per_user:
            raise ProtocolError(Code.LIMIT_REACHED, f"Too many connections logged in as this user "
                                                    f"({self.cfg.max_sessions_per_user}); close one first.")


# --- uploads (wrapping the file-sharing handlers) --------------------------------------------------


Handler = Callable[[Session, Any], Awaitable[Reply | None]]


def install_upload_quota(chat: Chat) -> None:
    """Count the bytes each user uploads per day, refusing an upload that would go over. Call after
    file sharing is installed: this wraps its ``upload`` and ``upload_chunk`` handlers."""
    upload: Handler | None = chat.handlers.get("upload")
    chunk: Handler | None = chat.handlers.get("upload_chunk")
    if upload is None or chunk is None:
        return
    quota = chat.limits.uploads

    async def checked_upload(session: Session, req: Any) -> Reply | None:
        if session.user is not None:
            quota.check(session.user.key, req.size, _in_progress(chat, session.user.key))
        return await upload(session, req)

    async def counted_chunk(session: Session, req: Any) -> Reply | None:
        reply = await chunk(session, req)
        if session.user is not None and getattr(reply, "type", None) == "uploaded":
            quota.add(session.user.key, reply.size)  # type: ignore[union-attr]
        return reply

    chat.handlers["upload"] = checked_upload
    chat.handlers["upload_chunk"] = counted_chunk


def _in_progress(chat: Chat, user_key: str) -> int:
    """Bytes announced by the user's uploads still in progress (they count against today's volume)."""
    files = getattr(chat, "files", None)
    uploads: dict[int, dict[str, Any]] = getattr(files, "uploads", {}) or {}
    return sum(up.size for s in chat.sessions_of(user_key) for up in uploads.get(s.id, {}).values())


__all__ = ["Limits", "LimitsConfig", "LoginThrottle", "Rate", "SessionLimiter", "TokenBucket", "UploadQuota",
           "UserLimiter", "address_key", "install_upload_quota"]
