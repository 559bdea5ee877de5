"""Floods: one client attacking the server as fast as it can beside a room of normal clients; the normal
clients' latency with and without the flood (goals: p99 under a message flood below twice p99 without,
and under every flood below 100 ms).

The floods, each on a fresh server with the server's own defaults (the limits for a public server):

- ``messages``: message requests into the normal clients' room, back to back (a whole buffer per write);
- ``listings``: ``list_all_rooms`` pipelined, on a server with 3,000 rooms;
- ``history``: ``history`` with ``limit`` 500 pipelined in a room of long messages, reading nothing;
- ``logins``: logins with a wrong password, back to back.

The normal clients (``--room-size``, default 50) each send a message every ``1 / NORMAL_RATE`` seconds,
staggered, into one room, and receive everyone's; the latency is the time from a message's send to its
arrival at each of them, as in the latency scenario. The flooder, in a process of its own, joins the
same room and writes message requests back to back (a whole buffer per write), reading and dropping
whatever comes back; when the server disconnects it, it connects, logs in and joins again, at once.

Each flood is measured on a fresh server: first ``--duration`` seconds quiet, then as long with the
flood. The flooder reads and drops whatever comes back (but in the history flood); when the server
disconnects it, it connects, logs in and starts again, at once.
"""

from __future__ import annotations

import json
import multiprocessing.connection
import selectors
import socket
import time
from array import array
from pathlib import Path
from typing import Any

import trio

from utuvox.server.settings import UNTHROTTLED, VARIABLES
from utuvox.store import SqliteStore, StoredEvent

from ..clients import (
    MARK,
    BenchError,
    BlockingClient,
    Conn,
    Loop,
    count_pattern,
    make_dialect,
    probe_times,
    send_now,
    service,
    setup_steps,
)
from ..harness import Figure, Report, ServerProcess, Worker, cpu_seconds, percentile, temp_dir, wait_for
from . import Options, cpu_note, point

NORMAL_RATE = 2.0  # messages per second of each normal client
SETTLE = 1.0  # seconds between the phases, so that neither one's tail counts in the other
ROOM = "flood"
FLOOD_TEXT = "flood!" + "f" * 40
FLOOD_MARK = b'"flood!'  # the start of a flood message's text as it arrives (never split: a read holds it)

# The server's own defaults (the benchmarks' servers otherwise run without limits). Every client of the
# benchmark comes from 127.0.0.1, so the connections-per-address cap is raised for it (the default is 20).
DEFAULTS = {VARIABLES[name].env: str(VARIABLES[name].default) for name in UNTHROTTLED}
DEFAULTS["UTUVOX_MAX_CONNECTIONS_PER_ADDRESS"] = "1000"
FLOODS = ["messages", "listings", "history", "logins"]
ROOMS = 3000  # rooms on the server of the listing flood
ARCHIVE = "archive"  # a room of long messages, for the history flood
ARCHIVE_MESSAGES = 300


