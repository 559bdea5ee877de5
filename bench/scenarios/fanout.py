"""Fan-out: N receivers in one room, senders pipelining messages into it; deliveries per second and
whether every expected delivery arrived. ``acked`` is the same machinery with many senders, each in a
room of its own and no receivers: acknowledged (committed) messages per second.

Senders pipeline: they send batches of messages without waiting, keeping at most ``window`` of their
own unacknowledged, and (in a fan-out) never running more than ``lag`` messages ahead of the slowest
receiver, so that a load generator slower than the server shows up as a lower rate rather than as the
server cutting receivers off for falling behind.
"""

from __future__ import annotations

import math
import multiprocessing.connection
import selectors
import time
from collections import deque
from typing import Any

from ..clients import (
    MARK,
    RECEIVER,
    SENDER,
    Conn,
    Loop,
    count_mark,
    count_pattern,
    make_dialect,
    send_now,
    service,
    setup_steps,
)
from ..harness import Figure, Report, Worker, temp_dir, wait_for
from . import Options, cpu_note, measure, open_target, point, spread, worker_config

BATCH = 100  # messages per write of a sender
ERROR_FRAME = b'"type":"error"'


def worker(pipe: multiprocessing.connection.Connection, cfg: dict[str, Any]) -> None:
    dialect = make_dialect(cfg["transport"], cfg["ws_port"], cfg.get("target", "utuvox"))
    loop = Loop(cfg["port"], dialect)
    room = cfg["room"]
    per_sender_rooms = cfg.get("per_sender_rooms", False)
    deadline = time.monotonic() + cfg["setup_timeout"]
    senders = [Conn(f"s{i}", setup_steps(dialect, f"s{i}", f"{room}{i}" if per_sender_rooms else room,
                                         create=per_sender_rooms or i == 0), role=SENDER)
               for i in range(cfg["senders"])]
    receivers = [Conn(f"r{i}", setup_steps(dialect, f"r{i}", room), role=RECEIVER) for i in range(cfg["receivers"])]
    spread(senders, cfg["ports"])
    spread(receivers, cfg["ports"])
    try:
        # The first sender creates the room before anybody joins it.
        loop.establish(senders[:1], parallel=1, deadline=deadline)
        setup_s = loop.establish(senders[1:] + receivers, parallel=cfg["parallel"], deadline=deadline)
        loop.drain()
        pipe.send({"kind": "ready", "setup_s": setup_s})
        wait_for(pipe, "go", cfg["setup_timeout"])
        cpu = time.process_time()
        result = _run(loop, senders, receivers, cfg)
        pipe.send({"kind": "done", "cpu_s": time.process_time() - cpu, **result})
    finally:
        loop.close()


def _run(loop: Loop, senders: list[Conn], receivers: list[Conn], cfg: dict[str, Any]) -> dict[str, Any]:
    dialect = loop.dialect
    irc = dialect.name == "irc"
    per_sender = cfg["messages"]
    window = cfg["window"]
    lag = cfg["lag"]
    total_expected = per_sender * len(senders)  # what each receiver should get
    for i, s in enumerate(senders):
        text = f"{MARK.decode()}{i}~0~"
        text += "x" * max(0, cfg["text_size"] - len(text))
        one = dialect.message(text)
        s.extra["one"] = one
        s.extra["blob"] = one * BATCH
        s.extra["ack"] = dialect.ack_pattern(i)
        s.extra["batches"] = deque()  # IRC: sizes of the bursts each PING acknowledges
    ping = dialect.ping().send if irc else b""
    sel = loop.sel
    rbuf = loop.rbuf
    receivers_left = len(receivers)
    senders_left = len(senders)
    closed: list[str] = []
    errors = 0
    total_sent = 0
    slowest = 0  # the slowest receiver's count, refreshed only when it holds a sender back
    t_go = time.monotonic()
    t_last_ack = t_go
    end = t_go + cfg["timeout"]
    while receivers_left or senders_left:
        now = time.monotonic()
        if now > end:
            break
        can_send = False
        for s in senders:
            if s.sent >= per_sender or s.out or s.closed:
                continue
            room_left = window - (s.sent - s.acks)
            if receivers and total_sent + BATCH - slowest > lag:
                slowest = min(r.count for r in receivers)
                room_left = min(room_left, lag - (total_sent - slowest))
            n = min(room_left, per_sender - s.sent, BATCH)
            if n <= 0:
                continue
            one: bytes = s.extra["one"]  # type: ignore[assignment]
            blob: bytes = s.extra["blob"]  # type: ignore[assignment]
            send_now(s, (blob if n == BATCH else one * n) + ping)
            if irc:
                s.extra["batches"].append(n)  # type: ignore[attr-defined]
            if s.out:
                sel.modify(s.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, s)  # type: ignore[arg-type]
            s.sent += n
            total_sent += n
            can_send = can_send or s.sent < per_sender
        for key, mask in sel.select(0 if can_send else 0.02):
            c: Conn = key.data
            if c is None:
                continue
            n = service(sel, c, mask, rbuf)
            if n is None:
                continue
            if c.role == RECEIVER:
                if n == 0:
                    closed.append(c.name)
                    if c.count < total_expected:
                        receivers_left -= 1
                    continue
                got = count_mark(c, rbuf, n)
                if got:
                    before = c.count
                    c.count = before + got
                    c.last = now
                    if before < total_expected <= c.count:
                        receivers_left -= 1
                continue
            if not n:
                closed.append(c.name)
                senders_left -= 1
                continue
            data = rbuf[:n]
            if ERROR_FRAME in data:
                errors += data.count(ERROR_FRAME)
            acked = count_pattern(c, data, c.extra["ack"])  # type: ignore[arg-type]
            if acked:
                if irc:
                    batches: deque[int] = c.extra["batches"]  # type: ignore[assignment]
                    acked = sum(batches.popleft() for _ in range(min(acked, len(batches))))
                before = c.acks
                c.acks = before + acked
                t_last_ack = now
                if before < per_sender <= c.acks:
                    senders_left -= 1
    t_last = max((r.last for r in receivers), default=t_go)
    return {
        "t_go": t_go,
        "elapsed": time.monotonic() - t_go,
        "sent": total_sent,
        "acked": sum(s.acks for s in senders),
        "ack_seconds": t_last_ack - t_go,
        "delivered": sum(r.count for r in receivers),
        "expected": total_expected * len(receivers),
        "delivery_seconds": t_last - t_go,
        "closed": closed,
        "errors": errors,
        "timed_out": bool(receivers_left or senders_left),
    }


