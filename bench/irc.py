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
import socket
import subprocess
import time
from pathlib import Path

from .clients import HOST, BenchError, IrcDialect
from .harness import SERVER_CPU, ManagedProcess, cores

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


class NgircdProcess(ManagedProcess):
    """ngircd in the foreground (``-n``) with a configuration written into ``work_dir``."""

    slow_cutoff_mark = "SendQ exceeded"
    stop_timeout = 10.0

    def __init__(self, work_dir: Path) -> None:
        super().__init__(work_dir / "ngircd.log")
        self.work_dir = work_dir

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
