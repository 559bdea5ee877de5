"""Latency: one sender at a steady rate into a room of receivers; the time from a message's send to
its arrival at each receiver, in milliseconds (p50, p99, max).

The sender writes its send time (``time.monotonic_ns()``, one clock for every process of the machine)
into each message; receivers read it back out of the raw bytes. The first ``warmup`` seconds are sent
but not counted. The same worker can run a login storm beside the probe, for the ``login`` scenario.
"""

from __future__ import annotations

import multiprocessing.connection
import selectors
import socket
import time
from array import array
from typing import Any

from ..clients import (
    MARK,
    PROBE,
    RECEIVER,
    SENDER,
    BenchError,
    Conn,
    Loop,
    _open,
    flush,
    make_dialect,
    probe_times,
    send_now,
    service,
    setup_steps,
)
from ..harness import Figure, Report, Worker, percentile, temp_dir, wait_for
from . import Options, cpu_note, measure, open_target, point, spread, worker_config

LOGIN = 3
ERROR_FRAME = b'"type":"error"'


class LoginStorm:
    """``concurrency`` clients that each connect, log in, disconnect and start over, until told to stop."""

    def __init__(self, loop: Loop, users: list[str], concurrency: int) -> None:
        self.loop = loop
        self.users = users
        self.concurrency = concurrency
        self.active = 0
        self.started = 0
        self.times: array[float] = array("d")  # seconds from connect to logged in
        self.failures = 0
        self.stopping = False
        self.first_error: str | None = None

    def top_up(self) -> None:
        while not self.stopping and self.active < self.concurrency:
            user = self.users[self.started % len(self.users)]
            d = self.loop.dialect
            conn = Conn(f"login{self.started}", [*d.connect_steps(user), d.login(user, register=False)], role=LOGIN)
            conn.extra["t0"] = time.monotonic()
            _open(conn, self.loop.port)
            self.loop.sel.register(conn.sock, selectors.EVENT_WRITE, conn)  # type: ignore[arg-type]
            self.active += 1
            self.started += 1

    def on_event(self, conn: Conn, mask: int) -> None:
        loop = self.loop
        if mask & selectors.EVENT_WRITE:
            if not conn.connected:
                if conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):  # type: ignore[union-attr]
                    self._finish(conn, ok=False)
                    return
                conn.connected = True
                send_now(conn, conn.steps[0].send)
            if flush(conn):
                loop.sel.modify(conn.sock, selectors.EVENT_READ, conn)  # type: ignore[arg-type]
            return
        try:
            data = conn.sock.recv(65536)  # type: ignore[union-attr]
        except BlockingIOError:
            return
        except ConnectionError:
            data = b""
        if not data:
            self._finish(conn, ok=False)
            return
        conn.buf += data
        try:
            done = loop.advance(conn)
        except BenchError as exc:
            self.first_error = self.first_error or str(exc)
            self._finish(conn, ok=False)
            return
        if done:
            self._finish(conn, ok=True)

    def _finish(self, conn: Conn, *, ok: bool) -> None:
        if ok:
            self.times.append(time.monotonic() - conn.extra["t0"])  # type: ignore[operator]
        else:
            self.failures += 1
        self.loop.sel.unregister(conn.sock)  # type: ignore[arg-type]
        conn.sock.close()  # type: ignore[union-attr]
        conn.sock = None
        self.active -= 1


def worker(pipe: multiprocessing.connection.Connection, cfg: dict[str, Any]) -> None:
    dialect = make_dialect(cfg["transport"], cfg["ws_port"], cfg.get("target", "utuvox"))
    loop = Loop(cfg["port"], dialect)
    room = cfg["room"]
    deadline = time.monotonic() + cfg["setup_timeout"]
    sender = Conn("p0", setup_steps(dialect, "p0", room, create=True), role=SENDER)
    receivers = [Conn(f"l{i}", setup_steps(dialect, f"l{i}", room), role=RECEIVER) for i in range(cfg["receivers"])]
    spread(receivers, cfg["ports"])  # the sender on the first node, half the receivers on the second
    storm = None
    try:
        loop.establish([sender], parallel=1, deadline=deadline)
        setup_s = loop.establish(receivers, parallel=cfg["parallel"], deadline=deadline)
        if cfg.get("login_concurrency"):
            users = [f"g{i}" for i in range(cfg["login_users"])]
            accounts = [Conn(u, setup_steps(dialect, u, None), role=PROBE) for u in users]
            loop.establish(accounts, parallel=cfg["parallel"], deadline=deadline)
            storm = LoginStorm(loop, users, cfg["login_concurrency"])
        loop.drain()
        pipe.send({"kind": "ready", "setup_s": setup_s})
        wait_for(pipe, "go", cfg["setup_timeout"])
        cpu = time.process_time()
        result = _run(loop, sender, receivers, storm, cfg)
        pipe.send({"kind": "done", "cpu_s": time.process_time() - cpu, **result})
    finally:
        loop.close()


