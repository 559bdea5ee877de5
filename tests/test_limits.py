"""Rate limits, caps and the login throttle: the pieces on their own (with an explicit clock), then the real
server on real sockets with small limits: a flooding client is told, then disconnected, while the others
go on; every cap answers ``limit_reached``; failed logins earn growing delays that a success resets."""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

import pytest
import trio

from utuvox.chat.limits import (
    Limits,
    LimitsConfig,
    LoginThrottle,
    Meter,
    Rate,
    TokenBucket,
    UploadQuota,
    address_key,
)
from utuvox.chat.session import Session
from utuvox.protocol import ProtocolError
from utuvox.server.keepalive import tune_socket
from utuvox.server.settings import UNTHROTTLED, Settings

from .clients import JsonLines, TextLines
from .conftest import login_json, open_ws, running_server
from .test_files import room_of, upload

# --- the pieces -----------------------------------------------------------------------------------


def test_token_bucket_gives_its_burst_then_says_how_long_to_wait() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, now=100.0)
    assert [bucket.take(100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(100.0) == pytest.approx(0.5)  # one token comes every half second
    assert bucket.take(100.25) == pytest.approx(0.25)
    assert bucket.take(100.5) == 0.0
    assert bucket.take(1000.0) == 0.0  # a long pause refills to the burst, no more
    assert [bucket.take(1000.0) for _ in range(3)] == [0.0, 0.0, pytest.approx(0.5)]
    assert not bucket.full(1000.0) and bucket.full(1002.0)


def test_a_meter_takes_credit_in_chunks_and_keeps_the_rate() -> None:
    def clock() -> float:
        return 100.0  # time stands still: what comes back is only what the buckets held

    bucket = Rate(per_second=1000, burst=800).bucket(clock())
    meter = Meter(bucket, chunk=Rate(1000, 800).chunk, now=clock)
    assert meter.chunk == 64
    allowed = 0
    while meter.take() == 0.0:  # all at once: the burst, give or take a chunk, then a wait
        allowed += 1
    assert 800 <= allowed <= 800 + 64
    assert 0 < meter.take() <= 0.002
    # One user's bucket across sessions: a session's chunk never exceeds what the user's burst allows.
    user = Rate(per_second=0.001, burst=3).bucket(clock())
    a, b = Meter(Rate(1000, 1000).bucket(clock()), 64, clock), Meter(Rate(1000, 1000).bucket(clock()), 64, clock)
    a.attach(user)
    b.attach(user)
    assert a.chunk == b.chunk == 1
    assert [m.take() == 0.0 for m in (a, b, a, b)] == [True, True, True, False]
    assert b.take() > 100  # the user's bucket refills slowly


def test_rates_must_make_sense() -> None:
    with pytest.raises(ValueError):
        Rate(0, 10)
    with pytest.raises(ValueError):
        Rate(1, 0.5)


def test_login_throttle_delays_grow_are_capped_and_reset() -> None:
    cfg = LimitsConfig(login_free_failures=2, address_free_failures=100, login_delay_base=1.0, login_delay_max=8.0)
    t = LoginThrottle(cfg)
    now = 0.0
    assert t.wait("bob", "10.0.0.1", now) == 0.0
    delays = []
    for _ in range(7):
        t.failed("bob", "10.0.0.1", now)
        delays.append(t.wait("bob", "10.0.0.1", now))
        now += 100
    assert delays == [0, 0, 1, 2, 4, 8, 8]  # two free failures, then doubling up to the cap
    # Another account from the same address is not held up by bob's failures...
    assert t.wait("carol", "10.0.0.1", now - 100) == 0.0
    # ...and the right password resets bob's count.
    t.succeeded("bob", "10.0.0.1")
    t.failed("bob", "10.0.0.1", now)
    assert t.wait("bob", "10.0.0.1", now) == 0.0


def test_an_attacker_cannot_lock_the_owner_out() -> None:
    cfg = LimitsConfig(login_free_failures=1, address_free_failures=3, login_delay_max=30.0)
    t = LoginThrottle(cfg)
    t.succeeded("bob", "192.0.2.7")  # bob logged in from home once
    for i in range(20):  # then someone else hammers bob's account from many addresses
        t.failed("bob", f"203.0.113.{i}", 50.0)
    assert t.wait("bob", "198.51.100.1", 50.0) == 30.0  # a stranger waits the full cap
    assert t.wait("bob", "192.0.2.7", 50.0) == 0.0  # bob at home does not wait at all
    assert t.wait("bob", "198.51.100.1", 81.0) == 0.0  # and nobody waits longer than the cap
    # Guessing across many accounts from one address is slowed per address.
    for name in ("a", "b", "c", "d"):
        t.failed(name, "198.51.100.9", 100.0)
    assert t.wait("e", "198.51.100.9", 100.0) > 0


def test_failures_are_forgotten_and_memory_is_bounded() -> None:
    cfg = LimitsConfig(login_free_failures=0, login_failure_window=60.0, max_tracked=50)
    t = LoginThrottle(cfg)
    t.failed("bob", "10.0.0.1", 0.0)
    t.failed("bob", "10.0.0.1", 0.0)
    t.failed("bob", "10.0.0.1", 1000.0)  # the earlier ones are older than the window
    assert t.accounts["bob"].count == 1
    for i in range(500):  # a spray of made-up account names from made-up addresses
        t.failed(f"user{i}", f"10.1.{i // 256}.{i % 256}", 2000.0 + i)
    assert len(t.accounts) <= 50 and len(t.addresses) <= 50


def test_login_attempts_on_made_up_names_do_not_grow_memory_without_bound() -> None:
    limits = Limits(LimitsConfig(max_tracked=50, session_logins=Rate(1e9, 1e9), user_logins=Rate(1, 1)))
    session = Session(peer=None, transport="tcp", address="192.0.2.1:4000")  # type: ignore[arg-type]
    limits.open(session)
    for i in range(500):
        limits.check_login(session, f"nobody{i}")
    assert len(limits.users) <= 50
    limits.check_login(session, "bob")
    with pytest.raises(ProtocolError) as refused:  # the account's own attempts are limited, existing or not
        limits.check_login(session, "bob")
    assert refused.value.code == "rate_limited"


def test_address_key_drops_the_port_and_groups_ipv6_by_64() -> None:
    assert address_key("127.0.0.1:5555") == "127.0.0.1"
    assert address_key("2001:db8:1:2:aaaa::1:443") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:2:bbbb::9:80") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1:80") != address_key("2001:db8:1:2::1:80")
    assert address_key("::ffff:10.0.0.1:80") == "10.0.0.1"
    assert address_key("::1:1234") == "::1"


def test_upload_quota_counts_stored_and_announced_bytes() -> None:
    quota = UploadQuota(LimitsConfig(max_upload_bytes_per_day=1000))
    quota.check("bob", 600, in_progress=0)
    quota.add("bob", 600)
    with pytest.raises(ProtocolError) as refused:
        quota.check("bob", 500, in_progress=0)
    assert refused.value.code == "limit_reached" and "600" in refused.value.message
    quota.check("carol", 1000, in_progress=0)  # per user
    with pytest.raises(ProtocolError):
        quota.check("carol", 600, in_progress=500)  # uploads under way count too


def test_defaults_suit_a_public_server_and_the_benchmarks_set_their_own() -> None:
    # Out of the box a connection sends a few messages a second with a burst (bots ten times that), and
    # one address holds a handful of connections; the benchmarks' and tests' own limits leave room for
    # ~10^5 messages/s through one connection and 10,000 connections from one address.
    defaults = Settings()
    limits = defaults.chat.limits
    assert limits.session_messages.per_second <= 10 and limits.session_messages.burst <= 50
    assert limits.bot_messages.per_second > limits.session_messages.per_second
    assert defaults.max_connections_per_address <= 50 and limits.max_sessions_per_user <= 20
    generous = Settings(**UNTHROTTLED).chat.limits  # type: ignore[arg-type]
    assert generous.session_messages.per_second >= 100_000 and generous.session_requests.per_second >= 100_000
    assert Settings(**UNTHROTTLED).max_connections_per_address > 10_000  # type: ignore[arg-type]
    assert limits.max_room_members > 1000


async def test_tcp_keepalive_options_are_set() -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    client = await trio.open_tcp_stream("127.0.0.1", listener.socket.getsockname()[1])
    server = await listener.accept()
    tune_socket(server, interval=20, timeout=45)
    sock = server.socket
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 20
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) * sock.getsockopt(
        socket.IPPROTO_TCP, socket.TCP_KEEPCNT) <= 45
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 45_000
    await client.aclose()
    await server.aclose()
    await listener.aclose()


