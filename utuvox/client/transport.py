"""Byte pipes to the server: JSON lines over TCP, one JSON text message per frame over WebSocket.

Both present the same three calls (send, receive, close) and say how what they receive is framed, so
the client above them hands it to :class:`~utuvox.protocol.client_protocol.ClientProtocol` without
knowing which it has. URLs: ``tcp://host:port`` (the default scheme), ``tcps://host:port`` (TCP in
TLS), ``ws://host:port[/path]`` and ``wss://...``. Over TLS the server's certificate is always verified:
against the system's trusted CAs, or against the one CA file given as ``ca`` (a private CA, a
self-signed certificate).
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import trio
import trio_websocket

from utuvox.protocol.client_protocol import MAX_FRAME, Framing

DEFAULT_TCP_PORT = 9090
DEFAULT_WS_PORT = 9091
# A frame cut off halfway would corrupt every frame after it, so a send is finished even if its caller
# is cancelled meanwhile; a server that reads nothing for this long loses the connection instead.
SEND_GRACE = 10.0


class TransportClosed(Exception):
    """The connection is gone (closed by either side, or broken)."""


@dataclass(frozen=True)
class Address:
    scheme: str  # "tcp", "tcps", "ws" or "wss"
    host: str
    port: int
    path: str = "/"

    def __str__(self) -> str:
        if self.scheme in ("tcp", "tcps"):
            return f"{self.scheme}://{self.host}:{self.port}"
        return f"{self.scheme}://{self.host}:{self.port}{self.path}"


def parse_url(url: str) -> Address:
    """``tcp://127.0.0.1:9090``, ``tcps://chat.example:9090``, ``ws://127.0.0.1:9091``, ``wss://chat.example/ws``
    or a bare ``host:port`` (TCP). Raises ``ValueError`` for anything else."""
    if "://" not in url:
        url = "tcp://" + url
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("tcp", "tcps", "ws", "wss"):
        raise ValueError(f"unsupported URL scheme {parts.scheme!r}: use tcp://, tcps://, ws:// or wss://")
    if not parts.hostname:
        raise ValueError(f"no host in URL {url!r}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"bad port in URL {url!r}") from None
    if port is None:
        port = {"tcp": DEFAULT_TCP_PORT, "tcps": DEFAULT_TCP_PORT, "ws": DEFAULT_WS_PORT, "wss": 443}[scheme]
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Address(scheme, parts.hostname, port, path)


def _plain(exc: OSError) -> OSError:
    """trio's "all attempts to connect to ... failed" as the reason of the first attempt (errno and
    ``strerror``: ``Connection refused``), which is what a person needs to read."""
    if exc.strerror:
        return exc
    group = exc.__cause__
    if isinstance(group, BaseExceptionGroup):
        for inner in group.exceptions:
            if isinstance(inner, OSError) and inner.errno:
                return OSError(inner.errno, os.strerror(inner.errno))
    return exc


async def _open_tcp(address: Address) -> trio.SocketStream:
    try:
        return await trio.open_tcp_stream(address.host, address.port)
    except OSError as exc:
        raise _plain(exc) from exc


def tls_context(ca: str | Path | None = None) -> ssl.SSLContext:
    """Verifies the server's certificate and host name: with ``ca``, against that CA file only."""
    return ssl.create_default_context(cafile=str(ca) if ca is not None else None)


def _tls_failure(address: Address, exc: BaseException) -> OSError:
    cause = exc.__cause__ or exc.__context__ or exc
    return OSError(f"TLS handshake with {address.host}:{address.port} failed: {cause}")


class Transport(Protocol):
    # "lines": receive() returns any piece of a stream of JSON lines; "messages": one whole frame.
    framing: Framing

    async def send(self, frame: bytes) -> None:
        """Send one encoded frame (a JSON object followed by a newline)."""

    async def receive(self) -> bytes | str:
        """What arrived next. Raises :class:`TransportClosed` once the connection is gone."""

    async def aclose(self) -> None: ...