def _run(loop: Loop, sender: Conn, receivers: list[Conn], storm: LoginStorm | None,
         cfg: dict[str, Any]) -> dict[str, Any]:
    dialect = loop.dialect
    sel = loop.sel
    rbuf = loop.rbuf
    interval = 1.0 / cfg["rate"]
    t0 = time.monotonic()
    measure_from = t0 + cfg["warmup"]
    measure_from_ns = int(measure_from * 1e9)
    stop_sending = measure_from + cfg["duration"]
    hard_end = t0 + cfg["timeout"]
    pad = "x" * max(0, cfg["text_size"] - 24)
    mark = MARK.decode()
    samples: array[float] = array("d")
    measured_sent = 0
    received = 0
    errors = 0
    i = 0
    grace_end = 0.0
    storm_seconds = 0.0
    if storm is not None:
        storm.top_up()
    while True:
        now = time.monotonic()
        if now >= stop_sending:
            if storm is not None and not storm.stopping:
                storm.stopping = True
                storm_seconds = now - t0
            expected = measured_sent * len(receivers)
            if not grace_end:
                grace_end = now + 5.0
            if received >= expected or now > grace_end or now > hard_end:
                break
        elif now > hard_end:
            break
        due = t0 + i * interval
        if due <= now and due < stop_sending:
            out = []
            while due <= now and due < stop_sending:
                ns = time.monotonic_ns()
                out.append(dialect.message(f"{mark}0~{ns}~{pad}"))
                if ns >= measure_from_ns:
                    measured_sent += 1
                i += 1
                due = t0 + i * interval
            send_now(sender, b"".join(out))
            if sender.out:
                sel.modify(sender.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, sender)  # type: ignore[arg-type]
        wait = max(0.0, min(due - time.monotonic(), 0.05)) if due < stop_sending else 0.05
        for key, mask in sel.select(wait):
            c: Conn = key.data
            if c is None:
                continue
            if c.role == LOGIN:
                storm.on_event(c, mask)  # type: ignore[union-attr]
                continue
            n = service(sel, c, mask, rbuf)
            if n is None:
                continue
            arrived = time.monotonic_ns()
            if not n:
                continue
            if c.role != RECEIVER:
                if ERROR_FRAME in rbuf[:n]:
                    errors += 1
                continue
            for sent_ns in probe_times(c, rbuf[:n]):
                if sent_ns >= measure_from_ns:
                    samples.append((arrived - sent_ns) / 1e6)
                    received += 1
        if storm is not None and not storm.stopping:
            storm.top_up()
    result: dict[str, Any] = {
        "samples": samples.tobytes(),
        "expected": measured_sent * len(receivers),
        "received": received,
        "sent": measured_sent,
        "errors": errors,
        "closed": sum(1 for r in receivers if r.closed),
    }
    if storm is not None:
        result.update(logins=len(storm.times), login_failures=storm.failures,
                      login_seconds=storm_seconds or time.monotonic() - t0,
                      login_times=storm.times.tobytes(), login_error=storm.first_error)
    return result


def summarize(done: dict[str, Any]) -> tuple[list[float], float, float, float]:
    values = array("d")
    values.frombytes(done["samples"])
    ordered = sorted(values)
    if not ordered:
        return ordered, float("nan"), float("nan"), float("nan")
    return ordered, percentile(ordered, 0.50), percentile(ordered, 0.99), ordered[-1]


def latency_figures(scenario: str, label: str, setting: str, done: dict[str, Any], p99_goal: float | None,
                    ) -> list[Figure]:
    _ordered, p50, p99, worst = summarize(done)
    complete = done["received"] == done["expected"]
    note = f"{done['received']:,} of {done['expected']:,} arrivals measured; {cpu_note(done)}"
    if done["closed"]:
        note += f"; {done['closed']} receivers closed by the server"
    if done["errors"]:
        note += f"; {done['errors']} error replies"
    goal = f"p99 ≤ {p99_goal:g} ms" if p99_goal is not None else ""
    return [
        Figure(scenario, label, setting, "latency p50", p50, "ms"),
        Figure(scenario, label, setting, "latency p99", p99, "ms", goal,
               (p99 <= p99_goal and complete) if p99_goal is not None else None, note),
        Figure(scenario, label, setting, "latency max", worst, "ms"),
    ]


def run(opts: Options, report: Report) -> None:
    setting = f"{opts.rate:g} msgs/s into {opts.room_size} receivers"
    for target, transport in opts.targets:
        with point(report, "latency", f"{target}/{transport}", setting, "latency p99"):
            _latency_point(opts, report, target, transport, setting)


def _latency_point(opts: Options, report: Report, target: str, transport: str, setting: str) -> None:
    label = f"{target}/{transport}"
    with temp_dir("utuvox-bench-") as work, open_target(target, work, opts) as server:
        cfg = worker_config(server, transport, opts, room="lat", receivers=opts.room_size, rate=opts.rate,
                            duration=opts.duration, warmup=opts.warmup, text_size=opts.text_size,
                            files=opts.room_size + 64)
        with Worker(worker, cfg) as w:
            _ready, done, summary = measure(server, w, opts, f"latency-{target}-{transport}")
    goal = 5.0 if target == "utuvox" and opts.rate >= 1000 and opts.room_size >= 50 else None
    report.add(*latency_figures("latency", label, setting, done, goal))
    ordered, *_ = summarize(done)
    report.series.setdefault("latency", {})[label] = ordered
    if summary:
        report.series.setdefault("profiles", {})[f"latency {label} {setting}"] = summary