# --- floods on the real server --------------------------------------------------------------------


async def test_a_flooder_is_told_then_disconnected_and_the_room_goes_on(tmp_path: Path) -> None:
    async with running_server(tmp_path, session_messages_per_second=1, session_messages_burst=3,
                              rate_limit_strikes=5) as srv:
        flooder, calm = await JsonLines.connect(srv.tcp_port), await JsonLines.connect(srv.tcp_port)
        await login_json(flooder, "flooder")
        await flooder.request("create", room="general")
        await login_json(calm, "calm")
        await calm.request("join", room="general")
        assert [(await flooder.request("message", text=f"m{i}"))["type"] for i in range(3)] == ["ok"] * 3
        refused = await flooder.request("message", text="one too many")
        assert refused["type"] == "error" and refused["code"] == "rate_limited", refused
        assert 0 < refused["retry_after"] <= 1.0
        with contextlib.suppress(trio.BrokenResourceError):  # the server hangs up mid-flood
            for i in range(100):  # ignoring the errors: the server loses patience
                await flooder.send({"type": "message", "text": f"flood {i}", "id": 100 + i})
        bye = await flooder.recv_until(lambda f: f.get("type") == "bye")
        assert bye["code"] == "rate_limited"
        assert await flooder.closed()
        # Nothing of the flood beyond the burst reached the room, and the room goes on.
        assert (await calm.request("message", text="still here"))["type"] == "ok"
        history = await calm.request("history", room="general")
        texts = [e["text"] for e in history["events"] if e["type"] == "message"]
        assert texts == ["m0", "m1", "m2", "still here"]


