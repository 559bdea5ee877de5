"""Runs the pieces of a benchmark: the server under test as a subprocess on one core, the load
generator in worker processes on the other, and the table of figures at the end.

The server is the real one, started the way a user starts it (``python -m utuvox serve``), with a fresh
data directory; the ports it prints are the ports used. Workers are ``multiprocessing`` processes
(spawned, so nothing of the parent's state leaks in) that talk to the parent over a pipe: they set
their clients up, say ``ready``, wait for ``go``, measure, and send their results back.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import platform
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from utuvox.server.settings import unthrottled_env

from .clients import BenchError

SERVER_CPU = 0
CLIENT_CPU = 1
# Small argon2 parameters, so that registering a thousand load clients takes seconds, not minutes.
# Every scenario but `login` uses them; `login` measures the defaults.
FAST_HASH_ENV = {"UTUVOX_ARGON2_MEMORY_KIB": "1024", "UTUVOX_ARGON2_TIME_COST": "1"}


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def raise_file_limit(wanted: int) -> int:
    """Raise this process's open-file limit toward ``wanted`` (children inherit it); returns the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def _pin_server() -> None:
    # Runs in the child between fork and exec, so every thread the server starts (SQLite, argon2)
    # inherits the one core.
    if cores() > 1:
        os.sched_setaffinity(0, {SERVER_CPU})


def rss_kib(pid: int) -> int:
    """Resident set size of a process, from /proc/<pid>/status."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process (all its threads), from /proc/<pid>/stat."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ManagedProcess:
    """A server under test, run as a subprocess that logs to ``log_path`` and stops on SIGTERM:
    ``with SomeProcess(...) as srv: srv.tcp_port ...``."""

    slow_cutoff_mark = ""  # the log line that says a client was cut off as too slow
    stop_timeout = 15.0

    def __init__(self, log_path: Path) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = log_path
        self.tcp_port = 0
        self.ws_port = 0
        self.irc_port = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def slow_cutoffs(self) -> int:
        """How many clients the server cut off as too slow, as its log tells."""
        try:
            return self.log_path.read_text(errors="replace").count(self.slow_cutoff_mark)
        except OSError:
            return 0

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ServerProcess(ManagedProcess):
    """The UtuVox server as a subprocess."""

    slow_cutoff_mark = "cutting off slow client"  # logged at WARNING

    def __init__(self, data_dir: Path, *, fast_hash: bool = True, log_level: str = "WARNING",
                 env: dict[str, str] | None = None, startup_timeout: float = 30.0) -> None:
        super().__init__(data_dir / "server.log")
        self.data_dir = data_dir
        self.fast_hash = fast_hash
        self.log_level = log_level
        self.extra_env = env or {}
        self.startup_timeout = startup_timeout

    def start(self) -> ServerProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # Benchmarks push far past a public server's rates from one address: no limits unless a scenario sets some.
        env = {**os.environ, **unthrottled_env(), **(FAST_HASH_ENV if self.fast_hash else {}), **self.extra_env}
        cmd = [sys.executable, "-m", "utuvox", "serve", "--port", "0", "--ws-port", "0", "--irc-port", "0",
               "--data-dir", str(self.data_dir), "--log-level", self.log_level]
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed right after
        try:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL,
                                         env=env, preexec_fn=_pin_server)
        finally:
            log.close()
        assert self.proc.stdout is not None
        deadline = time.monotonic() + self.startup_timeout
        os.set_blocking(self.proc.stdout.fileno(), False)
        pending = b""
        while not (self.tcp_port and self.ws_port and self.irc_port):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise BenchError(f"the server did not start; its log ends with:\n{self.log_tail()}")
            chunk = self.proc.stdout.read() or b""
            if not chunk:
                time.sleep(0.02)
                continue
            pending += chunk
            if m := re.search(rb"Server started on [\d.]+:(\d+)", pending):
                self.tcp_port = int(m.group(1))
            if m := re.search(rb"WebSocket server started on ws://[\d.]+:(\d+)", pending):
                self.ws_port = int(m.group(1))
            if m := re.search(rb"IRC server started on [\d.]+:(\d+)", pending):
                self.irc_port = int(m.group(1))
        return self


class ClusterProcesses:
    """``nodes`` UtuVox servers on one fresh PostgreSQL database and one broker (made and dropped here):
    ``tcp_port``/``ws_port`` are the first node's, ``nodes`` holds them all."""

    def __init__(self, work_dir: Path, nodes: int, broker: str, *, fast_hash: bool = True,
                 log_level: str = "WARNING") -> None:
        self.work_dir = work_dir
        self.count = nodes
        self.broker = broker
        self.fast_hash = fast_hash
        self.log_level = log_level
        self.nodes: list[ServerProcess] = []
        self.database = f"utuvox_bench_{os.getpid()}_{int(time.time())}"

    @property
    def pid(self) -> int:
        return self.nodes[0].pid

    @property
    def pids(self) -> list[int]:
        return [n.pid for n in self.nodes]

    @property
    def tcp_port(self) -> int:
        return self.nodes[0].tcp_port

    @property
    def ws_port(self) -> int:
        return self.nodes[0].ws_port

    def _admin(self, statement: str) -> None:
        import psycopg

        with psycopg.connect(POSTGRES, autocommit=True) as conn:
            conn.execute(statement)  # type: ignore[arg-type]

    def start(self) -> ClusterProcesses:
        self._admin(f"CREATE DATABASE {self.database}")
        url = POSTGRES.rpartition("/")[0] + "/" + self.database
        try:
            for i in range(1, self.count + 1):
                env = {"UTUVOX_DATABASE_URL": url, "UTUVOX_BROKER_URL": self.broker,
                       "UTUVOX_NODE_NAME": f"node{i}", "UTUVOX_CLUSTER_NAME": self.database}
                node = ServerProcess(self.work_dir / f"node{i}", fast_hash=self.fast_hash, log_level=self.log_level,
                                     env=env)
                self.nodes.append(node.start())
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        self.nodes.clear()
        with contextlib.suppress(Exception):
            self._admin(f"DROP DATABASE IF EXISTS {self.database} WITH (FORCE)")

    def slow_cutoffs(self) -> int:
        return sum(n.slow_cutoffs() for n in self.nodes)

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(n.log_tail(lines) for n in self.nodes)

    def __enter__(self) -> ClusterProcesses:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


