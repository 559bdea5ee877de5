"""The privileged channel: a Unix socket, mode 0600, in the data directory. Whoever can open it is an
operator; it speaks the same JSON lines as TCP, plus the operator-only requests.

The socket file is created under a umask of 0177, so it is never reachable by anyone but its owner, not
even for the moment between ``bind`` and ``chmod``. A stale file left by a server that died is removed at
startup (after checking that nothing answers on it); the file is removed again at shutdown.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import pwd
import socket
import stat
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

log = logging.getLogger("utuvox.server")

SOCKET_MODE = 0o600


def _remove_stale(path: Path) -> None:
    """Remove a socket file nobody listens on; refuse to touch anything else."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(errno.EEXIST, f"{path} exists and is not a socket; not removing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1)
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        pass  # stale: nobody is listening
    except OSError as exc:
        raise OSError(exc.errno, f"cannot tell whether {path} is in use: {exc.strerror}") from None
    else:
        raise OSError(errno.EADDRINUSE, f"another server is listening on {path}")
    finally:
        probe.close()
    log.info("removing stale admin socket %s", path)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


async def open_admin_listener(path: Path, backlog: int = 16) -> tuple[trio.SocketListener, int]:
    """Bind and listen on ``path`` with mode 0600. Returns the listener and the file's inode (so that
    shutdown removes this file and not one that replaced it)."""
    await trio.to_thread.run_sync(_remove_stale, path)
    # A plain bind with no checkpoint inside: no other task runs while the umask is narrowed.
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old_umask = os.umask(0o177)
        try:
            raw.bind(str(path))
        finally:
            os.umask(old_umask)
        os.chmod(path, SOCKET_MODE)
        raw.listen(backlog)
        inode = path.stat().st_ino
    except BaseException:
        raw.close()
        raise
    return trio.SocketListener(trio.socket.from_stdlib_socket(raw)), inode


def _remove_if_ours(path: Path, inode: int) -> None:
    with contextlib.suppress(OSError):
        if path.lstat().st_ino == inode:
            path.unlink()


def peer_credentials(sock: Any) -> tuple[str, int | None, int | None]:
    """The OS user (name, uid, pid) at the other end of a Unix socket, from SO_PEERCRED."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, _gid = struct.unpack("3i", raw)
    except (OSError, AttributeError, struct.error):
        return "unknown", None, None
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    return name, uid, pid


async def serve_admin_socket(handler: Callable[[trio.SocketStream], Awaitable[None]], path: Path, *,
                             handler_nursery: trio.Nursery, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the admin socket until cancelled, then remove its file. ``started`` once it accepts."""
    listener, inode = await open_admin_listener(path)
    try:
        log.info("admin socket listening on %s", path)
        await trio.serve_listeners(handler, [listener], handler_nursery=handler_nursery, task_status=task_status)
    finally:
        _remove_if_ours(path, inode)
        with trio.CancelScope(shield=True):
            await listener.aclose()
