"""The rules that measure time, driven by trio's MockClock: rate buckets, the login throttle, the
watchdog's timeouts and probes, the rejoin grace, the daily upload volume. Time jumps instead of passing
(pytest-trio's ``autojump_clock`` is ``MockClock(autojump_threshold=0)``), so nothing here sleeps for real,
and what is checked is the rule (refused now, served after waiting as told), never a duration."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import trio
from trio.testing import MockClock

from utuvox.chat.clock import Clock
from utuvox.chat.limits import Limits, LimitsConfig, Rate, UploadQuota
from utuvox.chat.rejoin import Rejoins
from utuvox.chat.session import Identity, Session
from utuvox.protocol import ProtocolError
from utuvox.protocol.core import Keepalive
from utuvox.server.keepalive import WatchConfig, Watchdog


class Peer:
    """Just enough of a connection for the rules: what it was told when closed."""

    def __init__(self) -> None:
        self.closed: str | None = None

    def close(self, reason: str, code: str) -> None:
        self.closed = reason


def session(address: str = "192.0.2.1:4000") -> Session:
    return Session(peer=Peer(), transport="tcp", address=address)  # type: ignore[arg-type]


def refused(check: Any, *args: Any) -> ProtocolError:
    with pytest.raises(ProtocolError) as error:
        check(*args)
    return error.value


# --- rates ----------------------------------------------------------------------------------------


async def test_a_session_gets_its_burst_then_waits_as_told_and_is_served(autojump_clock: MockClock) -> None:
    limits = Limits(LimitsConfig(session_messages=Rate(2, 3)), Clock())
    me = session()
    limits.open(me)
    for _ in range(3):
        limits.check_message(me)
    told = refused(limits.check_message, me)
    assert told.code == "rate_limited" and told.retry_after is not None and told.retry_after > 0
    await trio.sleep(told.retry_after)
    limits.check_message(me)  # waiting exactly what it was told is enough
    assert me.peer.closed is None  # type: ignore[attr-defined]


async def test_a_client_that_ignores_retry_after_is_disconnected(autojump_clock: MockClock) -> None:
    limits = Limits(LimitsConfig(session_messages=Rate(1, 1), strikes=3), Clock())
    me = session()
    limits.open(me)
    limits.check_message(me)
    refused(limits.check_message, me)
    for _ in range(3):  # straight back, each time, without waiting: tolerated up to the strikes
        refused(limits.check_message, me)
    assert me.peer.closed is None  # type: ignore[attr-defined]
    refused(limits.check_message, me)
    assert me.peer.closed is not None and "despite rate_limited" in me.peer.closed  # type: ignore[attr-defined]


async def test_a_polite_client_is_never_disconnected(autojump_clock: MockClock) -> None:
    limits = Limits(LimitsConfig(session_joins=Rate(1, 2), strikes=1), Clock())
    me = session()
    limits.open(me)
    served = 0
    for _ in range(20):
        try:
            limits.check_join(me, set(), 0)
            served += 1
        except ProtocolError as told:
            assert told.retry_after is not None
            await trio.sleep(told.retry_after)
    assert served >= 10 and me.peer.closed is None  # type: ignore[attr-defined]


async def test_the_user_bucket_spans_sessions_and_refills(autojump_clock: MockClock) -> None:
    limits = Limits(LimitsConfig(user_messages=Rate(0.5, 2)), Clock())
    a, b = session(), session("192.0.2.2:4000")
    bob = Identity(name="bob", is_admin=False, is_bot=False)
    for s in (a, b):
        limits.open(s)
        limits.signed_in(s, bob)
    limits.check_message(a)
    limits.check_message(b)
    told = refused(limits.check_message, a)
    refused(limits.check_message, b)  # the other session shares the same user's bucket
    assert told.retry_after is not None
    await trio.sleep(told.retry_after)
    limits.check_message(b)


# --- the login throttle ---------------------------------------------------------------------------


async def test_failed_logins_earn_a_delay_that_passes_with_time(autojump_clock: MockClock) -> None:
    limits = Limits(LimitsConfig(session_logins=Rate(1000, 1000), user_logins=Rate(1000, 1000),
                                 login_free_failures=2, login_delay_base=4.0, login_delay_max=8.0), Clock())
    guesser = session()
    limits.open(guesser)
    for _ in range(3):
        limits.check_login(guesser, "bob")
        limits.login_failed(guesser, "bob")
    first = refused(limits.check_login, guesser, "bob")
    assert first.code == "rate_limited" and first.retry_after is not None
    await trio.sleep(first.retry_after)
    limits.check_login(guesser, "bob")  # the delay is over
    limits.login_failed(guesser, "bob")
    second = refused(limits.check_login, guesser, "bob")
    assert second.retry_after is not None and second.retry_after > first.retry_after  # it doubled
    await trio.sleep(second.retry_after)
    limits.check_login(guesser, "bob")
    limits.login_succeeded(guesser, "bob")
    limits.login_failed(guesser, "bob")
    limits.check_login(guesser, "bob")  # a success reset the count: that failure was a free one
    assert guesser.peer.closed is None  # type: ignore[attr-defined]


async def test_failures_older_than_the_window_are_forgotten(autojump_clock: MockClock) -> None:
    limits = Limits(LimitsConfig(session_logins=Rate(1000, 1000), user_logins=Rate(1000, 1000),
                                 login_free_failures=1, address_free_failures=100, login_delay_max=1.0,
                                 login_failure_window=60.0), Clock())
    guesser = session()
    limits.open(guesser)
    limits.login_failed(guesser, "bob")
    await trio.sleep(61)
    limits.login_failed(guesser, "bob")  # counted afresh: the first is older than the window
    limits.check_login(guesser, "bob")
    limits.login_failed(guesser, "bob")
    refused(limits.check_login, guesser, "bob")


# --- the daily upload volume ----------------------------------------------------------------------


class Midnight(Clock):
    """A wall clock set by hand; trio's clock still measures durations."""

    def __init__(self) -> None:
        self.when = datetime(2026, 3, 1, 23, 59, tzinfo=UTC)

    def wall(self) -> datetime:
        return self.when