class TcpTransport:
    framing: Framing = "lines"

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        # trio streams refuse concurrent send_all calls; requests from many tasks take turns.
        self._send_lock = trio.Lock()

    @classmethod
    async def open(cls, address: Address, ca: str | Path | None = None) -> TcpTransport:
        stream = await _open_tcp(address)
        with contextlib.suppress(OSError):
            stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        if address.scheme != "tcps":
            return cls(stream)
        tls = trio.SSLStream(stream, tls_context(ca), server_hostname=address.host)
        try:
            # Now, not on the first send: a certificate that fails verification fails the connect.
            await tls.do_handshake()
        except trio.BrokenResourceError as exc:
            await trio.aclose_forcefully(stream)
            raise _tls_failure(address, exc) from None
        return cls(tls)

    async def send(self, frame: bytes) -> None:
        async with self._send_lock:
            with trio.move_on_after(SEND_GRACE, shield=True) as scope:
                try:
                    await self._stream.send_all(frame)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    raise TransportClosed(str(exc) or "connection lost") from exc
            if scope.cancelled_caught:
                await self.aclose()
                raise TransportClosed("the server stopped reading")

    async def receive(self) -> bytes:
        try:
            data = await self._stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise TransportClosed(str(exc) or "connection lost") from exc
        if not data:
            raise TransportClosed("the server closed the connection")
        return bytes(data)

    async def aclose(self) -> None:
        with trio.move_on_after(1) as scope:
            scope.shield = True
            with contextlib.suppress(trio.BrokenResourceError, OSError):
                await self._stream.aclose()


class WebSocketTransport:
    framing: Framing = "messages"

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self._ws = ws
        self._send_lock = trio.Lock()

    @classmethod
    async def open(cls, address: Address, nursery: trio.Nursery, ca: str | Path | None = None) -> WebSocketTransport:
        # The connection's background reader lives in the client's nursery, so it outlives this call.
        try:
            if address.scheme == "wss":
                # The TLS handshake is done here first: inside trio-websocket a certificate that fails
                # verification would leave the WebSocket handshake waiting until the connect timeout.
                tls = await trio.open_ssl_over_tcp_stream(address.host, address.port, ssl_context=tls_context(ca),
                                                          https_compatible=True)
                try:
                    await tls.do_handshake()
                except trio.BrokenResourceError as exc:
                    await trio.aclose_forcefully(tls)
                    raise _tls_failure(address, exc) from None
                host = address.host if address.port == 443 else f"{address.host}:{address.port}"
                ws = await trio_websocket.wrap_client_stream(nursery, tls, host, address.path,
                                                             max_message_size=MAX_FRAME, message_queue_size=64)
            else:
                stream = await _open_tcp(address)
                host = address.host if address.port == 80 else f"{address.host}:{address.port}"
                ws = await trio_websocket.wrap_client_stream(nursery, stream, host, address.path,
                                                             max_message_size=MAX_FRAME, message_queue_size=64)
        except trio_websocket.HandshakeError as exc:
            raise OSError(f"WebSocket handshake failed: {exc}") from exc
        return cls(ws)

    async def send(self, frame: bytes) -> None:
        async with self._send_lock:
            with trio.move_on_after(SEND_GRACE, shield=True) as scope:
                try:
                    await self._ws.send_message(frame.rstrip(b"\n").decode())
                except (trio_websocket.ConnectionClosed, trio.BrokenResourceError, OSError) as exc:
                    raise TransportClosed("the WebSocket is closed") from exc
            if scope.cancelled_caught:
                await self.aclose()
                raise TransportClosed("the server stopped reading")

    async def receive(self) -> bytes | str:
        try:
            return await self._ws.get_message()
        except (trio_websocket.ConnectionClosed, trio.BrokenResourceError, OSError) as exc:
            raise TransportClosed("the WebSocket is closed") from exc

    async def aclose(self) -> None:
        with trio.move_on_after(1) as scope:
            scope.shield = True
            with contextlib.suppress(trio_websocket.ConnectionClosed, trio.BrokenResourceError, OSError):
                await self._ws.aclose()


async def open_transport(address: Address, nursery: trio.Nursery, *, timeout: float,
                         ca: str | Path | None = None) -> Transport:
    """Connect, or raise ``OSError`` (refused, unreachable, timed out, handshake failed, a certificate
    that does not verify). ``ca``: the CA file to verify a TLS server against."""
    with trio.move_on_after(timeout):
        if address.scheme in ("tcp", "tcps"):
            return await TcpTransport.open(address, ca)
        return await WebSocketTransport.open(address, nursery, ca)
    raise OSError(f"timed out connecting to {address}")
