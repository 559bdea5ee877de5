"""``utuvox serve`` run as a user runs it: a real process, its ports read from its startup lines."""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import trio

from utuvox.server.settings import unthrottled_env

# The startup lines, a contract: exactly these lines, " (TLS)", wss:// and https:// only with TLS on. The fourth,
# "Admin key: <key>", comes only on the start that creates the key (ADMIN_KEY_LINE); the web client's line
# (WEB_CLIENT_LINE, on the WebSocket port) always comes last.
STARTUP = re.compile(rb"Server started on 127\.0\.0\.1:(\d+)( \(TLS\))?\nWebSocket server started on (wss?)://"
                     rb"127\.0\.0\.1:(\d+)\nIRC server started on 127\.0\.0\.1:(\d+)( \(TLS\))?\n")
ADMIN_KEY_LINE = re.compile(rb"Admin key: (\S+)\n")
WEB_CLIENT_LINE = re.compile(rb"Web client at (https?)://127\.0\.0\.1:(\d+)/\n")


class Serving(NamedTuple):
    proc: trio.Process
    port: int
    ws_port: int
    admin_key: str
    tls: bool
    irc_port: int = 0


async def serve(data_dir: Path, *args: str, env: dict[str, str] | None = None,
                nofile: tuple[int, int] | None = None) -> Serving:
    """Start the server on ports 0 in ``data_dir`` without rate limits (``env`` may set them); returns once
    it has printed its startup lines (with the admin key when this start creates it). With ``--database-url``
    the key is in the database, and whichever node made it printed it: ``admin_key`` is then empty
    (``utuvox admin-key`` reads it). ``nofile``: the process's (soft, hard) limit of open files."""
    in_database = "--database-url" in args
    first_start = not (data_dir / "admin_key.txt").exists() and not in_database

    def limit_files() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, nofile)

    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "utuvox", "serve", "--port", "0", "--ws-port", "0", "--irc-port", "0",
         "--data-dir", str(data_dir), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
        # A JSON client is told from a text one by its first byte; on a loaded machine that byte can take
        # longer than the default half second to arrive.
        env={**os.environ, "PYTHONUNBUFFERED": "1", "UTUVOX_DETECT_TIMEOUT": "2", **unthrottled_env(), **(env or {})},
        preexec_fn=limit_files)
    assert proc.stdout is not None
    out = b""
    with trio.fail_after(20):
        while not (match := STARTUP.search(out)):
            chunk = await proc.stdout.receive_some(4096)
            assert chunk, f"server exited early: {out!r}"
            out += chunk
    tls = bool(match[2])
    assert tls == (match[3] == b"wss") == bool(match[6]), out
    # written before the listeners start
    key = "" if in_database else (data_dir / "admin_key.txt").read_text().strip()
    end = match.end()
    with trio.fail_after(20):
        if first_start:
            while not (line := ADMIN_KEY_LINE.match(out, end)):
                chunk = await proc.stdout.receive_some(4096)
                assert chunk, f"server exited early: {out!r}"
                out += chunk
            assert line[1].decode() == key
            end = line.end()
        while not (web := WEB_CLIENT_LINE.match(out, end)):
            if in_database and (line := ADMIN_KEY_LINE.match(out, end)):
                end = line.end()  # this node made the cluster's key
                continue
            chunk = await proc.stdout.receive_some(4096)
            assert chunk, f"server exited early: {out!r}"
            out += chunk
    assert web[1] == (b"https" if tls else b"http") and web[2] == match[4], out
    return Serving(proc, int(match[1]), int(match[4]), key, tls, int(match[5]))


async def stop(proc: trio.Process, sig: int = signal.SIGTERM) -> int:
    """Signal the server and return its exit status."""
    proc.send_signal(sig)
    with trio.fail_after(15):
        return await proc.wait()
