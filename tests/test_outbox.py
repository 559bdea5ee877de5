"""The outbox's lifecycle, in process: a fake connection (a pipe where the flusher writes directly, a
list where the writer task sends), no server. How an outbox ends is checked through its two entry
points, ``finish`` and ``abort``, and the state they leave it in."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager

import pytest
import trio
import trio.testing

from utuvox.chat.session import Session
from utuvox.chat.wire import Wire
from utuvox.protocol.core import MessageEvent, Notice
from utuvox.server.irc.outbox import IrcOutbox
from utuvox.server.outbox import Counters, Flusher, Outbox, State


class FakeConnection:
    """A connection without a socket. With a pipe, ``direct_fd`` is its write end (what the flusher writes
    to at once); without one it is ``None`` (as for TLS) and ``send_raw`` keeps what it is given, waiting
    while ``stalled`` (a peer that does not read) and raising ``broken`` if set (a peer gone)."""

    transport = "tcp"
    address = "fake:1"
    frame: Callable[[bytes], bytes] | None = None

    def __init__(self, fd: int | None = None) -> None:
        self.fd = fd
        self.sent: list[bytes] = []
        self.stalled = False
        self.broken: Exception | None = None
        self._unstalled = trio.Event()

    async def receive(self) -> bytes | str | None:
        await trio.sleep_forever()

    def direct_fd(self) -> int | None:
        return self.fd

    async def send_raw(self, data: bytes) -> None:
        if self.broken is not None:
            raise self.broken
        if self.stalled:
            await self._unstalled.wait()
        self.sent.append(data)

    def unstall(self) -> None:
        self.stalled = False
        self._unstalled.set()

    def attach(self, send_framed: Callable[[bytes], bool]) -> None:
        pass

    async def aclose(self) -> None:
        pass


@contextmanager
def pipe() -> Iterator[tuple[int, int]]:
    read, write = os.pipe()
    os.set_blocking(write, False)
    try:
        yield read, write
    finally:
        os.close(read)
        os.close(write)


def frames(data: bytes) -> list[dict[str, object]]:
    return [json.loads(line) for line in data.splitlines()]


def sent_frames(conn: FakeConnection) -> list[dict[str, object]]:
    return frames(b"".join(conn.sent))


def notice(text: str) -> Notice:
    return Notice(text=text)


@asynccontextmanager
async def session(outbox: Outbox, flusher: Flusher) -> AsyncIterator[trio.Nursery]:
    """What run_session does with an outbox: the flusher runs, the writer runs inside the outbox's
    lifetime; the body acts, and the block ends when the outbox ends the lifetime."""
    async with trio.open_nursery() as outer:
        await outer.start(flusher.run)
        with outbox.lifetime:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(outbox.run)
                yield nursery
                await trio.sleep_forever()
        outbox.closed()
        outer.cancel_scope.cancel()


async def test_the_flusher_writes_what_a_turn_queued_in_one_write_and_stays_open() -> None:
    flusher = Flusher()
    with pipe() as (read, write):
        outbox = Outbox(FakeConnection(write), "json", 100, flusher)
        async with trio.open_nursery() as nursery:
            await nursery.start(flusher.run)
            outbox.send(notice("one"))
            outbox.send(notice("two"))
            await trio.testing.wait_all_tasks_blocked()
            assert [f["text"] for f in frames(os.read(read, 65536))] == ["one", "two"]
            assert outbox.state is State.OPEN and outbox.pending_bytes == 0
            nursery.cancel_scope.cancel()
    assert outbox.bytes_sent > 0


async def test_without_a_direct_descriptor_the_writer_sends_and_the_outbox_opens_again() -> None:
    flusher = Flusher()
    conn = FakeConnection()
    conn.stalled = True
    outbox = Outbox(conn, "json", 100, flusher)
    async with session(outbox, flusher):
        outbox.send(notice("one"))
        await trio.testing.wait_all_tasks_blocked()
        assert outbox.state is State.BACKED_UP
        outbox.send(notice("two"))  # taken while backed up: the writer sends it next
        conn.unstall()
        await trio.testing.wait_all_tasks_blocked()
        assert outbox.state is State.OPEN
        assert [f["text"] for f in sent_frames(conn)] == ["one", "two"]
        outbox.finish()
    assert outbox.state is State.CLOSED


async def test_finish_says_goodbye_after_what_is_queued_takes_nothing_more_and_ends_the_session() -> None:
    flusher = Flusher()
    conn = FakeConnection()
    conn.stalled = True
    outbox = Outbox(conn, "json", 100, flusher)
    async with session(outbox, flusher):
        outbox.send(notice("before"))
        outbox.finish("Goodbye.", "quit")
        assert outbox.state is State.DRAINING and outbox.closing
        outbox.send(notice("after"))  # refused: the goodbye is the last frame
        assert outbox.send_framed(b"pong") is False
        outbox.finish("Again.", "kicked")  # one goodbye only
        outbox.abort("too late")  # and an abort now still ends it (nothing more is sent)
        assert outbox.state is State.ABORTED
    assert outbox.lifetime.cancelled_caught
    assert outbox.reason == "too late"


async def test_a_finishing_outbox_is_drained_before_the_session_ends() -> None:
    flusher = Flusher()
    conn = FakeConnection()
    outbox = Outbox(conn, "json", 100, flusher)
    async with session(outbox, flusher):
        outbox.send(notice("before"))
        outbox.finish("Goodbye.", "quit")
    assert [(f["type"], f.get("code")) for f in sent_frames(conn)] == [("notice", None), ("bye", "quit")]
    assert outbox.lifetime.cancelled_caught and outbox.reason is None
    assert outbox.state is State.CLOSED and flusher.live == 0


async def test_finish_closes_within_its_deadline_a_peer_that_does_not_read(
    autojump_clock: trio.testing.MockClock,
) -> None:
    flusher = Flusher()
    conn = FakeConnection()
    conn.stalled = True  # never unstalled: the goodbye cannot get out
    outbox = Outbox(conn, "json", 100, flusher)
    async with session(outbox, flusher):
        outbox.send(notice("stuck"))
        await trio.testing.wait_all_tasks_blocked()
        outbox.finish("Goodbye.", "shutdown", within=3)
    assert outbox.lifetime.cancelled_caught
    assert conn.sent == [] and outbox.state is State.CLOSED


async def test_abort_drops_what_is_queued_and_ends_the_session_at_once() -> None:
    flusher = Flusher()
    conn = FakeConnection()
    conn.stalled = True
    outbox = Outbox(conn, "json", 100, flusher)
    async with session(outbox, flusher):
        outbox.send(notice("one"))
        outbox.send(notice("two"))
        outbox.abort("peer gone")
        outbox.abort("second reason")  # the first reason stays
        outbox.finish("Goodbye.", "quit")  # nothing to say to a connection that is being dropped
        assert outbox.state is State.ABORTED and outbox.pending_bytes == 0
    assert outbox.lifetime.cancelled_caught and outbox.reason == "peer gone"
    assert conn.sent == []


async def test_a_peer_gone_while_writing_aborts() -> None:
    flusher = Flusher()
    conn = FakeConnection()
    conn.broken = trio.BrokenResourceError()
    outbox = Outbox(conn, "json", 100, flusher)
    async with session(outbox, flusher):
        outbox.send(notice("lost"))
    assert outbox.lifetime.cancelled_caught


async def test_a_reader_over_the_byte_cap_is_cut_off_with_a_goodbye_and_a_deadline() -> None:
    flusher = Flusher()
    conn = FakeConnection()
    conn.stalled = True
    outbox = Outbox(conn, "json", 1000, flusher, max_bytes=2000)
    before = Counters.cut_off
    async with session(outbox, flusher):
        outbox.send(notice("x" * 500))  # taken by the writer, stuck on the wire
        await trio.testing.wait_all_tasks_blocked()
        for i in range(10):
            outbox.send(notice(f"{i}" * 500))
        assert outbox.state is State.DRAINING and outbox.reason == "slow consumer"
        assert Counters.cut_off == before + 1
        assert outbox.lifetime.deadline < float("inf")
        conn.unstall()
    got = sent_frames(conn)
    # The frame being written when it fell behind, then the goodbye; what was queued is gone.
    assert [f["type"] for f in got] == ["notice", "bye"]
    assert got[1]["code"] == "slow_consumer"


async def test_paced_senders_stop_waiting_when_the_outbox_ends() -> None:
    flusher = Flusher()
    conn = FakeConnection()
    conn.stalled = True
    outbox = Outbox(conn, "json", 4, flusher)
    released = []
    async with session(outbox, flusher) as nursery:
        outbox.send(notice("a"))
        await trio.testing.wait_all_tasks_blocked()
        outbox.send(notice("b"))
        outbox.send(notice("c"))

        async def paced() -> None:
            await outbox.send_paced(notice("paced"))
            released.append(True)

        nursery.start_soon(paced)
        await trio.testing.wait_all_tasks_blocked()
        assert released == []
        outbox.finish()
        await trio.testing.wait_all_tasks_blocked()
        assert released == [True]
        conn.unstall()


async def test_a_closed_outbox_never_writes_and_never_moves_again() -> None:
    flusher = Flusher()
    with pipe() as (read, write):
        outbox = Outbox(FakeConnection(write), "json", 100, flusher)
        outbox.send(notice("queued"))
        outbox.closed()
        assert outbox.state is State.CLOSED and flusher.live == 0
        outbox.flush()  # as the flusher would, had it marked the outbox before
        outbox.finish("Goodbye.", "quit")
        outbox.abort("late")
        assert outbox.state is State.CLOSED and outbox.reason is None
        os.set_blocking(read, False)
        with pytest.raises(BlockingIOError):
            os.read(read, 1)  # nothing was written
        with pytest.raises(RuntimeError):
            outbox._to(State.OPEN)


async def test_shutdown_waits_for_the_last_outbox_to_close() -> None:
    flusher = Flusher()
    outboxes = [Outbox(FakeConnection(), "json", 100, flusher) for _ in range(3)]
    done = []

    async def wait() -> None:
        await flusher.wait_all_closed()
        done.append(True)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait)
        for outbox in outboxes:
            await trio.testing.wait_all_tasks_blocked()
            assert done == []
            outbox.closed()
    assert done == [True]


def message(room: str, seq: int, text: str) -> Wire:
    return Wire(MessageEvent(room=room, seq=seq, user="bob", text=text))


def irc_outbox(conn: FakeConnection, limit: int, flusher: Flusher, **kwargs: int) -> IrcOutbox:
    outbox = IrcOutbox(conn, "irc", limit, flusher, **kwargs)
    outbox.session = Session(peer=outbox, transport="irc", address=conn.address)  # not the messages' sender
    return outbox


async def test_irc_says_error_on_the_way_out() -> None:
    flusher = Flusher()
    conn = FakeConnection()
    outbox = irc_outbox(conn, 100, flusher)
    async with session(outbox, flusher):
        outbox.deliver(message("general", 1, "hello"))
        outbox.finish("Quit: bye", "quit")
    lines = b"".join(conn.sent).decode().split("\r\n")
    assert lines[0].endswith("PRIVMSG #general hello")
    assert lines[1] == "ERROR :Closing link: Quit: bye"


async def test_an_irc_reader_over_the_byte_cap_is_cut_off() -> None:
    flusher = Flusher()
    conn = FakeConnection()
    conn.stalled = True
    outbox = irc_outbox(conn, 1000, flusher, max_bytes=4000)
    async with session(outbox, flusher):
        outbox.deliver(message("general", 1, "x" * 1000))
        await trio.testing.wait_all_tasks_blocked()
        for seq in range(2, 12):
            outbox.deliver(message("general", seq, "y" * 1000))
        assert outbox.state is State.DRAINING and outbox.reason == "slow consumer"
        conn.unstall()
    assert b"".join(conn.sent).endswith(b"\r\n") and b"ERROR :Closing link: You fell too far behind" in conn.sent[-1]