POSTGRES = os.environ.get("UTUVOX_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


@contextlib.contextmanager
def temp_dir(prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# --- workers ------------------------------------------------------------------------------------


class Worker:
    """A load-generator process running ``target(pipe, config)``; the parent drives it by messages."""

    def __init__(self, target: Callable[[multiprocessing.connection.Connection, dict[str, Any]], None],
                 config: dict[str, Any]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.pipe, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(target, child, config), daemon=True)
        self.proc.start()
        child.close()

    def expect(self, kind: str, timeout: float) -> dict[str, Any]:
        """Wait for the worker's next message, which must be of ``kind``."""
        if not self.pipe.poll(timeout):
            raise BenchError(f"the load generator sent no '{kind}' within {timeout:.0f} s")
        try:
            msg: dict[str, Any] = self.pipe.recv()
        except EOFError:
            raise BenchError("the load generator died") from None
        if msg.get("kind") == "error":
            raise BenchError(f"load generator: {msg['error']}")
        if msg.get("kind") != kind:
            raise BenchError(f"the load generator sent {msg.get('kind')!r} where '{kind}' was due")
        return msg

    def tell(self, kind: str, **fields: Any) -> None:
        self.pipe.send({"kind": kind, **fields})

    def stop(self) -> None:
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)
        self.pipe.close()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _worker_main(target: Callable[[multiprocessing.connection.Connection, dict[str, Any]], None],
                 pipe: multiprocessing.connection.Connection, config: dict[str, Any]) -> None:
    from .clients import pin_to

    if cores() > 1:
        pin_to(CLIENT_CPU)
    raise_file_limit(config.get("files", 0) + 1024)
    try:
        target(pipe, config)
    except BaseException as exc:  # every failure goes back to the parent as a message
        with contextlib.suppress(OSError, BrokenPipeError):
            pipe.send({"kind": "error", "error": f"{type(exc).__name__}: {exc}"})
    finally:
        pipe.close()


def wait_for(pipe: multiprocessing.connection.Connection, kind: str, timeout: float) -> dict[str, Any]:
    """In a worker: wait for the parent's next message, which must be of ``kind``."""
    if not pipe.poll(timeout):
        raise BenchError(f"no '{kind}' from the harness within {timeout:.0f} s")
    msg: dict[str, Any] = pipe.recv()
    if msg.get("kind") != kind:
        raise BenchError(f"expected '{kind}' from the harness, got {msg.get('kind')!r}")
    return msg


# --- figures ------------------------------------------------------------------------------------


@dataclass
class Figure:
    """One line of the table: what was measured, under which conditions, the value, and the goal."""

    scenario: str
    target: str  # "utuvox/json", "ngircd/irc", ...
    setting: str  # "100 receivers, 1 sender"
    name: str  # "deliveries/s"
    value: float | None
    unit: str = ""
    goal: str = ""
    met: bool | None = None
    note: str = ""

    def formatted(self) -> str:
        v = self.value
        if v is None:
            return "-"
        if abs(v) >= 100:
            text = f"{v:,.0f}"
        elif abs(v) >= 10:
            text = f"{v:.1f}"
        else:
            text = f"{v:.2f}"
        return f"{text} {self.unit}".rstrip()


@dataclass
class Report:
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Raw material for the plots: scenario -> whatever it keeps (sizes and rates, latency samples).
    series: dict[str, Any] = field(default_factory=dict)

    def add(self, *figures: Figure) -> None:
        self.figures.extend(figures)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def table(self) -> str:
        header = ("scenario", "target", "setting", "figure", "value", "goal", "met")
        rows = [header] + [
            (f.scenario, f.target, f.setting, f.name, f.formatted(), f.goal,
             "" if f.met is None else ("yes" if f.met else "NO"))
            for f in self.figures
        ]
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines = []
        for i, row in enumerate(rows):
            lines.append(" | ".join(c.ljust(w) if j != 4 else c.rjust(w) for j, (c, w) in
                                    enumerate(zip(row, widths, strict=True))).rstrip())
            if i == 0:
                lines.append("-+-".join("-" * w for w in widths))
        extra = [f"  {f.scenario} {f.target} {f.setting}: {f.note}" for f in self.figures if f.note]
        out = "\n".join(lines)
        if extra:
            out += "\n\n" + "\n".join(extra)
        if self.notes:
            out += "\n\n" + "\n".join(f"* {n}" for n in self.notes)
        return out


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th quantile (0..1) of already sorted values, nearest rank."""
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, int(q * len(sorted_values) + 0.5) - 1))
    return sorted_values[index]


def cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def machine_summary() -> str:
    model = cpu_model()
    mem = ""
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        kib = int(f.readline().split()[1])
        mem = f", {kib / 1024 / 1024:.0f} GiB RAM"
    return f"{cores()} cores ({model}){mem}, Python {sys.version.split()[0]}, Linux {os.uname().release}"