async def test_a_polite_client_waits_retry_after_and_is_served(tmp_path: Path) -> None:
    async with running_server(tmp_path, session_requests_per_second=20, session_requests_burst=5,
                              rate_limit_strikes=3) as srv:
        js = await JsonLines.connect(srv.tcp_port)
        served = limited = 0
        for i in range(30):  # well over the burst, but waiting as told each time: never disconnected
            reply = await js.request("ping")
            if reply["type"] == "pong":
                served += 1
            else:
                assert reply["code"] == "rate_limited" and reply["re"] == i + 1, reply
                limited += 1
                await trio.sleep(reply["retry_after"])
        assert served >= 15 and limited >= 1
        # Garbage counts too, and is answered as rate_limited once over the rate: with the burst back (5
        # tokens), six lines in one write are five bad_json and one rate_limited (a first refusal, no strike;
        # how many tokens the loop above left depends on the machine's timing, so it is waited out).
        await trio.sleep(5 / 20 + 0.05)
        await js.send(b"not json\n" * 6)
        codes = [(await js.recv())["code"] for _ in range(6)]
        assert codes == ["bad_json"] * 5 + ["rate_limited"]


async def test_text_mode_is_told_in_words(tmp_path: Path) -> None:
    async with running_server(tmp_path, session_requests_per_second=1, session_requests_burst=2,
                              rate_limit_strikes=2) as srv:
        text = await TextLines.connect(srv.tcp_port)
        await text.recv_line()
        for _ in range(3):
            await text.send("/ping")
        assert "Too many requests; retry in" in await text.expect("Error:")
        with contextlib.suppress(trio.BrokenResourceError):  # the server may hang up before the last one
            for _ in range(5):
                await text.send("/ping")
        assert "Disconnected: Too many requests, despite rate_limited errors." in await text.expect("Disconnected")


