"""Idle connections: open K logged-in connections that then say nothing; the server's resident memory
per connection (VmRSS from /proc/<pid>/status, after minus before) and the time to accept them all."""

from __future__ import annotations

import multiprocessing.connection
import time
from typing import Any

from ..clients import BenchError, Conn, Loop, make_dialect, setup_steps
from ..harness import Figure, Report, Worker, rss_kib, temp_dir, wait_for
from . import Options, measure, open_target, point, worker_config

SETTLE = 1.0  # seconds to let the server finish what the last logins started before reading its RSS


def worker(pipe: multiprocessing.connection.Connection, cfg: dict[str, Any]) -> None:
    dialect = make_dialect(cfg["transport"], cfg["ws_port"], cfg.get("target", "utuvox"))
    loop = Loop(cfg["port"], dialect)
    conns = [Conn(f"c{i}", setup_steps(dialect, f"c{i}", None)) for i in range(cfg["count"])]
    try:
        setup_s = loop.establish(conns, parallel=cfg["parallel"], deadline=time.monotonic() + cfg["setup_timeout"])
        loop.drain(quiet=SETTLE)
        pipe.send({"kind": "ready", "setup_s": setup_s})
        wait_for(pipe, "go", cfg["setup_timeout"])
        cpu = time.process_time()
        # Still there? Anything the server closed reads as end-of-file now.
        loop.drain(quiet=0.5)
        alive = 0
        for conn in conns:
            try:
                data = conn.sock.recv(1, 0x40)  # type: ignore[union-attr] # MSG_DONTWAIT
                alive += data != b""
            except BlockingIOError:
                alive += 1
            except OSError:
                pass
        pipe.send({"kind": "done", "cpu_s": time.process_time() - cpu, "alive": alive})
    finally:
        loop.close()


def run(opts: Options, report: Report) -> None:
    setting = f"{opts.count:,} idle logged-in"
    for target, transport in opts.targets:
        if target != "utuvox":
            continue
        with point(report, "connections", f"{target}/{transport}", setting, "server RSS per connection"):
            _point(opts, report, target, transport, setting)


def _point(opts: Options, report: Report, target: str, transport: str, setting: str) -> None:
    label = f"{target}/{transport}"
    rss: dict[str, int] = {}
    with temp_dir("utuvox-bench-") as work, open_target(target, work, opts) as server:
        time.sleep(SETTLE)
        rss["before"] = rss_kib(server.pid)

        def read_rss() -> None:
            rss["after"] = rss_kib(server.pid)

        cfg = worker_config(server, transport, opts, count=opts.count, files=opts.count + 64)
        with Worker(worker, cfg) as w:
            ready, done, _summary = measure(server, w, opts, f"connections-{target}-{transport}", between=read_rss)
        if server.proc is None or server.proc.poll() is not None:
            raise BenchError("the server died holding the connections")
    per_conn = (rss["after"] - rss["before"]) / opts.count
    held = done["alive"] == opts.count
    report.add(
        Figure("connections", label, setting, "held", done["alive"], "", f"{opts.count:,}", held),
        Figure("connections", label, setting, "server RSS per connection", per_conn, "KiB", "≤ 20 KiB",
               per_conn <= 20 and held,
               f"RSS {rss['before'] / 1024:.0f} MiB before, {rss['after'] / 1024:.0f} MiB with all connected"),
        Figure("connections", label, setting, "time to connect and log in all", ready["setup_s"], "s", "", None,
               f"{opts.count / ready['setup_s']:,.0f} logins/s with {opts.parallel} in flight (argon2 1 MiB, t=1)"),
    )