def test_the_upload_volume_starts_again_each_utc_day() -> None:
    wall = Midnight()
    quota = UploadQuota(LimitsConfig(max_upload_bytes_per_day=1000), wall)
    quota.add("bob", 900)
    with pytest.raises(ProtocolError):
        quota.check("bob", 200, in_progress=0)
    wall.when = datetime(2026, 3, 2, 0, 1, tzinfo=UTC)
    quota.check("bob", 200, in_progress=0)


# --- the watchdog ---------------------------------------------------------------------------------


class Outbox:
    def __init__(self) -> None:
        self.closing = False
        self.closed_with: str | None = None
        self.bytes_sent = 0
        self.sent: list[object] = []
        self.cut_off: str | None = None
        self.scope: trio.CancelScope | None = None

    def finish(self, reason: str | None = None, code: str | None = None) -> None:
        """Goodbye, then close: what the watchdog does to a client that breaks a rule."""
        self.closing = True
        self.closed_with = reason

    def abort(self, reason: str | None = None) -> None:
        """Close at once: what the watchdog does to a peer that is gone."""
        self.closing = True
        self.cut_off = reason

    def send(self, frame: object) -> None:
        self.sent.append(frame)
        self.bytes_sent += 1


class Line:
    partial_bytes = 0


def watched(watchdog: Watchdog, limits: Limits, me: Session) -> Outbox:
    outbox = Outbox()
    watchdog.watch(me, outbox, limits.open(me), "json", Line())  # type: ignore[arg-type]
    return outbox


async def test_the_watchdog_closes_who_never_logs_in_and_probes_who_is_quiet(autojump_clock: MockClock) -> None:
    time = Clock()
    limits = Limits(LimitsConfig(), time)
    watchdog = Watchdog(WatchConfig(keepalive_interval=30, login_timeout=60), time)
    stranger, member = session(), session("192.0.2.2:4000")
    member.user = Identity(name="bob", is_admin=False, is_bot=False)
    strangers, members = watched(watchdog, limits, stranger), watched(watchdog, limits, member)
    async with trio.open_nursery() as nursery:
        await nursery.start(watchdog.run)
        await trio.sleep(45)
        assert strangers.closed_with is None  # not yet
        assert any(isinstance(frame, Keepalive) for frame in members.sent)  # quiet for a while: probed
        await trio.sleep(30)
        assert strangers.closed_with is not None and "Not logged in" in strangers.closed_with
        assert members.closed_with is None  # logged in: probed, never closed
        nursery.cancel_scope.cancel()
    assert watchdog.closed == 1


async def test_the_watchdog_closes_idle_connections_but_not_busy_ones(autojump_clock: MockClock) -> None:
    time = Clock()
    limits = Limits(LimitsConfig(session_requests=Rate(1000, 1000)), time)
    watchdog = Watchdog(WatchConfig(idle_timeout=20, login_timeout=0), time)
    idle, busy = session(), session("192.0.2.2:4000")
    idles, busys = watched(watchdog, limits, idle), watched(watchdog, limits, busy)
    meter = limits.sessions[busy].requests
    async with trio.open_nursery() as nursery:
        await nursery.start(watchdog.run)
        for _ in range(40):  # a request a second from one of them
            await trio.sleep(1)
            assert meter.take() == 0.0
        nursery.cancel_scope.cancel()
    assert idles.closed_with is not None and "Nothing received" in idles.closed_with
    assert busys.closed_with is None


# --- restarts -------------------------------------------------------------------------------------


async def test_the_rejoin_grace_closes_on_the_clock(autojump_clock: MockClock) -> None:
    rejoins = Rejoins(60.0, Clock())
    rejoins.started([])
    assert rejoins.open
    await trio.sleep(30)
    assert rejoins.open
    with trio.fail_after(31):  # in the mock clock's seconds
        await rejoins.wait_closed()
    assert not rejoins.open
