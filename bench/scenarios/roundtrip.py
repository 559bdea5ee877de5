"""Round trip: one sender in a room of receivers sends a message, waits until it has arrived at one of
them (the first receiver), then sends the next: a closed loop, so messages per second is one over the
round trip. Every message pays the whole path once, alone (no pipelining, no group of commits to share):
read, validation, commit, fan-out, write, and the load generator's own turn.

The other receivers are read and drained like the first; only the first one's arrivals release the
sender. The first ``warmup`` seconds are not counted.
"""

from __future__ import annotations

import multiprocessing.connection
import selectors
import time
from array import array
from typing import Any

from ..clients import MARK, RECEIVER, SENDER, Conn, Loop, count_mark, make_dialect, send_now, service, setup_steps
from ..harness import Figure, Report, Worker, percentile, temp_dir, wait_for
from . import Options, cpu_note, measure, open_target, point, spread, worker_config

ERROR_FRAME = b'"type":"error"'


def worker(pipe: multiprocessing.connection.Connection, cfg: dict[str, Any]) -> None:
    dialect = make_dialect(cfg["transport"], cfg["ws_port"], cfg.get("target", "utuvox"))
    loop = Loop(cfg["port"], dialect)
    room = cfg["room"]
    deadline = time.monotonic() + cfg["setup_timeout"]
    sender = Conn("t0", setup_steps(dialect, "t0", room, create=True), role=SENDER)
    receivers = [Conn(f"u{i}", setup_steps(dialect, f"u{i}", room), role=RECEIVER) for i in range(cfg["receivers"])]
    spread(receivers, cfg["ports"])
    try:
        loop.establish([sender], parallel=1, deadline=deadline)
        setup_s = loop.establish(receivers, parallel=cfg["parallel"], deadline=deadline)
        loop.drain()
        pipe.send({"kind": "ready", "setup_s": setup_s})
        wait_for(pipe, "go", cfg["setup_timeout"])
        cpu = time.process_time()
        result = _run(loop, sender, receivers, cfg)
        pipe.send({"kind": "done", "cpu_s": time.process_time() - cpu, **result})
    finally:
        loop.close()


def _run(loop: Loop, sender: Conn, receivers: list[Conn], cfg: dict[str, Any]) -> dict[str, Any]:
    dialect = loop.dialect
    sel = loop.sel
    rbuf = loop.rbuf
    first = receivers[0]
    text = MARK.decode() + "0~0~"
    one = dialect.message(text + "x" * max(0, cfg["text_size"] - len(text)))
    t0 = time.monotonic()
    measure_from = t0 + cfg["warmup"]
    stop = measure_from + cfg["duration"]
    hard_end = t0 + cfg["timeout"]
    samples: array[float] = array("d")
    errors = 0
    sent = 0
    sent_at = 0.0
    waiting = False
    counted = 0  # round trips in the measured part
    while True:
        now = time.monotonic()
        if not waiting:
            if now >= stop or now > hard_end:
                break
            sent_at = now
            send_now(sender, one)
            if sender.out:
                sel.modify(sender.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, sender)  # type: ignore[arg-type]
            sent += 1
            waiting = True
        elif now > hard_end:
            break
        for key, mask in sel.select(0.05):
            c: Conn = key.data
            if c is None:
                continue
            n = service(sel, c, mask, rbuf)
            if not n:
                continue
            if c is first:
                arrived = time.monotonic()
                got = count_mark(c, rbuf, n)
                if got and waiting:
                    waiting = False
                    if sent_at >= measure_from:
                        samples.append((arrived - sent_at) * 1e3)
                        counted += 1
            elif c.role == RECEIVER:
                count_mark(c, rbuf, n)
            elif ERROR_FRAME in rbuf[:n]:
                errors += 1
    return {"samples": samples.tobytes(), "counted": counted, "sent": sent, "errors": errors,
            "measured_s": min(cfg["duration"], max(0.0, time.monotonic() - measure_from)),
            "closed": sum(1 for r in receivers if r.closed)}


def run(opts: Options, report: Report) -> None:
    size = opts.sizes[0] if opts.sizes != Options().sizes else 10
    setting = f"closed loop, {size} receivers, 1 sender"
    for target, transport in opts.targets:
        with point(report, "roundtrip", f"{target}/{transport}", setting, "msgs/s"):
            _roundtrip_point(opts, report, target, transport, size, setting)


def _roundtrip_point(opts: Options, report: Report, target: str, transport: str, size: int, setting: str) -> None:
    label = f"{target}/{transport}"
    with temp_dir("utuvox-bench-") as work, open_target(target, work, opts) as server:
        cfg = worker_config(server, transport, opts, room="loop", receivers=size, duration=opts.duration,
                            warmup=opts.warmup, text_size=opts.text_size, files=size + 64)
        with Worker(worker, cfg) as w:
            _ready, done, summary = measure(server, w, opts, f"roundtrip-{target}-{transport}")
    values = array("d")
    values.frombytes(done["samples"])
    ordered = sorted(values)
    rate = done["counted"] / done["measured_s"] if done["measured_s"] > 0 else 0.0
    note = f"{done['counted']:,} round trips measured; {cpu_note(done)}"
    if done["errors"]:
        note += f"; {done['errors']} error replies"
    if done["closed"]:
        note += f"; {done['closed']} receivers closed by the server"
    p50 = percentile(ordered, 0.50) if ordered else float("nan")
    p99 = percentile(ordered, 0.99) if ordered else float("nan")
    report.add(Figure("roundtrip", label, setting, "msgs/s", rate, "", note=note),
               Figure("roundtrip", label, setting, "round trip p50", p50, "ms"),
               Figure("roundtrip", label, setting, "round trip p99", p99, "ms"))
    if summary:
        report.series.setdefault("profiles", {})[f"roundtrip {label} {setting}"] = summary
