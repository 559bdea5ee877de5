"""The scenarios. Each module has ``run(opts, report)``, which starts what it needs, measures, and adds
its figures to the report, and the worker functions its load-generator processes run."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..clients import BenchError
from ..harness import ClusterProcesses, Figure, Report, ServerProcess, Worker, cpu_seconds
from ..irc import NgircdProcess
from ..profile import Profiler


@dataclass
class Options:
    """Every knob of every scenario; the CLI fills them, tests set the few they need."""

    transports: list[str] = field(default_factory=lambda: ["json"])
    target: str = "utuvox"  # or "ngircd"
    timeout: float = 120.0  # the most one measurement may take
    setup_timeout: float = 300.0
    profile_dir: Path | None = None
    # fanout / acked
    sizes: list[int] = field(default_factory=lambda: [10, 100, 1000])
    senders: int = 1
    messages: int | None = None  # per sender; by default derived from `deliveries`
    deliveries: int = 2_000_000  # deliveries to aim for per fan-out measurement
    window: int = 1000  # messages a sender may have unacknowledged
    text_size: int = 32
    acked_messages: int = 4000  # per sender, for `acked`
    shared_room: bool = False  # acked: all senders in one room instead of one room each
    # latency / login
    rate: float = 1000.0
    room_size: int = 50
    duration: float = 10.0
    warmup: float = 1.0
    login_concurrency: int = 8
    login_users: int = 8
    # connections
    count: int = 10_000
    parallel: int = 200  # setups in progress at once
    # history
    stored: int = 1_000_000
    repeat: int = 50
    server_log_level: str = "WARNING"
    # several nodes: clients are spread over them (receivers round robin, sender i on node i)
    nodes: int = 1
    broker: str = "redis://127.0.0.1:6379/0"
    postgres: bool = False  # one node on PostgreSQL (and the broker) instead of SQLite
    # flood
    floods: tuple[str, ...] = ("messages", "listings", "history", "logins")

    @property
    def targets(self) -> list[tuple[str, str]]:
        """(target, transport) pairs to run: IRC is the only way to speak to ngircd."""
        if self.target == "ngircd":
            return [("ngircd", "irc")]
        return [("utuvox", t) for t in self.transports]


Target = ServerProcess | NgircdProcess | ClusterProcesses


@contextlib.contextmanager
def open_target(target: str, work_dir: Path, opts: Options, *, fast_hash: bool = True) -> Iterator[Target]:
    if target == "ngircd":
        with NgircdProcess(work_dir) as irc:
            yield irc
        return
    if opts.nodes > 1 or opts.postgres:
        with ClusterProcesses(work_dir, opts.nodes, opts.broker, fast_hash=fast_hash,
                              log_level=opts.server_log_level) as cluster:
            yield cluster
        return
    with ServerProcess(work_dir, fast_hash=fast_hash, log_level=opts.server_log_level) as srv:
        yield srv


def worker_config(server: Target, transport: str, opts: Options, **extra: Any) -> dict[str, Any]:
    port = server.ws_port if transport == "ws" else server.tcp_port
    nodes = server.nodes if isinstance(server, ClusterProcesses) else [server]
    ports = [n.ws_port if transport == "ws" else n.tcp_port for n in nodes]
    ngircd = isinstance(server, NgircdProcess)
    if transport == "irc" and not ngircd:
        port = server.irc_port  # type: ignore[union-attr]
        ports = [n.irc_port for n in nodes]  # type: ignore[union-attr]
    return {"port": port, "ports": ports, "ws_port": server.ws_port, "transport": transport,
            "target": "ngircd" if ngircd else "utuvox",
            "setup_timeout": opts.setup_timeout, "timeout": opts.timeout, "parallel": opts.parallel, **extra}


def spread(conns: list[Any], ports: list[int]) -> None:
    """Put the connections on the nodes in turn (one node: nothing to do)."""
    if len(ports) > 1:
        for i, conn in enumerate(conns):
            conn.port = ports[i % len(ports)]


def measure(server: Target, worker: Worker, opts: Options, label: str,
            between: Callable[[], None] | None = None) -> tuple[dict[str, Any], dict[str, Any], str | None]:
    """Drive one worker through ready, go and done, sampling the server with py-spy meanwhile when
    asked. ``between`` runs after ready and before go. Returns (ready, done, profile summary)."""
    ready = worker.expect("ready", opts.setup_timeout + 30)
    if between is not None:
        between()
    profiler = None
    if opts.profile_dir is not None:
        opts.profile_dir.mkdir(parents=True, exist_ok=True)
        profiler = Profiler(server.pid, opts.profile_dir / f"{label}.txt")
    pids = server.pids if isinstance(server, ClusterProcesses) else [server.pid]
    cpu_before = sum(cpu_seconds(pid) for pid in pids)
    started = time.monotonic()
    worker.tell("go")
    try:
        done = worker.expect("done", opts.timeout + 60)
        wall = time.monotonic() - started
        # Who was the bottleneck: a side near 100 % of its core was.
        done["server_cpu"] = 100 * (sum(cpu_seconds(pid) for pid in pids) - cpu_before) / wall
        done["client_cpu"] = 100 * done.get("cpu_s", float("nan")) / wall
    finally:
        summary = profiler.stop() if profiler is not None else None
    if summary is not None and opts.profile_dir is not None:
        (opts.profile_dir / f"{label}.summary.txt").write_text(summary + "\n")
    return ready, done, summary


def cpu_note(done: dict[str, Any]) -> str:
    nan = float("nan")
    return f"CPU: server {done.get('server_cpu', nan):.0f} %, load generator {done.get('client_cpu', nan):.0f} %"


@contextlib.contextmanager
def point(report: Report, scenario: str, label: str, setting: str, figure: str) -> Iterator[None]:
    """One measurement point: a failure becomes a line of the table, and the next point still runs."""
    try:
        yield
    except BenchError as exc:
        report.add(Figure(scenario, label, setting, figure, None, met=False, note=f"FAILED: {exc}"))
