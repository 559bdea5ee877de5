"""``python -m bench.floor``: what a bare trio loop does on this machine with the I/O of a chat message
and none of its logic, so that the server's figures can be read against the limit of the design.

The floor server is a trio program with one task per connection, as UtuVox has: a sender's read is
split into lines, each line is "delivered" by appending it to every receiver's buffer and acknowledged
to the sender; once per turn of the loop one flusher task writes each connection that got data, one
non-blocking ``os.write`` each (UtuVox's outbox does the same). With ``--hop`` every read also waits
for one ``trio.to_thread.run_sync`` of nothing before it delivers (where UtuVox waits for its commit on
the writer thread), which shows what the thread hop alone costs. No validation, no store, no models.

The load generator is a selectors loop in another process (pinned to CPU 1, the server to CPU 0, as
in ``python -m bench``): ``fanout`` pipelines batches of 100 lines (at most 1,000 unacknowledged) into
N receivers and counts deliveries per second; ``roundtrip`` sends one line and waits until the first
receiver has it, then sends the next.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import selectors
import socket
import time
from functools import partial
from typing import Any

import trio

from .harness import cores


class _Flusher:
    def __init__(self) -> None:
        self.dirty: dict[int, bytearray] = {}
        self.wake = trio.Event()

    def put(self, fd: int, data: bytes) -> None:
        buf = self.dirty.get(fd)
        if buf is None:
            self.dirty[fd] = bytearray(data)
            self.wake.set()
        else:
            buf += data

    def forget(self, fd: int) -> None:
        """A connection is closing: what is still queued for it is dropped (its number may be reused)."""
        self.dirty.pop(fd, None)

    async def run(self) -> None:
        while True:
            await self.wake.wait()
            self.wake = trio.Event()
            dirty, self.dirty = self.dirty, {}
            for fd, data in dirty.items():
                view = memoryview(data)
                while view:  # the floor does not model back-pressure: it blocks on a full buffer
                    try:
                        view = view[os.write(fd, view):]
                    except BlockingIOError:
                        try:
                            await trio.lowlevel.wait_writable(fd)
                        except trio.ClosedResourceError:
                            break  # closed while waiting: a load client that left
                    except OSError:
                        break  # a load client that left between scenarios
            await trio.lowlevel.checkpoint()


async def _serve(port_out: Any, hop: bool) -> None:
    flusher = _Flusher()
    receivers: list[int] = []

    async def handle(stream: trio.SocketStream) -> None:
        # A load client that leaves (reset, with unread data) ends its handler only, not the floor server.
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await serve(stream)

    async def serve(stream: trio.SocketStream) -> None:
        sock = stream.socket
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        fd = sock.fileno()
        role = await stream.receive_some(1)
        if role == b"R":
            receivers.append(fd)
            try:
                await stream.send_all(b"k")
                while await stream.receive_some(1024):
                    pass
            finally:
                receivers.remove(fd)
                flusher.forget(fd)
            return
        try:
            await relay(stream, fd)
        finally:
            flusher.forget(fd)

    async def relay(stream: trio.SocketStream, fd: int) -> None:
        tail = b""
        while True:
            data = await stream.receive_some(1 << 16)
            if not data:
                return
            data = tail + data
            cut = data.rfind(b"\n") + 1
            tail = data[cut:]
            lines = data[:cut].splitlines(keepends=True)
            if hop:
                await trio.to_thread.run_sync(len, lines)
            for line in lines:
                for r in receivers:
                    flusher.put(r, line)
                flusher.put(fd, b"ok\n")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(flusher.run)
        listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
        port_out.send(listeners[0].socket.getsockname()[1])


def _server(port_out: Any, hop: bool) -> None:
    if cores() > 1:
        os.sched_setaffinity(0, {0})
    trio.run(_serve, port_out, hop)


def _connect(port: int, role: bytes) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(role)
    if role == b"R":
        assert s.recv(1) == b"k"
    s.setblocking(False)
    return s


def _fanout(port: int, receivers: int, messages: int) -> float:
    rs = [_connect(port, b"R") for _ in range(receivers)]
    s = _connect(port, b"S")
    sel = selectors.DefaultSelector()
    for r in rs:
        sel.register(r, selectors.EVENT_READ)
    sel.register(s, selectors.EVENT_READ)
    line = b"~@" + b"x" * 30 + b"\n"
    batch = line * 100
    counts = dict.fromkeys(rs, 0)
    sent = acked = 0
    done = 0
    buf = bytearray(1 << 18)
    t0 = time.monotonic()
    while done < receivers:
        if sent < messages and sent - acked <= 900:
            s.sendall(batch)  # small: never more than the socket buffer holds at this window
            sent += 100
        for key, _ in sel.select(0 if sent < messages and sent - acked <= 900 else 0.05):
            sock: socket.socket = key.fileobj  # type: ignore[assignment]
            try:
                n = sock.recv_into(buf)
            except BlockingIOError:
                continue
            if sock is s:
                acked += buf.count(b"ok\n", 0, n)
                continue
            before = counts[sock]
            counts[sock] = before + buf.count(b"~@", 0, n)
            if before < messages <= counts[sock]:
                done += 1
    rate = messages * receivers / (time.monotonic() - t0)
    for sock in (*rs, s):
        sock.close()
    time.sleep(0.2)  # the server forgets these receivers before the next size
    return rate


def _roundtrip(port: int, receivers: int, seconds: float) -> tuple[float, float]:
    rs = [_connect(port, b"R") for _ in range(receivers)]
    s = _connect(port, b"S")
    sel = selectors.DefaultSelector()
    for conn in (*rs, s):
        sel.register(conn, selectors.EVENT_READ)
    line = b"~@" + b"x" * 30 + b"\n"
    buf = bytearray(1 << 16)
    times: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t = time.monotonic()
        s.sendall(line)
        got = False
        while not got:
            for key, _ in sel.select(1.0):
                sock: socket.socket = key.fileobj  # type: ignore[assignment]
                try:
                    n = sock.recv_into(buf)
                except BlockingIOError:
                    continue
                if sock is rs[0] and buf.count(b"~@", 0, n):
                    got = True
        times.append(time.monotonic() - t)
    for sock in (*rs, s):
        sock.close()
    times.sort()
    return len(times) / seconds, times[len(times) // 2] * 1e3


def _client(args: argparse.Namespace, port: int) -> None:
    if cores() > 1:
        os.sched_setaffinity(0, {1})
    if "fanout" in args.what:
        for size in args.sizes:
            rate = _fanout(port, size, max(2000, args.deliveries // size))
            print(f"floor{' (hop)' if args.hop else ''}: fan-out to {size}: {rate:,.0f} deliveries/s", flush=True)
    if "roundtrip" in args.what:
        rate, p50 = _roundtrip(port, 10, args.duration)
        print(f"floor{' (hop)' if args.hop else ''}: closed loop into 10: {rate:,.0f} msgs/s, "
              f"round trip p50 {p50:.3f} ms", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__.split("\n\n")[0])
    p.add_argument("--what", default="fanout,roundtrip", help="fanout, roundtrip or both (default both)")
    p.add_argument("--sizes", default="10,100", help="fan-out: receivers (default 10,100)")
    p.add_argument("--deliveries", type=int, default=2_000_000, help="fan-out: deliveries per size")
    p.add_argument("--duration", type=float, default=5.0, help="roundtrip: seconds")
    p.add_argument("--hop", action="store_true", help="a worker-thread round trip per read, as a commit")
    args = p.parse_args()
    args.sizes = [int(x) for x in args.sizes.split(",") if x]
    parent, child = multiprocessing.Pipe()
    server = multiprocessing.Process(target=_server, args=(child, args.hop), daemon=True)
    server.start()
    try:
        port = parent.recv()
        _client(args, port)
    finally:
        server.kill()
        server.join()


if __name__ == "__main__":
    main()
