"""File transfer benchmark: ``python -m bench.files [--size MIB] [--transports tcp,ws] [--pin]``.

Starts the real server as a subprocess (``python -m utuvox serve`` on port 0, in a temporary data
directory), then for each transport uploads a file of ``--size`` MiB and downloads it back over loopback,
checking the SHA-256 both ways, and prints MB/s each way (MB = 10^6 bytes) and the server's memory: its
resident set before the transfers, its peak during each one (``VmHWM`` from ``/proc/<pid>/status``,
reset before each transfer through ``/proc/<pid>/clear_refs``) and the growth, peak minus before.

The client is this file's own, minimal and fast, so that the figures are the server's: it speaks the
protocol of ``utuvox/protocol/files.py`` with frames built and picked apart by hand (JSON lines on TCP,
one text message per frame on WebSocket). The timed part of an upload runs from the ``upload`` request to
the ``uploaded`` answer, so it includes the server's hash check, the move into ``uploads/`` and the
commit; the client's own hashing of the file beforehand is not timed. A download runs from the
``download`` request to ``download_end``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
import trio_websocket

from utuvox.server.settings import unthrottled_env

from .harness import cpu_model

try:
    import pybase64 as b64
except ImportError:  # pragma: no cover
    import base64 as b64

MiB = 1024 * 1024
USER, PASSWORD, ROOM = "bench", "bench-password", "bench"


# --- the server ---------------------------------------------------------------------------------


@dataclass
class ServerProcess:
    proc: subprocess.Popen[str]
    tcp_port: int
    ws_port: int
    data_dir: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def status(self, field: str) -> int:
        """A ``kB`` field of /proc/<pid>/status, in bytes."""
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        raise KeyError(field)

    def cpu_seconds(self, *, main_thread: bool = False) -> float:
        """User plus system CPU time of the server so far: all its threads, or its main thread (the event
        loop; the rest is worker threads: file writes and hashing, SQLite)."""
        where = f"/proc/{self.pid}/task/{self.pid}/stat" if main_thread else f"/proc/{self.pid}/stat"
        with open(where) as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def reset_peak(self) -> bool:
        """Reset VmHWM to the current RSS (Linux: write 5 to clear_refs). False if not allowed."""
        try:
            with open(f"/proc/{self.pid}/clear_refs", "w") as refs:
                refs.write("5")
            return True
        except OSError:
            return False


@contextlib.contextmanager
def server(size: int, *, pin: bool) -> Iterator[ServerProcess]:
    data_dir = Path(tempfile.mkdtemp(prefix="utuvox-bench-files-"))
    env = {**os.environ, **unthrottled_env(), "UTUVOX_MAX_UPLOAD_BYTES": str(max(size, 1) * 2),
           "UTUVOX_LOG_LEVEL": "WARNING",
           "UTUVOX_ARGON2_MEMORY_KIB": "1024", "UTUVOX_ARGON2_TIME_COST": "1"}
    command = [sys.executable, "-m", "utuvox", "serve", "--host", "127.0.0.1", "--port", "0", "--ws-port", "0",
               "--irc-port", "0",
               "--data-dir", str(data_dir)]
    if pin:
        command = ["taskset", "-c", "0", *command]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        ports: dict[str, int] = {}
        deadline = time.monotonic() + 30
        while len(ports) < 2:
            line = proc.stdout.readline() if proc.stdout else ""
            if not line:
                if proc.poll() is not None or time.monotonic() > deadline:
                    err = proc.stderr.read() if proc.stderr else ""
                    raise RuntimeError(f"the server did not start: {err.strip()[-2000:]}")
                continue
            if m := re.match(r"Server started on .*:(\d+)$", line.strip()):
                ports["tcp"] = int(m.group(1))
            elif m := re.match(r"WebSocket server started on ws://.*:(\d+)$", line.strip()):
                ports["ws"] = int(m.group(1))
        # Drain the server's output so that it never blocks on a full pipe.
        for stream in (proc.stdout, proc.stderr):
            threading.Thread(target=lambda s=stream: [None for _ in s], daemon=True).start()
        yield ServerProcess(proc, ports["tcp"], ports["ws"], data_dir)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(data_dir, ignore_errors=True)


# --- a minimal client ---------------------------------------------------------------------------


class Tcp:
    """JSON lines over TCP. Received lines are picked apart by hand where that is hot (download chunks)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = bytearray()
        self.out: list[bytes] = []
        self.out_bytes = 0

    @classmethod
    async def connect(cls, port: int) -> Tcp:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def send(self, *parts: bytes) -> None:
        """Queue one frame given in parts (without its newline); the queue is written, in one copy, once it
        holds ~1 MiB."""
        self.out.extend(parts)
        self.out.append(b"\n")
        self.out_bytes += sum(map(len, parts)) + 1
        if self.out_bytes >= MiB:
            await self.flush()

    async def flush(self) -> None:
        if self.out:
            data = b"".join(self.out)
            self.out.clear()
            self.out_bytes = 0
            await self.stream.send_all(data)

    async def recv(self) -> bytes:
        while True:
            nl = self.buf.find(b"\n")
            if nl >= 0:
                line = bytes(self.buf[:nl])
                del self.buf[: nl + 1]
                return line
            data = await self.stream.receive_some(1 << 20)
            if not data:
                raise EOFError("the server closed the connection")
            self.buf += data

    async def aclose(self) -> None:
        await self.stream.aclose()


