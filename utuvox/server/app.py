"""The server's lifecycle: open the store, start the listeners in one nursery, print the startup lines,
and on SIGINT/SIGTERM say goodbye to every client, commit what is queued and exit cleanly."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import resource
import signal
import socket
import stat
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import trio

from utuvox.chat import admin
from utuvox.chat.admin_key import AdminKey, StoredAdminKey
from utuvox.chat.bus import LocalBus
from utuvox.chat.clock import Clock
from utuvox.chat.elsewhere import SingleNode
from utuvox.chat.files import FileService
from utuvox.chat.files import install as install_files
from utuvox.chat.handlers import CORE
from utuvox.chat.limits import address_key
from utuvox.chat.service import Chat
from utuvox.protocol import json_codec, text_codec
from utuvox.protocol.core import Goodbye
from utuvox.protocol.irc import render as irc_render
from utuvox.protocol.irc.lines import MAX_LINE, MAX_TAGS
from utuvox.store import SqliteStore, Store

from . import websocket
from .admin_socket import peer_credentials, serve_admin_socket
from .connection import LineConnection, WebSocketConnection
from .irc.client import IrcClient
from .irc.outbox import irc_frame_binary, irc_frame_text
from .irc.registry import IrcRegistry
from .keepalive import Watchdog, tune_socket
from .outbox import Codec, Counters, Flusher
from .session_loop import run_session
from .settings import Settings
from .tls import handshake, server_context
from .web import Site, load_assets, parse_origins

log = logging.getLogger("utuvox.server")


class NodeName(logging.Filter):
    """Puts this node's name on every log record (``%(node)s``), once the server knows it."""

    node = "-"

    def filter(self, record: logging.LogRecord) -> bool:
        record.node = self.node
        return True


NODE = NodeName()


def raise_open_files_limit() -> int:
    """Raise this process's soft limit of open files to its hard limit (the usual soft limit, 1024, is
    below what a chat server holds); returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open files limit from %d to %d: %s", soft, target, exc)
    return soft


def open_files() -> int:
    """File descriptors this process has open (0 where that cannot be told)."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # the listing's own descriptor
    except OSError:
        return 0


def _private_dir(path: Any) -> None:
    """Create a directory only its owner may enter; warn about an existing one others can read."""
    try:
        path.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o007:
            log.warning("%s can be read by every user of this machine (mode %o); chmod 700 it", path, mode)


def _address(sock: Any) -> str:
    try:
        host, port = sock.getpeername()[:2]
        return f"{host}:{port}"
    except (OSError, ValueError):
        return "unknown"


