"""Floods: one client sending as fast as it can into a room of normal clients; the normal clients' latency
with and without the flood (goal: p99 under the flood below twice p99 without).

The normal clients (``--room-size``, default 50) each send a message every ``1 / NORMAL_RATE`` seconds,
staggered, into one room, and receive everyone's; the latency is the time from a message's send to its
arrival at each of them, as in the latency scenario. The flooder, in a process of its own, joins the
same room and writes message requests back to back (a whole buffer per write), reading and dropping
whatever comes back; when the server disconnects it, it connects, logs in and joins again, at once.

Each server setting is measured on a fresh server: first ``--duration`` seconds quiet, then as long
with the flood. Two settings: the defaults (generous, so that the throughput benchmarks are never
throttled: the flood is then mostly accepted and fanned out) and the limits docs/SECURITY.md recommends
for a public server (``PUBLIC_LIMITS``), where the flood is refused and its sender disconnected.
"""

from __future__ import annotations

import json
import multiprocessing.connection
import selectors
import socket
import time
from array import array
from typing import Any

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

# What docs/SECURITY.md recommends for a server open to the internet. Every client of the benchmark
# comes from 127.0.0.1, so the connections-per-address cap is raised for it (the public value is 20).
PUBLIC_LIMITS = {
    "UTUVOX_SESSION_REQUESTS_PER_SECOND": "50", "UTUVOX_SESSION_REQUESTS_BURST": "200",
    "UTUVOX_USER_REQUESTS_PER_SECOND": "100", "UTUVOX_USER_REQUESTS_BURST": "400",
    "UTUVOX_SESSION_MESSAGES_PER_SECOND": "5", "UTUVOX_SESSION_MESSAGES_BURST": "20",
    "UTUVOX_USER_MESSAGES_PER_SECOND": "10", "UTUVOX_USER_MESSAGES_BURST": "40",
    "UTUVOX_SESSION_JOINS_PER_SECOND": "1", "UTUVOX_SESSION_JOINS_BURST": "20",
    "UTUVOX_USER_JOINS_PER_SECOND": "2", "UTUVOX_USER_JOINS_BURST": "40",
    "UTUVOX_SESSION_LOGINS_PER_SECOND": "0.2", "UTUVOX_SESSION_LOGINS_BURST": "5",
    "UTUVOX_USER_LOGINS_PER_SECOND": "1", "UTUVOX_USER_LOGINS_BURST": "10",
    "UTUVOX_RATE_LIMIT_STRIKES": "20",
    "UTUVOX_MAX_SESSIONS_PER_USER": "10",
    "UTUVOX_MAX_CONNECTIONS_PER_ADDRESS": "1000",
}
SETTINGS = {"defaults": {}, "public limits": PUBLIC_LIMITS}


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
    line = json.dumps({"type": "message", "text": FLOOD_TEXT}, separators=(",", ":")).encode() + b"\n"
    blob = line * (65536 // len(line))
    stats = {"bytes": 0, "line": len(line), "rate_limited": 0, "disconnects": 0, "refused_logins": 0,
             "connects": 0}
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
            client.step(dialect.login("flooder", register=not registered))
            registered = True
            client.step(dialect.enter(ROOM))
        except (BenchError, OSError):  # refused (rate_limited), or no answer in time
            stats["refused_logins"] += 1
            client.close()
            time.sleep(0.01)  # a flooder does not wait long
            continue
        _flood(client.sock, blob, stop, stats)
        client.close()
    pipe.send({"kind": "done", "cpu_s": time.process_time() - cpu, **stats})


def _flood(sock: socket.socket, blob: bytes, stop: float, stats: dict[str, int]) -> None:
    """Write ``blob`` again and again, reading and dropping the answers, until ``stop`` or disconnected."""
    sock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
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
    for name, env in SETTINGS.items():
        setting = f"{opts.room_size} clients at {NORMAL_RATE:g} msgs/s each; 1 flooder; {name}"
        with point(report, "flood", "utuvox/json", setting, "latency p99 flood / quiet"):
            _point(opts, report, name, env, setting)


def _point(opts: Options, report: Report, name: str, env: dict[str, str], setting: str) -> None:
    with temp_dir("utuvox-bench-") as work, ServerProcess(work, env=env, log_level=opts.server_log_level) as server:
        cfg = {"port": server.tcp_port, "clients": opts.room_size, "duration": opts.duration,
               "setup_timeout": opts.setup_timeout, "parallel": opts.parallel, "files": opts.room_size + 64}
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
            f"the flooder wrote ~{frames:,} messages, of which {done['flood_seen']:,} reached the room; it read "
            f"{flood['rate_limited']:,} rate_limited errors, was disconnected {flood['disconnects']} times, "
            f"{flood['refused_logins']} of its {flood['connects']} logins were refused")
    if done["closed"]:
        note += f"; {done['closed']} normal clients closed by the server"
    is_goal = name == "public limits"
    report.add(
        Figure("flood", "utuvox/json", setting, "latency p50 quiet", percentile(quiet, 0.5), "ms"),
        Figure("flood", "utuvox/json", setting, "latency p99 quiet", p99_quiet, "ms"),
        Figure("flood", "utuvox/json", setting, "latency p50 flooded", percentile(flooded, 0.5), "ms"),
        Figure("flood", "utuvox/json", setting, "latency p99 flooded", p99_flood, "ms"),
        Figure("flood", "utuvox/json", setting, "latency p99 flood / quiet", ratio, "x",
               "< 2" if is_goal else "", (ratio < 2 and not done["closed"]) if is_goal else None, note),
    )
    report.note(f"flood ({name}): {cpu_note(done)}, over both phases")


def _floats(raw: bytes) -> array[float]:
    values = array("d")
    values.frombytes(raw)
    return values


__all__ = ["PUBLIC_LIMITS", "flood_worker", "normal_worker", "run"]