async def test_the_user_rate_spans_connections(tmp_path: Path) -> None:
    async with running_server(tmp_path, user_messages_per_second=0.01, user_messages_burst=4) as srv:
        a, b = await JsonLines.connect(srv.tcp_port), await JsonLines.connect(srv.tcp_port)
        await login_json(a, "alice")
        await login_json(b, "alice", register=False)
        await a.request("create", room="general")
        await b.request("join", room="general")
        codes = [(await c.request("message", text="x"))["type"] for c in (a, b, a, b, a, b)]
        assert codes == ["ok"] * 4 + ["error"] * 2
        other = await JsonLines.connect(srv.tcp_port)
        await login_json(other, "bob")
        await other.request("join", room="general")
        assert (await other.request("message", text="mine"))["type"] == "ok"


async def test_joins_are_rate_limited_and_rooms_per_user_capped(tmp_path: Path) -> None:
    async with running_server(tmp_path, session_joins_per_second=0.01, session_joins_burst=3,
                              max_rooms_per_user=2) as srv:
        js = await JsonLines.connect(srv.tcp_port)
        await login_json(js, "alice")
        assert (await js.request("create", room="r1"))["type"] == "joined"
        assert (await js.request("create", room="r2"))["type"] == "joined"
        full = await js.request("create", room="r3")
        assert full["code"] == "limit_reached" and "2 rooms" in full["message"]
        assert (await js.request("list_all_rooms"))["rooms"] == [{"name": "r1", "members": 1},
                                                                 {"name": "r2", "members": 1}]  # r3 never made
        assert (await js.request("join", room="r1"))["type"] == "joined"  # already in: just made current
        await js.request("leave", room="r2")
        assert (await js.request("join", room="r2"))["type"] == "joined"  # the third join
        await js.request("leave", room="r2")
        slow = await js.request("join", room="r2")
        assert slow["code"] == "rate_limited" and slow["retry_after"] > 1


async def test_room_members_and_sessions_per_user_are_capped(tmp_path: Path) -> None:
    async with running_server(tmp_path, max_room_members=2, max_sessions_per_user=2) as srv:
        clients = [await JsonLines.connect(srv.tcp_port) for _ in range(3)]
        for i, c in enumerate(clients):
            await login_json(c, f"u{i}")
        await clients[0].request("create", room="small")
        await clients[1].request("join", room="small")
        full = await clients[2].request("join", room="small")
        assert full["code"] == "limit_reached" and "full" in full["message"]

        second = await JsonLines.connect(srv.tcp_port)
        assert (await second.request("login", username="u0", password="pw"))["type"] == "logged_in"
        third = await JsonLines.connect(srv.tcp_port)
        refused = await third.request("login", username="u0", password="pw")
        assert refused["code"] == "limit_reached"
        await second.aclose()
        with trio.fail_after(5):
            while (await third.request("login", username="u0", password="pw"))["type"] != "logged_in":
                await trio.sleep(0.05)  # once the server has seen the other connection go


async def test_connections_per_address_are_capped_on_every_transport(tmp_path: Path) -> None:
    async with running_server(tmp_path, max_connections_per_address=2) as srv:
        first, second = await JsonLines.connect(srv.tcp_port), await JsonLines.connect(srv.tcp_port)
        assert (await first.request("ping"))["type"] == "pong"
        assert (await second.request("ping"))["type"] == "pong"
        third = await JsonLines.connect(srv.tcp_port)
        await third.send({"type": "ping", "id": 1})
        bye = await third.recv()
        assert bye["type"] == "bye" and bye["code"] == "limit_reached" and "Too many connections" in bye["reason"]
        assert await third.closed()
        text = await TextLines.connect(srv.tcp_port)
        assert "Disconnected: Too many connections from your address" in await text.recv_line()
        async with open_ws(srv.ws_port) as ws:
            assert (await ws.recv())["code"] == "limit_reached"
        await second.aclose()
        with trio.fail_after(5):
            while True:  # the slot comes back once the server has seen the close
                again = await JsonLines.connect(srv.tcp_port)
                await again.send({"type": "ping", "id": 1})
                if (await again.recv())["type"] == "pong":
                    break
                await trio.sleep(0.05)


