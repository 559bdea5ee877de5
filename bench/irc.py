"""ngircd as the side-by-side peer: the same fan-out and latency loads, spoken in IRC.

The bench writes ngircd's configuration itself and starts it in the foreground on a free loopback
port. To make it a fair peer its connection limits are off (``MaxConnections = 0``,
``MaxConnectionsIP = 0``), DNS and ident look-ups are off (UtuVox makes none), and there is an
``[Operator]`` block so that load clients can ``OPER`` and set user mode ``+F`` (relaxed flood
protection); otherwise ngircd would throttle a sender to a few lines a second, which is a policy, not
a speed.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from .clients import HOST, BenchError, IrcDialect
from .harness import SERVER_CPU, cores

INSTALL_HINT = ("ngircd is not installed. On Debian or Ubuntu: sudo apt-get update && sudo apt-get install -y ngircd "
                "(the bench only needs the binary; it writes its own configuration).")

CONFIG = """\
[Global]
Name = bench.utuvox.local
Info = UtuVox benchmark peer
Listen = {host}
Ports = {port}
MotdPhrase = "benchmark"
PidFile = {pid_file}

[Limits]
MaxConnections = 0
MaxConnectionsIP = 0
MaxJoins = 0
MaxNickLength = 16
# Load clients only read; without this ngircd would PING them after two minutes of silence.
PingTimeout = 600
PongTimeout = 60

[Options]
DNS = no
Ident = no
PAM = no

[Operator]
Name = {oper}
Password = {oper_password}
"""


def find_ngircd() -> str | None:
    return shutil.which("ngircd") or next(
        (p for p in ("/usr/sbin/ngircd", "/usr/local/sbin/ngircd") if os.access(p, os.X_OK)), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _pin() -> None:
    if cores() > 1:
        os.sched_setaffinity(0, {SERVER_CPU})


class NgircdProcess:
    """ngircd in the foreground (``-n``) with a configuration written into ``work_dir``."""

    ws_port = 0

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.tcp_port = 0
        self.log_path = work_dir / "ngircd.log"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> NgircdProcess:
        binary = find_ngircd()
        if binary is None:
            raise BenchError(INSTALL_HINT)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.tcp_port = free_port()
        conf = self.work_dir / "ngircd.conf"
        conf.write_text(CONFIG.format(host=HOST, port=self.tcp_port, pid_file=self.work_dir / "ngircd.pid",
                                      oper=IrcDialect.oper_name, oper_password=IrcDialect.oper_password))
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed right after
        try:
            self.proc = subprocess.Popen([binary, "-n", "-f", str(conf)], stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, preexec_fn=_pin)
        finally:
            log.close()
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise BenchError(f"ngircd did not start; its log ends with:\n{self.log_tail()}")
            try:
                socket.create_connection((HOST, self.tcp_port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def slow_cutoffs(self) -> int:
        """Clients ngircd dropped for a full send queue."""
        try:
            return self.log_path.read_text(errors="replace").count("SendQ exceeded")
        except OSError:
            return 0

    def __enter__(self) -> NgircdProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
