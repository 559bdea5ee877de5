"""Line framing on a byte stream: whatever the chunking, the same lines come out, and an oversize line
is refused once and skipped without losing the lines around it."""

from __future__ import annotations

import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from utuvox.protocol import ProtocolError
from utuvox.server.connection import LineConnection

MAX = 64


async def collect(chunks: list[bytes]) -> list[bytes | str]:
    """Feed the chunks through a real stream and return the lines (or 'too large' markers)."""
    left, right = trio.testing.memory_stream_pair()
    conn = LineConnection(right, "tcp", "test", MAX)
    out: list[bytes | str] = []
    async with trio.open_nursery() as nursery:

        async def feed() -> None:
            for chunk in chunks:
                await left.send_all(chunk)
            await left.send_eof()

        nursery.start_soon(feed)
        while True:
            try:
                line = await conn.receive()
            except ProtocolError as exc:
                assert exc.code == "frame_too_large"
                out.append("too large")
                continue
            if line is None:
                return out
            out.append(line)


def expected(stream: bytes) -> list[bytes | str]:
    lines = stream.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return ["too large" if len(line) > MAX else line for line in lines]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=100).map(lambda b: b.replace(b"\n", b"")), max_size=12),
       st.lists(st.integers(min_value=1, max_value=150), min_size=1, max_size=30))
def test_any_chunking_gives_the_same_lines(lines: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(line + b"\n" for line in lines)
    chunks, at = [], 0
    for i in range(10_000):
        if at >= len(stream):
            break
        size = cuts[i % len(cuts)]
        chunks.append(stream[at:at + size])
        at += size
    assert trio.run(collect, chunks) == expected(stream)


async def test_a_last_line_without_newline_still_counts() -> None:
    assert await collect([b"one\ntw", b"o"]) == [b"one", b"two"]


async def test_oversize_line_in_small_pieces_is_refused_once() -> None:
    chunks = [b"ok\n", *([b"x" * 40] * 10), b"tail\nafter\n"]
    assert await collect(chunks) == [b"ok", "too large", b"after"]