# --- failed logins on the real server -------------------------------------------------------------


async def test_failed_logins_earn_a_delay_that_a_success_resets(tmp_path: Path) -> None:
    async with running_server(tmp_path, login_free_failures=2, login_delay_base=0.3, login_delay_max=0.6) as srv:
        owner = await JsonLines.connect(srv.tcp_port)
        await login_json(owner, "bob", "secret")
        await owner.aclose()
        guesser = await JsonLines.connect(srv.tcp_port)
        codes = [(await guesser.request("login", username="bob", password=f"guess{i}"))["code"] for i in range(3)]
        assert codes == ["auth_failed"] * 3
        held = await guesser.request("login", username="bob", password="secret")  # even the right one waits
        assert held["code"] == "rate_limited" and 0 < held["retry_after"] <= 0.3
        await trio.sleep(held["retry_after"])
        assert (await guesser.request("login", username="bob", password="guess4"))["code"] == "auth_failed"
        held = await guesser.request("login", username="bob", password="secret")
        assert held["code"] == "rate_limited" and 0.3 < held["retry_after"] <= 0.6  # doubled, and capped
        await trio.sleep(held["retry_after"])
        assert (await guesser.request("login", username="bob", password="secret"))["type"] == "logged_in"
        # The success reset the account: the next failure is a free one again.
        other = await JsonLines.connect(srv.tcp_port)
        assert (await other.request("login", username="bob", password="nope"))["code"] == "auth_failed"
        assert (await other.request("login", username="bob", password="secret"))["type"] == "logged_in"


async def test_login_attempts_of_one_connection_are_rate_limited(tmp_path: Path) -> None:
    async with running_server(tmp_path, session_logins_per_second=0.01, session_logins_burst=3,
                              login_free_failures=100, address_free_failures=100) as srv:
        js = await JsonLines.connect(srv.tcp_port)
        codes = [(await js.request("login", username="ghost", password="x"))["code"] for _ in range(4)]
        assert codes == ["auth_failed"] * 3 + ["rate_limited"]


async def test_guessing_the_admin_key_is_throttled(tmp_path: Path) -> None:
    async with running_server(tmp_path, address_free_failures=2, login_delay_base=5.0) as srv:
        codes = []
        for i in range(4):
            js = await JsonLines.connect(srv.tcp_port)  # a fresh connection each time changes nothing
            codes.append((await js.request("register", username=f"x{i}", password="pw", admin_key="guess"))["code"])
        assert codes == ["forbidden", "forbidden", "forbidden", "rate_limited"]


# --- uploads per day ------------------------------------------------------------------------------


async def test_upload_bytes_per_day_are_capped(tmp_path: Path) -> None:
    async with running_server(tmp_path, max_upload_bytes_per_day=100_000) as srv:
        alice = await JsonLines.connect(srv.tcp_port)
        await room_of(alice, "alice")
        assert (await upload(alice, "general", os.urandom(60_000)))["type"] == "uploaded"
        refused = await alice.request("upload", room="general", name="b.bin", size=50_000, sha256="0" * 64)
        assert refused["code"] == "limit_reached" and "per user per day" in refused["message"]
        assert (await upload(alice, "general", os.urandom(40_000)))["type"] == "uploaded"  # what is left
        # Another user has a volume of their own.
        async with open_ws(srv.ws_port) as bob:
            await room_of(bob, "bob", create=False)
            assert (await upload(bob, "general", os.urandom(90_000)))["type"] == "uploaded"
