"""Finding connections that went quiet, vanished, or never finish: one watchdog task for the whole server.

A peer can disappear without closing (a laptop lid shut, a cable pulled, a NAT forgetting the mapping):
nothing arrives and, as long as the server sends nothing either, nothing fails. So:

- every TCP socket gets TCP keepalive and ``TCP_USER_TIMEOUT``: the kernel probes an idle connection and
  drops one whose sent data stays unacknowledged for ``keepalive_timeout``;
- after ``keepalive_interval`` without traffic the server sends something: to a JSON client a
  ``{"type": "keepalive", "ts": ...}`` event (clients ignore it; its write is what lets the kernel notice
  a dead peer), to a WebSocket a ping frame, which must be answered with a pong within
  ``keepalive_timeout``; text mode gets nothing visible and relies on TCP keepalive alone;
- connections that never log in (``login_timeout``), that stay silent (``idle_timeout``, off by default:
  people idle in rooms for days) or that trickle a frame byte by byte (``frame_timeout``, slowloris) are
  closed with a goodbye that says why.

One task sweeps every connection once a second rather than one timer per connection, which would cost
memory on a server holding tens of thousands of idle connections. Nothing here touches the path of a
frame: the sweep sees that frames arrived from the session's request meter having moved (so it knows when,
to within a sweep), and a frame in progress from the connection's buffer.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from dataclasses import dataclass
from typing import Any

import trio
from pydantic import Field

from utuvox.chat.clock import Clock
from utuvox.chat.limits import SessionLimiter
from utuvox.chat.section import Section
from utuvox.chat.session import Session
from utuvox.protocol.core import Keepalive

from .connection import Connection, WebSocketConnection
from .outbox import Outbox

log = logging.getLogger("utuvox.server")

TIMEOUT = "timeout"  # the goodbye code of every close here


def tune_socket(stream: trio.SocketStream, interval: float, timeout: float) -> None:
    """TCP keepalive probes after ``interval`` idle seconds, a dead peer dropped within ``timeout``."""
    probes = 3
    options = [
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPIDLE", None), max(1, int(interval))),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPINTVL", None), max(1, int(timeout / probes))),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPCNT", None), probes),
        # Sent data unacknowledged this long (a peer gone while we were writing) breaks the connection.
        (socket.IPPROTO_TCP, getattr(socket, "TCP_USER_TIMEOUT", None), int(timeout * 1000)),
    ]
    for level, option, value in options:
        if option is not None:
            with contextlib.suppress(OSError):
                stream.setsockopt(level, option, value)


@dataclass(eq=False, slots=True)
class Watch:
    """What the watchdog knows of one connection."""

    session: Session
    outbox: Outbox
    limiter: SessionLimiter
    codec: str
    conn: Connection
    started: float
    last_in: float = 0.0  # when a sweep last saw that frames had arrived
    meter_seen: tuple[int, int] = (0, 0)  # the request meter's (left, refills) at that sweep
    sent_seen: int = -1  # outbox.bytes_sent at the last sweep
    quiet_since: float = 0.0  # when the server last sent anything
    partial_since: float | None = None  # when a sweep first saw the frame now in progress

    @property
    def ws(self) -> WebSocketConnection | None:
        return self.conn if isinstance(self.conn, WebSocketConnection) else None

    def close(self, reason: str) -> None:
        """Say goodbye and close (for a client that is alive but breaks a rule)."""
        log.info("closing connection %d from %s: %s", self.session.id, self.session.address, reason)
        self.outbox.finish(reason, TIMEOUT)

    def kill(self, reason: str) -> None:
        """Drop the connection now: the peer is gone, a goodbye would never arrive."""
        log.info("dropping connection %d from %s: %s", self.session.id, self.session.address, reason)
        self.outbox.abort(reason)


class WatchConfig(Section):
    """When connections that went quiet, vanished or never finish are probed or closed."""

    keepalive_interval: float = Field(default=30.0, gt=0,
                                      description="probe a connection after this long with no traffic")
    keepalive_timeout: float = Field(default=60.0, gt=0, description="close a connection whose peer is gone this long")
    login_timeout: float = Field(default=60.0, ge=0, description="close connections not logged in by then (0: never)")
    idle_timeout: float = Field(default=0.0, ge=0, description="close connections silent this long (0: never)")
    frame_timeout: float = Field(default=60.0, ge=0,
                                 description="longest time one frame may take to arrive (0: no limit)")


class Watchdog:
    def __init__(self, config: WatchConfig, clock: Clock | None = None) -> None:
        self.config = config
        self.clock = clock or Clock()
        self.watches: dict[Watch, None] = {}
        self.closed = 0  # connections closed or dropped here, for statistics

    def watch(self, session: Session, outbox: Outbox, limiter: SessionLimiter | None, codec: str,
              conn: Connection) -> Watch | None:
        if limiter is None:  # the admin socket: local and privileged, nothing to watch
            return None
        now = self.clock.now()
        watch = Watch(session, outbox, limiter, codec, conn, started=now, last_in=now, quiet_since=now)
        self.watches[watch] = None
        return watch

    def forget(self, watch: Watch | None) -> None:
        if watch is not None:
            self.watches.pop(watch, None)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        c = self.config
        tick = min(1.0, *(t / 4 for t in (c.keepalive_interval, c.login_timeout, c.idle_timeout, c.frame_timeout)
                          if t > 0))
        task_status.started()
        while True:
            await trio.sleep(tick)
            self.sweep(self.clock.now())

    def sweep(self, now: float) -> None:
        c = self.config
        for watch in list(self.watches):
            outbox = watch.outbox
            if outbox.closing:
                continue
            meter = watch.limiter.requests
            mark = (meter.left, meter.refills)
            if mark != watch.meter_seen:
                watch.meter_seen = mark
                watch.last_in = now
            last_in = watch.last_in
            if c.login_timeout and watch.session.user is None and now - watch.started > c.login_timeout:
                self.closed += 1
                watch.close(f"Not logged in within {c.login_timeout:g} s.")
                continue
            if c.idle_timeout and now - last_in > c.idle_timeout:
                self.closed += 1
                watch.close(f"Nothing received for {c.idle_timeout:g} s.")
                continue
            if c.frame_timeout and self._frame_too_slow(watch, last_in, now):
                self.closed += 1
                watch.close(f"A frame took longer than {c.frame_timeout:g} s to arrive.")
                continue
            ws = watch.ws
            if ws is not None and ws.ping_sent is not None and now - ws.ping_sent > c.keepalive_timeout:
                self.closed += 1
                watch.kill(f"no answer to a WebSocket ping within {c.keepalive_timeout:g} s")
                continue
            if outbox.bytes_sent != watch.sent_seen:
                watch.sent_seen = outbox.bytes_sent
                watch.quiet_since = now
            elif now - watch.quiet_since >= c.keepalive_interval:
                watch.quiet_since = now
                self._probe(watch, now)

    def _frame_too_slow(self, watch: Watch, last_in: float, now: float) -> bool:
        """Whether the same frame has been arriving for longer than ``frame_timeout`` (slowloris)."""
        if not getattr(watch.conn, "partial_bytes", 0):
            watch.partial_since = None
            return False
        if watch.partial_since is None or last_in > watch.partial_since:
            watch.partial_since = now  # a frame completed since the last sight: this is a new one
            return False
        return now - watch.partial_since > self.config.frame_timeout

    def _probe(self, watch: Watch, now: float) -> None:
        ws = watch.ws
        if ws is not None:
            ws.ping(now)
        elif watch.codec in ("json", "irc"):
            watch.outbox.send(Keepalive())
        # Text mode: nothing a person would see; TCP keepalive watches the connection.