class Server:
    """``await nursery.start(server.run)`` returns once every listener is up; ``ports`` then holds the
    real port numbers (useful with port 0)."""

    def __init__(self, settings: Settings, *, announce: Callable[[str], None] = print, tune_gc: bool = False) -> None:
        self.settings = settings
        self.announce = announce
        # The garbage collector's settings belong to the whole process: only a process that is the
        # server (``utuvox serve``) changes them.
        self.tune_gc = tune_gc
        self.tcp_port = 0
        self.ws_port = 0
        self.irc_port = 0
        self.irc: IrcRegistry[IrcClient] = IrcRegistry(guests=settings.irc_guests,
                                                       register_before_connect=settings.irc_register_before_connect)
        irc_render.configure(settings.irc_server_name)
        self.chat: Chat | None = None
        self.files: FileService | None = None
        self.admin: admin.Administration | None = None
        self.store: Store | None = None
        self.node = settings.node_name or ""
        self.cluster: Any = None  # utuvox.cluster.node.Cluster, with a broker
        self._stop = trio.Event()
        self.admin_key = AdminKey(settings.admin_key_path)
        self.flusher = Flusher()
        self.tls = server_context(settings.tls_cert, settings.tls_key)  # raises TlsConfigError at once
        # The web client's files are read once, here: serving them never waits for the disk.
        self.site = Site(load_assets(), secure=self.tls is not None,
                         allowed_origins=parse_origins(settings.allowed_origins))
        self.clock = Clock()  # the one clock of the watchdog and the chat rules
        self.watchdog = Watchdog(settings.watch, self.clock)
        self._per_address: dict[str, int] = {}  # open connections by address_key
        self._connections = 0  # accepted TCP and WebSocket connections still open
        self._fd_budget = 1 << 30  # connections allowed by the open files limit (set at start)
        self.refused_busy = 0

    def request_stop(self) -> None:
        self._stop.set()

    async def _open_store(self) -> Store:
        s = self.settings
        if s.broker_url and not s.database_url:
            from utuvox.cluster.broker import BrokerError

            raise BrokerError("a broker joins nodes that share one PostgreSQL database: give --database-url too")
        if s.database_url:
            from utuvox.store.postgres import PostgresStore

            store = await PostgresStore.open(s.database_url)
            self.admin_key = StoredAdminKey(store.setting, store.set_setting)
            return store
        return await SqliteStore.open(s.db_path)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        s = self.settings
        limit = raise_open_files_limit()
        _private_dir(s.data_dir)
        _private_dir(s.uploads_dir)
        # Without a database URL the key is a file, read before anything else; with one, it is in the database.
        key = None if s.database_url else await self.admin_key.load()
        self.store = store = await self._open_store()
        # What is open now (the store's connections included) and a reserve for the admin socket, files in
        # transfer and the rest stay out of reach of clients: a flood of connections is refused, it does
        # not leave the server unable to open its database or its admin socket.
        reserve = min(s.fd_reserve + s.files.max_uploads_total + s.files.max_downloads_total, limit // 4)
        self._fd_budget = max(0, limit - open_files() - reserve)
        log.info("open files limit %d: up to %d client connections", limit, self._fd_budget)
        try:
            # The store's committer gets a nursery of its own, outside everything else: sessions that are
            # ending still commit (their leave events) even when a sibling task has failed.
            async with trio.open_nursery() as storage:
                await storage.start(store.run)
                if key is None:
                    key = await self.admin_key.load()
                try:
                    await self._serve(store, key, task_status)
                finally:
                    storage.cancel_scope.cancel()  # the committer commits what is queued as it ends
        finally:
            with trio.CancelScope(shield=True):
                await store.close()
            log.info("server stopped")

    async def _serve(self, store: Store, key: str, task_status: Any) -> None:
        # Catch the signals before announcing the ports: a script that reads the startup lines and signals
        # at once must get a clean shutdown, not a KeyboardInterrupt.
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as watcher:
                watcher.start_soon(self._stop_on_signal, signals)
                await self._serve_until_stopped(store, key, task_status)
                watcher.cancel_scope.cancel()

    async def _stop_on_signal(self, signals: Any) -> None:
        async for signum in signals:
            log.info("received %s, shutting down", signal.Signals(signum).name)
            self._stop.set()
            return

    async def _serve_until_stopped(self, store: Store, key: str, task_status: Any) -> None:
        s = self.settings
        async with trio.open_nursery() as services:
            await services.start(self.flusher.run)
            self.chat = chat = Chat(store, LocalBus(), s.chat, self.admin_key, self.clock)
            chat.register(CORE)
            await services.start(chat.delivery.run)
            await services.start(chat.passwords.run)
            self.files = await services.start(install_files(chat, s.files).run)
            await services.start(self.watchdog.run)
            self.admin = admin.install(chat)
            self.admin.server_figures = self._figures
            services.start_soon(self.admin.sample_rates)
            await chat.start()
            services.start_soon(chat.close_rejoins)
            async with trio.open_nursery() as sessions:
                async with trio.open_nursery() as listeners:
                    await self._listen(listeners, sessions, chat)
                    await self._join_cluster(services, chat, store)
                    tls = " (TLS)" if self.tls is not None else ""
                    self.announce(f"Server started on {s.host}:{self.tcp_port}{tls}")
                    self.announce(f"WebSocket server started on {'wss' if tls else 'ws'}://{s.host}:{self.ws_port}")
                    self.announce(f"IRC server started on {s.host}:{self.irc_port}{tls}")
                    if self.admin_key.created:
                        # Shown once, when made: a key printed at every start ends up in every log of stdout.
                        self.announce(f"Admin key: {key}")
                    else:
                        log.info("admin key in %s (utuvox admin-key shows it)", self.admin_key.where)
                    self.announce(f"Web client at {'https' if tls else 'http'}://{s.host}:{self.ws_port}/")
                    log.info("listening on %s:%d (TCP) and %d (WebSocket)", s.host, self.tcp_port, self.ws_port)
                    if self.tune_gc:
                        # Everything made so far lives as long as the server: keep the garbage collector
                        # from walking it again and again, and let it run less often. A busy server
                        # allocates hundreds of thousands of short-lived objects per second; collecting
                        # young ones every 700 allocations showed up as a fifth of its time.
                        gc.freeze()
                        gc.set_threshold(50_000, 20, 100)
                    task_status.started(self)
                    await self._stop.wait()
                    listeners.cancel_scope.cancel()
                await self._say_goodbye(chat, sessions)
            services.cancel_scope.cancel()

    async def _join_cluster(self, services: trio.Nursery, chat: Chat, store: Store) -> None:
        """Name this node; with a broker, join the other nodes before the startup lines."""
        s = self.settings
        self.node = NODE.node = s.node_name or f"{socket.gethostname()}:{self.tcp_port}"
        chat.meet(SingleNode(self.node))
        if not s.broker_url:
            return
        from utuvox.cluster.broker import open_broker
        from utuvox.cluster.node import Cluster
        from utuvox.store.postgres import PostgresStore

        assert isinstance(store, PostgresStore)
        broker = open_broker(s.broker_url, f"{s.cluster_name}.events")
        self.cluster = cluster = Cluster(chat, store, broker, self.node, heartbeat=s.heartbeat_interval,
                                         expiry=s.node_expiry)
        chat.hear_from(cluster)
        if self.admin is not None:
            self.admin.hear_from(cluster)
        await services.start(cluster.run)
        log.info("joined cluster %s as node %s", s.cluster_name, self.node)

    def _figures(self) -> dict[str, int]:
        return {"slow_consumers": Counters.cut_off, "open_files": open_files(),
                "max_open_files": resource.getrlimit(resource.RLIMIT_NOFILE)[0], "refused_busy": self.refused_busy}

    async def _say_goodbye(self, chat: Chat, sessions: trio.Nursery) -> None:
        # New requests are refused from here; the messages already taken in are committed and
        # acknowledged before anyone is told goodbye, so every stored message gets its ``ok``. (A restart
        # is not everyone leaving: no leave is stored for these sessions.) Each wait below is woken by
        # what it waits for (a session's writes settling, the last outbox closing), never by a timer.
        chat.stop_taking_requests()
        with trio.move_on_after(self.settings.shutdown_grace):
            assert self.store is not None
            await self.store.flush()
            # A request taken in just before the stop may still start a write: look again until none is left.
            while waiting := [s for s in chat.all_sessions() if s.unacked]:
                for session in waiting:
                    await session.settle()
        await trio.lowlevel.checkpoint()  # let the flusher write the last acknowledgements
        for session in chat.all_sessions():
            session.peer.close("Server shutting down.", "shutdown")
        with trio.move_on_after(self.settings.shutdown_grace):
            await self.flusher.wait_all_closed()
        sessions.cancel_scope.cancel()

    async def _listen(self, listeners: trio.Nursery, sessions: trio.Nursery, chat: Chat) -> None:
        s = self.settings
        tcp = await trio.open_tcp_listeners(s.port, host=s.host)
        self.tcp_port = tcp[0].socket.getsockname()[1]
        listeners.start_soon(partial(trio.serve_listeners, partial(self._guarded, self._on_tcp, chat), tcp,
                                     handler_nursery=sessions))
        ws = await trio.open_tcp_listeners(s.ws_port, host=s.host)
        self.ws_port = ws[0].socket.getsockname()[1]
        listeners.start_soon(partial(trio.serve_listeners, partial(self._guarded, self._on_websocket, chat), ws,
                                     handler_nursery=sessions))
        irc = await trio.open_tcp_listeners(s.irc_port, host=s.host)
        self.irc_port = irc[0].socket.getsockname()[1]
        listeners.start_soon(partial(trio.serve_listeners, partial(self._guarded, self._on_irc, chat), irc,
                                     handler_nursery=sessions))
        await listeners.start(partial(serve_admin_socket, partial(self._guarded, self._on_admin, chat),
                                      s.admin_socket_path, handler_nursery=sessions))

    async def _guarded(self, handler: Callable[[Chat, trio.SocketStream], Any], chat: Chat,
                       stream: trio.SocketStream) -> None:
        """Run a connection's handler so that nothing going wrong with one connection (a descriptor
        shortage, a socket closed under it) can end the listener, and with it the server."""
        try:
            await handler(chat, stream)
        except Exception:
            log.exception("connection from %s failed", _address(stream.socket))
            with contextlib.suppress(Exception):
                await trio.aclose_forcefully(stream)

    async def _on_admin(self, chat: Chat, stream: trio.SocketStream) -> None:
        s = self.settings
        operator, uid, pid = peer_credentials(stream.socket)
        if uid not in {os.getuid(), 0, *s.admin_uids}:
            # The socket's mode already keeps others out; this holds even if its directory or mode is loosened.
            log.warning("admin socket: refused OS user %s (uid %s, pid %s)", operator, uid, pid)
            with trio.move_on_after(1), contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError,
                                                            OSError):
                await stream.send_all(json_codec.encode(Goodbye(reason="This OS user may not administer the server.",
                                                                code="forbidden")))
                await stream.send_eof()
                while await stream.receive_some(65536):  # closing with input unread would reset the bye away
                    pass
            await trio.aclose_forcefully(stream)
            return
        if self.admin is not None:
            await self.admin.operator_connected(operator, uid, pid)
        conn = LineConnection(stream, "admin", f"unix:{operator}" + (f" pid {pid}" if pid else ""), s.max_frame_bytes)
        await run_session(chat, conn, "json", queue_limit=s.send_queue_frames, queue_bytes=s.send_queue_bytes,
                          flusher=self.flusher, operator=operator)

    @contextlib.contextmanager
    def _admit(self, address: str) -> Iterator[Goodbye | None]:
        """Count a connection against its address and the descriptors while it lasts; yields ``None`` if
        it may stay, or the goodbye that refuses it."""
        key = address_key(address)
        count = self._per_address[key] = self._per_address.get(key, 0) + 1
        self._connections += 1
        try:
            if self._connections > self._fd_budget:
                self.refused_busy += 1
                if self.refused_busy % 1000 == 1:
                    log.warning("refusing connections: %d open, the most the open files limit allows",
                                self._connections - 1)
                yield Goodbye(reason="The server is too busy to take more connections; try again later.",
                              code="server_busy")
            elif count > self.settings.max_connections_per_address:
                yield Goodbye(reason=f"Too many connections from your address (at most "
                                     f"{self.settings.max_connections_per_address}).", code="limit_reached")
            else:
                yield None
        finally:
            self._connections -= 1
            left = self._per_address[key] - 1
            if left:
                self._per_address[key] = left
            else:
                del self._per_address[key]

    def _tune(self, stream: trio.SocketStream) -> str:
        """Set up an accepted TCP connection (no Nagle delay, keepalives); its peer's address."""
        s = self.settings
        with contextlib.suppress(OSError):
            stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        tune_socket(stream, s.watch.keepalive_interval, s.watch.keepalive_timeout)
        return _address(stream.socket)

    async def _secure(self, stream: trio.SocketStream) -> trio.abc.Stream | None:
        """The stream to speak on: the connection itself, or with TLS on, the connection after a
        completed TLS handshake (``None`` if there was none). The handshake comes before anything else
        is read: text mode, JSON and WebSocket are told apart by what is said inside."""
        if self.tls is None:
            return stream
        return await handshake(stream, self.tls, self.settings.handshake_timeout)

    async def _on_tcp(self, chat: Chat, stream: trio.SocketStream) -> None:
        s = self.settings
        address = self._tune(stream)
        with self._admit(address) as refusal:
            channel = await self._secure(stream)
            if channel is None:
                return
            # JSON clients speak first with '{'; people wait for a welcome. Silence or anything else is text.
            # (A connection about to be refused is not waited for long: it holds a descriptor.)
            first = b""
            with trio.move_on_after(s.detect_timeout if refusal is None else min(s.detect_timeout, 0.05)):
                try:
                    first = bytes(await channel.receive_some(65536))
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    return
                if not first:
                    await channel.aclose()
                    return
            codec: Codec = "json" if first.lstrip()[:1] == b"{" else "text"
            if refusal is not None:
                bye = refusal
                data = json_codec.encode(bye) if codec == "json" else text_codec.render(bye).encode()
                with trio.move_on_after(1), contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError,
                                                                OSError):
                    await channel.send_all(data)
                await trio.aclose_forcefully(channel)
                return
            conn = LineConnection(channel, "tcp", address, s.max_frame_bytes, initial=first)
            await run_session(chat, conn, codec, queue_limit=s.send_queue_frames, queue_bytes=s.send_queue_bytes,
                              flusher=self.flusher, watchdog=self.watchdog)

    async def _on_websocket(self, chat: Chat, stream: trio.SocketStream) -> None:
        s = self.settings
        address = self._tune(stream)
        with self._admit(address) as refusal:
            if refusal is not None and refusal.code == "server_busy":
                await trio.aclose_forcefully(stream)  # no handshake for a connection that cannot stay
                return
            channel = await self._secure(stream)
            if channel is None:
                return
            upgraded = await self._upgrade(channel)
            if upgraded is None:
                return
            leftover, subprotocol = upgraded
            if subprotocol is not None:  # IRC over WebSocket: one IRC line per message
                conn = WebSocketConnection(channel, address, MAX_LINE + MAX_TAGS, initial=leftover)
                conn.frame = irc_frame_text if subprotocol == "text.ircv3.net" else irc_frame_binary
                if refusal is not None:
                    await trio.aclose_forcefully(channel)
                    return
                await run_session(chat, conn, "irc", queue_limit=s.send_queue_frames, queue_bytes=s.send_queue_bytes,
                                  flusher=self.flusher, watchdog=self.watchdog, irc=self.irc)
                return
            conn = WebSocketConnection(channel, address, s.max_frame_bytes, initial=leftover)
            if refusal is not None:
                with trio.move_on_after(1), contextlib.suppress(trio.BrokenResourceError, OSError):
                    await channel.send_all(conn.frame(json_codec.encode(refusal))
                                           + websocket.close_frame(websocket.POLICY, "too many connections"))
                await trio.aclose_forcefully(channel)
                return
            await run_session(chat, conn, "json", queue_limit=s.send_queue_frames, queue_bytes=s.send_queue_bytes,
                              flusher=self.flusher, watchdog=self.watchdog)

    async def _on_irc(self, chat: Chat, stream: trio.SocketStream) -> None:
        address = self._tune(stream)
        with self._admit(address) as refusal:
            if refusal is not None and refusal.code == "server_busy":
                await trio.aclose_forcefully(stream)  # no TLS handshake for a connection that cannot stay
                return
            channel = await self._secure(stream)
            if channel is None:
                return
            if refusal is not None:
                with trio.move_on_after(1), contextlib.suppress(trio.BrokenResourceError, OSError):
                    await channel.send_all(f"ERROR :{refusal.reason}\r\n".encode())
                await trio.aclose_forcefully(channel)
                return
            conn = LineConnection(channel, "irc", address, MAX_LINE + MAX_TAGS)
            await run_session(chat, conn, "irc", queue_limit=self.settings.send_queue_frames,
                              queue_bytes=self.settings.send_queue_bytes, flusher=self.flusher,
                              watchdog=self.watchdog, irc=self.irc)

    async def _upgrade(self, channel: trio.abc.Stream) -> tuple[bytes, str | None] | None:
        """The opening handshake within ``handshake_timeout``: the bytes the client sent behind its
        request and the subprotocol chosen, or ``None`` (the connection answered if it asked for
        something else, and closed)."""
        reader = websocket.HandshakeReader(self.site)
        answer = None
        with trio.move_on_after(self.settings.handshake_timeout):
            try:
                while answer is None:
                    answer = reader.feed(bytes(await channel.receive_some(websocket.MAX_HEAD)))
                await channel.send_all(answer.response)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                answer = None
        if answer is not None and answer.accepted:
            return answer.leftover, answer.subprotocol
        with trio.move_on_after(1):
            await trio.aclose_forcefully(channel)
        return None