def messages_per_sender(opts: Options, receivers: int) -> int:
    if opts.messages:
        return opts.messages
    return max(200, math.ceil(opts.deliveries / (max(receivers, 1) * opts.senders)))


def run(opts: Options, report: Report) -> None:
    for target, transport in opts.targets:
        label = f"{target}/{transport}"
        for size in opts.sizes:
            setting = f"{size} receivers, {opts.senders} sender{'s' if opts.senders > 1 else ''}"
            with point(report, "fanout", label, setting, "deliveries/s"):
                _fanout_point(opts, report, target, transport, size, setting)


def _fanout_point(opts: Options, report: Report, target: str, transport: str, size: int, setting: str) -> None:
    label = f"{target}/{transport}"
    per_sender = messages_per_sender(opts, size)
    with temp_dir("utuvox-bench-") as work, open_target(target, work, opts) as server:
        cfg = worker_config(server, transport, opts, room="fan", receivers=size, senders=opts.senders,
                            messages=per_sender, window=opts.window, lag=min(opts.window * 4, 8000),
                            text_size=opts.text_size, files=size + opts.senders + 64)
        with Worker(worker, cfg) as w:
            ready, done, summary = measure(server, w, opts, f"fanout-{target}-{transport}-{size}")
        cutoffs = server.slow_cutoffs()
    rate = done["delivered"] / done["delivery_seconds"] if done["delivery_seconds"] > 0 else 0.0
    report.series.setdefault("fanout", {}).setdefault(label, []).append((size, rate))
    complete = done["delivered"] == done["expected"]
    notes = [f"{per_sender * opts.senders:,} messages", f"setup {ready['setup_s']:.1f} s", cpu_note(done)]
    if done["closed"]:
        notes.append(f"{len(done['closed'])} connections closed by the server")
    if cutoffs:
        notes.append(f"{cutoffs} slow clients cut off")
    if done["errors"]:
        notes.append(f"{done['errors']} error replies")
    if done["timed_out"]:
        notes.append(f"stopped at the {opts.timeout:.0f} s limit")
    goal = "≥ 1,000,000/s, none lost" if size in (100, 1000) and target == "utuvox" else ""
    report.add(
        Figure("fanout", label, setting, "deliveries/s", rate, "", goal,
               (rate >= 1_000_000 and complete) if goal else None, "; ".join(notes)),
        Figure("fanout", label, setting, "delivered", 100.0 * done["delivered"] / max(done["expected"], 1), "%",
               "100 %", complete, f"{done['delivered']:,} of {done['expected']:,}"),
    )
    if summary:
        report.series.setdefault("profiles", {})[f"fanout {label} {setting}"] = summary


def run_acked(opts: Options, report: Report) -> None:
    senders = opts.senders if opts.senders > 1 else 50
    if opts.target == "ngircd":
        report.note("acked: skipped for ngircd (IRC has no acknowledgement of a stored message).")
        return
    rooms = "one room" if opts.shared_room else "a room each"
    setting = f"{senders} senders, {rooms}"
    for target, transport in opts.targets:
        with point(report, "acked", f"{target}/{transport}", setting, "acknowledged msgs/s"):
            _acked_point(opts, report, target, transport, senders, setting)


def _acked_point(opts: Options, report: Report, target: str, transport: str, senders: int, setting: str) -> None:
    label = f"{target}/{transport}"
    with temp_dir("utuvox-bench-") as work, open_target(target, work, opts) as server:
        cfg = worker_config(server, transport, opts, room="acked", receivers=0, senders=senders,
                            messages=opts.acked_messages, window=min(opts.window, 500), lag=0,
                            text_size=opts.text_size, per_sender_rooms=not opts.shared_room, files=senders + 64)
        with Worker(worker, cfg) as w:
            _ready, done, summary = measure(server, w, opts, f"acked-{target}-{transport}")
    rate = done["acked"] / done["ack_seconds"] if done["ack_seconds"] > 0 else 0.0
    complete = done["acked"] == senders * opts.acked_messages
    notes = [f"{done['acked']:,} of {senders * opts.acked_messages:,} acknowledged", cpu_note(done)]
    if done["errors"]:
        notes.append(f"{done['errors']} error replies")
    if done["timed_out"]:
        notes.append(f"stopped at the {opts.timeout:.0f} s limit")
    report.add(Figure("acked", label, setting, "acknowledged msgs/s", rate, "", "≥ 30,000/s",
                      rate >= 30_000 and complete, "; ".join(notes)))
    if summary:
        report.series.setdefault("profiles", {})[f"acked {label} {setting}"] = summary