class Ws:
    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self.ws = ws

    async def send(self, *parts: bytes) -> None:
        await self.ws.send_message(b"".join(parts).decode())

    async def flush(self) -> None:
        pass

    async def recv(self) -> bytes:
        message = await self.ws.get_message()
        return message.encode() if isinstance(message, str) else message


Conn = Tcp | Ws


async def request(conn: Conn, frame: dict[str, Any]) -> dict[str, Any]:
    await conn.send(json.dumps(frame).encode())
    await conn.flush()
    while True:
        reply = json.loads(await conn.recv())
        if reply.get("re") == frame.get("id"):
            return reply


async def login(conn: Conn, first: bool) -> None:
    reply = await request(conn, {"type": "register" if first else "login", "id": "login", "username": USER,
                                 "password": PASSWORD})
    assert reply["type"] == "logged_in", reply
    reply = await request(conn, {"type": "create" if first else "join", "id": "room", "room": ROOM})
    assert reply["type"] == "joined", reply


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(4 * MiB):
            digest.update(block)
    return digest.hexdigest()


async def upload(conn: Conn, path: Path, size: int, sha256: str) -> tuple[str, float]:
    """Upload ``path``; returns (unique name, seconds)."""
    started = time.perf_counter()
    ready = await request(conn, {"type": "upload", "id": "up", "room": ROOM, "name": path.name, "size": size,
                                 "sha256": sha256})
    assert ready["type"] == "upload_ready", ready
    upload_id, chunk = ready["upload_id"], ready["chunk_size"]
    head = b'{"type":"upload_chunk","upload_id":"' + upload_id.encode() + b'","offset":'
    block = max(1, (4 * MiB) // chunk) * chunk
    offset = 0
    with path.open("rb", buffering=0) as f:
        while True:
            data = f.read(block)
            view = memoryview(data)
            for i in range(0, max(len(data), 1), chunk):
                piece = view[i:i + chunk]
                final = offset + len(piece) >= size
                tail = b'","id":"done"}' if final else b'"}'
                await conn.send(head, str(offset).encode(), b',"data":"', b64.b64encode(piece), tail)
                offset += len(piece)
                if final:
                    break
            if offset >= size:
                break
    await conn.flush()
    while True:
        line = await conn.recv()
        if b'"re":"done"' in line:
            reply = json.loads(line)
            assert reply["type"] == "uploaded", reply
            return reply["name"], time.perf_counter() - started


async def download(conn: Conn, name: str, expect_sha256: str) -> tuple[int, float]:
    """Download ``name``, hashing what arrives; returns (bytes, seconds)."""
    started = time.perf_counter()
    await conn.send(json.dumps({"type": "download", "id": "down", "name": name}).encode())
    await conn.flush()
    digest = hashlib.sha256()
    received = 0
    while True:
        line = await conn.recv()
        if line.startswith(b'{"type":"download_chunk"'):
            at = line.index(b'"data":"') + 8
            data = b64.b64decode(line[at:line.index(b'"', at)])
            digest.update(data)
            received += len(data)
            continue
        frame = json.loads(line)
        if frame.get("re") == "down":
            assert frame["type"] == "download_start", frame
        elif frame["type"] == "download_end":
            break
        elif frame["type"] == "download_failed":
            raise RuntimeError(f"download failed: {frame}")
    elapsed = time.perf_counter() - started
    if digest.hexdigest() != expect_sha256:
        raise RuntimeError("the downloaded bytes differ from the uploaded ones")
    return received, elapsed


@contextlib.asynccontextmanager
async def connect(transport: str, srv: ServerProcess) -> Any:
    if transport == "tcp":
        conn = await Tcp.connect(srv.tcp_port)
        try:
            yield conn
        finally:
            await conn.aclose()
    else:
        async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{srv.ws_port}",
                                                     max_message_size=16 * MiB, receive_buffer_size=MiB) as ws:
            yield Ws(ws)


# --- the run ------------------------------------------------------------------------------------