def _requests(kind: str) -> bytes:
    """A buffer of the flood's requests."""
    if kind == "messages":
        obj: dict[str, Any] = {"type": "message", "text": FLOOD_TEXT}
    elif kind == "listings":
        obj = {"type": "list_all_rooms"}
    elif kind == "history":
        obj = {"type": "history", "room": ARCHIVE, "limit": 500}
    else:
        obj = {"type": "login", "username": "flooder", "password": "wrong"}
    line = json.dumps(obj, separators=(",", ":")).encode() + b"\n"
    return line * max(1, 65536 // len(line))


def _prepare(db: Path, kind: str) -> None:
    """Rooms for the listing flood, or a room of long messages for the history flood, written into the
    database before the server starts (creating them through the server would meet its limits)."""
    if kind not in ("listings", "history"):
        return

    async def fill() -> None:
        store = await SqliteStore.open(db)
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            if kind == "listings":
                async with trio.open_nursery() as writers:
                    for i in range(ROOMS):
                        writers.start_soon(store.create_room, f"room{i:05d}", "someone")
            else:
                room = await store.create_room(ARCHIVE, "someone")
                done = trio.Event()
                left = [ARCHIVE_MESSAGES]

                def committed(_seq: int, _error: BaseException | None) -> None:
                    left[0] -= 1
                    if not left[0]:
                        done.set()

                for _ in range(ARCHIVE_MESSAGES):  # numbered by the store as it commits ("seq":0 in the body)
                    body = json.dumps({"type": "message", "ts": "2026-01-01T00:00:00Z", "room": ARCHIVE, "seq": 0,
                                       "user": "someone", "text": "a" * 3900}, separators=(",", ":"))
                    store.submit_event(StoredEvent(room.id, 0, 0.0, "message", "someone", body), committed)
                await done.wait()
            nursery.cancel_scope.cancel()
        await store.close()

    trio.run(fill)


# --- the normal clients ---------------------------------------------------------------------------


def normal_worker(pipe: multiprocessing.connection.Connection, cfg: dict[str, Any]) -> None:
    dialect = make_dialect("json")
    loop = Loop(cfg["port"], dialect)
    n = cfg["clients"]
    clients = [Conn(f"n{i}", setup_steps(dialect, f"n{i}", ROOM, create=i == 0)) for i in range(n)]
    deadline = time.monotonic() + cfg["setup_timeout"]
    try:
        loop.establish(clients[:1], parallel=1, deadline=deadline)
        loop.establish(clients[1:], parallel=cfg["parallel"], deadline=deadline)
        loop.drain()
        pipe.send({"kind": "ready"})
        go = wait_for(pipe, "go", cfg["setup_timeout"])
        cpu = time.process_time()
        result = _measure(loop, clients, go["t0"], cfg)
        pipe.send({"kind": "done", "cpu_s": time.process_time() - cpu, **result})
    finally:
        loop.close()


def _measure(loop: Loop, clients: list[Conn], t0: float, cfg: dict[str, Any]) -> dict[str, Any]:
    """Send on the schedule and time every arrival; samples are split by the phase of their send."""
    sel, rbuf = loop.sel, loop.rbuf
    duration = cfg["duration"]
    quiet = (t0, t0 + duration)
    flood = (t0 + duration + SETTLE, t0 + 2 * duration + SETTLE)
    bounds_ns = [(int(a * 1e9), int(b * 1e9)) for a, b in (quiet, flood)]
    interval = 1.0 / (NORMAL_RATE * len(clients))
    stop_sending = flood[1]
    samples = (array("d"), array("d"))
    sent = [0, 0]
    closed = 0
    flood_seen = 0  # flood messages that reached the first normal client, i.e. the room
    first = clients[0]
    mark = MARK.decode()
    i = 0
    grace_end = 0.0
    while True:
        now = time.monotonic()
        if now >= stop_sending:
            grace_end = grace_end or now + 5.0
            if now > grace_end or sum(map(len, samples)) >= sum(sent) * len(clients):
                break
        due = t0 + i * interval
        while due <= now and due < stop_sending:
            ns = time.monotonic_ns()
            sender = clients[i % len(clients)]
            if not sender.closed:
                send_now(sender, loop.dialect.message(f"{mark}{i % len(clients)}~{ns}~"))
                if sender.out:
                    sel.modify(sender.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, sender)  # type: ignore[arg-type]
                for phase, (a, b) in enumerate(bounds_ns):
                    if a <= ns < b:
                        sent[phase] += 1
            i += 1
            due = t0 + i * interval
        for key, mask in sel.select(max(0.0, min(due - time.monotonic(), 0.02))):
            c: Conn = key.data
            if c is None:
                continue
            got = service(sel, c, mask, rbuf)
            if got is None:
                continue
            arrived = time.monotonic_ns()
            if not got:
                closed += 1
                continue
            data = rbuf[:got]
            if c is first:
                flood_seen += count_pattern(c, data, FLOOD_MARK)
            for sent_ns in probe_times(c, data):
                for phase, (a, b) in enumerate(bounds_ns):
                    if a <= sent_ns < b:
                        samples[phase].append((arrived - sent_ns) / 1e6)
    return {"quiet": samples[0].tobytes(), "flood": samples[1].tobytes(), "sent": sent, "closed": closed,
            "flood_seen": flood_seen}


# --- the flooder ----------------------------------------------------------------------------------


def flood_worker(pipe: multiprocessing.connection.Connection, cfg: dict[str, Any]) -> None:
    dialect = make_dialect("json")
    pipe.send({"kind": "ready"})
    go = wait_for(pipe, "go", cfg["setup_timeout"])
    start, stop = go["t0"] + cfg["duration"] + SETTLE, go["t0"] + 2 * cfg["duration"] + SETTLE
    while time.monotonic() < start:
        time.sleep(min(0.05, start - time.monotonic()))
    kind = cfg["flood"]
    blob = _requests(kind)
    stats = {"bytes": 0, "line": len(blob.split(b"\n", 1)[0]) + 1, "rate_limited": 0, "disconnects": 0,
             "refused_logins": 0, "connects": 0}
    cpu = time.process_time()
    registered = False
    while time.monotonic() < stop:
        try:
            client = BlockingClient(cfg["port"], dialect, "flooder", timeout=5.0)
        except OSError:
            time.sleep(0.01)
            continue
        stats["connects"] += 1
        try:
            if kind != "logins":
                client.step(dialect.login("flooder", register=not registered))
                registered = True
                client.step(dialect.enter(ARCHIVE if kind == "history" else ROOM))
        except (BenchError, OSError):  # refused (rate_limited), or no answer in time
            stats["refused_logins"] += 1
            client.close()
            time.sleep(0.01)  # a flooder does not wait long
            continue
        _flood(client.sock, blob, stop, stats, read=kind != "history")
        client.close()
    pipe.send({"kind": "done", "cpu_s": time.process_time() - cpu, **stats})


def _flood(sock: socket.socket, blob: bytes, stop: float, stats: dict[str, int], *, read: bool = True) -> None:
    """Write ``blob`` again and again, reading and dropping the answers (or reading nothing), until
    ``stop`` or disconnected."""
    sock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(sock, (selectors.EVENT_READ if read else 0) | selectors.EVENT_WRITE)
    buf = bytearray(1 << 18)
    tail = b""
    pending = memoryview(blob)
    try:
        while time.monotonic() < stop:
            for _key, mask in sel.select(0.05):
                if mask & selectors.EVENT_READ:
                    try:
                        got = sock.recv_into(buf)
                    except BlockingIOError:
                        got = -1
                    except OSError:
                        got = 0
                    if got == 0:
                        stats["disconnects"] += 1
                        return
                    if got > 0:
                        data = tail + bytes(buf[:got])
                        stats["rate_limited"] += data.count(b'"rate_limited"')
                        tail = data[-20:]
                if mask & selectors.EVENT_WRITE:
                    try:
                        n = sock.send(pending)
                    except BlockingIOError:
                        continue
                    except OSError:
                        stats["disconnects"] += 1
                        return
                    stats["bytes"] += n
                    pending = pending[n:] if n < len(pending) else memoryview(blob)
    finally:
        sel.close()


# --- the run --------------------------------------------------------------------------------------


def run(opts: Options, report: Report) -> None:
    for kind in opts.floods:
        if kind not in FLOODS:
            raise BenchError(f"no flood called {kind!r}; there are {', '.join(FLOODS)}")
        setting = f"{opts.room_size} clients at {NORMAL_RATE:g} msgs/s each; 1 flooder: {kind}; default limits"
        with point(report, "flood", "utuvox/json", setting, "latency p99 flooded"):
            _point(opts, report, kind, setting)


def _point(opts: Options, report: Report, kind: str, setting: str) -> None:
    with temp_dir("utuvox-bench-") as work:
        _prepare(work / "utuvox_db.db", kind)
        with ServerProcess(work, env=DEFAULTS, log_level=opts.server_log_level) as server:
            _measure_point(opts, report, kind, setting, server)


def _measure_point(opts: Options, report: Report, kind: str, setting: str, server: ServerProcess) -> None:
    cfg = {"port": server.tcp_port, "clients": opts.room_size, "duration": opts.duration,
           "setup_timeout": opts.setup_timeout, "parallel": opts.parallel, "files": opts.room_size + 64,
           "flood": kind}
    with Worker(normal_worker, cfg) as normal, Worker(flood_worker, cfg) as flooder:
        normal.expect("ready", opts.setup_timeout + 30)
        flooder.expect("ready", opts.setup_timeout + 30)
        t0 = time.monotonic() + 0.5
        cpu_before = cpu_seconds(server.pid)
        normal.tell("go", t0=t0)
        flooder.tell("go", t0=t0)
        done = normal.expect("done", 2 * opts.duration + SETTLE + 60)
        wall = time.monotonic() - t0
        done["server_cpu"] = 100 * (cpu_seconds(server.pid) - cpu_before) / wall
        done["client_cpu"] = 100 * done["cpu_s"] / wall
        flood = flooder.expect("done", 30)
    quiet, flooded = (sorted(_floats(done[k])) for k in ("quiet", "flood"))
    p99_quiet, p99_flood = percentile(quiet, 0.99), percentile(flooded, 0.99)
    ratio = p99_flood / p99_quiet if p99_quiet > 0 else float("nan")
    expected = [n * opts.room_size for n in done["sent"]]
    frames = flood["bytes"] // flood["line"]
    note = (f"arrivals measured {len(quiet):,}/{expected[0]:,} quiet, {len(flooded):,}/{expected[1]:,} flooded; "
            f"the flooder wrote ~{frames:,} requests, of which {done['flood_seen']:,} reached the room; it read "
            f"{flood['rate_limited']:,} rate_limited errors, was disconnected {flood['disconnects']} times, "
            f"{flood['refused_logins']} of its {flood['connects']} logins were refused")
    if done["closed"]:
        note += f"; {done['closed']} normal clients closed by the server"
    ratio_goal = kind == "messages"
    report.add(
        Figure("flood", "utuvox/json", setting, "latency p50 quiet", percentile(quiet, 0.5), "ms"),
        Figure("flood", "utuvox/json", setting, "latency p99 quiet", p99_quiet, "ms"),
        Figure("flood", "utuvox/json", setting, "latency p50 flooded", percentile(flooded, 0.5), "ms"),
        Figure("flood", "utuvox/json", setting, "latency p99 flooded", p99_flood, "ms", "< 100",
               p99_flood < 100 and not done["closed"]),
        Figure("flood", "utuvox/json", setting, "latency p99 flood / quiet", ratio, "x",
               "< 2" if ratio_goal else "", (ratio < 2 and not done["closed"]) if ratio_goal else None, note),
    )
    report.note(f"flood ({kind}): {cpu_note(done)}, over both phases")


def _floats(raw: bytes) -> array[float]:
    values = array("d")
    values.frombytes(raw)
    return values


__all__ = ["DEFAULTS", "flood_worker", "normal_worker", "run"]