@dataclass
class Figures:
    transport: str
    up_mbps: float
    down_mbps: float
    rss_before: int
    peak_up: int
    peak_down: int
    cpu_up: float  # server CPU seconds per second of transfer
    cpu_down: float
    loop_up: float  # the same, of the server's main thread (its event loop) only
    loop_down: float
    client_cpu_up: float
    client_cpu_down: float

    @property
    def growth(self) -> int:
        return max(self.peak_up, self.peak_down) - self.rss_before


async def measure(transport: str, srv: ServerProcess, path: Path, size: int, sha256: str, first: bool) -> Figures:
    async with connect(transport, srv) as conn:
        await login(conn, first)
        await trio.sleep(0.2)
        rss_before = srv.status("VmRSS")
        srv.reset_peak()
        cpu, loop, mine = srv.cpu_seconds(), srv.cpu_seconds(main_thread=True), time.process_time()
        name, up_s = await upload(conn, path, size, sha256)
        cpu_up, mine_up = srv.cpu_seconds() - cpu, time.process_time() - mine
        loop_up = srv.cpu_seconds(main_thread=True) - loop
        peak_up = srv.status("VmHWM")
        srv.reset_peak()
        cpu, loop, mine = srv.cpu_seconds(), srv.cpu_seconds(main_thread=True), time.process_time()
        received, down_s = await download(conn, name, sha256)
        cpu_down, mine_down = srv.cpu_seconds() - cpu, time.process_time() - mine
        loop_down = srv.cpu_seconds(main_thread=True) - loop
        peak_down = srv.status("VmHWM")
        assert received == size
    return Figures(transport, size / up_s / 1e6, size / down_s / 1e6, rss_before, peak_up, peak_down,
                   cpu_up / up_s, cpu_down / down_s, loop_up / up_s, loop_down / down_s, mine_up / up_s,
                   mine_down / down_s)


def make_file(directory: Path, size: int) -> tuple[Path, str]:
    """A file of ``size`` pseudo-random bytes (incompressible, no repeated blocks), and its SHA-256."""
    path = directory / "payload.bin"
    seed = os.urandom(MiB)
    digest = hashlib.sha256()
    with path.open("wb") as f:
        written, n = 0, 0
        while written < size:
            block = hashlib.sha256(n.to_bytes(8, "big")).digest() * 2 + seed  # cheap and unique per MiB
            block = block[: min(len(block), size - written)]
            f.write(block)
            digest.update(block)
            written += len(block)
            n += 1
    return path, digest.hexdigest()


def machine() -> str:
    return f"{os.cpu_count()} cores ({cpu_model()}), Linux {platform.release()}, " \
           f"Python {platform.python_version()}, base64: {b64.__name__}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.files", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="file size in MiB (default 256)")
    parser.add_argument("--transports", default="tcp,ws", help="tcp, ws or both (default tcp,ws)")
    parser.add_argument("--pin", action="store_true", help="run the server on core 0 only (taskset)")
    args = parser.parse_args(argv)
    size = args.size * MiB
    transports = [t for t in args.transports.split(",") if t]
    print(f"machine: {machine()}")
    pinned = ", pinned to core 0" if args.pin else ""
    print(f"file: {args.size} MiB; server: python -m utuvox serve (subprocess{pinned})")
    with tempfile.TemporaryDirectory(prefix="utuvox-bench-payload-") as tmp:
        path, sha256 = make_file(Path(tmp), size)
        with server(size, pin=args.pin) as srv:
            results = []
            for i, transport in enumerate(transports):
                results.append(trio.run(measure, transport, srv, path, size, sha256, i == 0))
            print(f"server RSS after startup and login: {results[0].rss_before / MiB:.1f} MiB")
            print(f"{'transport':<10}{'upload MB/s':>13}{'download MB/s':>15}{'peak RSS up':>14}"
                  f"{'peak RSS down':>15}{'RSS growth':>12}")
            for r in results:
                print(f"{r.transport:<10}{r.up_mbps:>13.1f}{r.down_mbps:>15.1f}{r.peak_up / MiB:>11.1f} MiB"
                      f"{r.peak_down / MiB:>12.1f} MiB{r.growth / MiB:>8.1f} MiB")
            print("CPU busy during each transfer (1.0 = one core), server (its event loop) / client:")
            for r in results:
                print(f"  {r.transport}: upload {r.cpu_up:.2f} ({r.loop_up:.2f}) / {r.client_cpu_up:.2f}; "
                      f"download {r.cpu_down:.2f} ({r.loop_down:.2f}) / {r.client_cpu_down:.2f}")
            print("server event-loop CPU per MB (the serial part; 1 / this = MB/s it could sustain on one core):")
            for r in results:
                print(f"  {r.transport}: upload {r.loop_up / r.up_mbps * 1e3:.2f} ms/MB, "
                      f"download {r.loop_down / r.down_mbps * 1e3:.2f} ms/MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
