"""Saying what is wrong with a server URL in one line, rather than with a traceback or a long wait.

:func:`check_url` refuses what cannot be a server URL (``http://``, a port that is no port).
:func:`explain_failure` looks at what answers at an address the client could not use: UtuVox's WebSocket
port answers HTTP, its TCP port answers in text mode, so the two ports swapped are recognised at once.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import trio

from utuvox.protocol.safe_text import clean

from .transport import DEFAULT_TCP_PORT, DEFAULT_WS_PORT, Address, parse_url

PROBE_TIMEOUT = 1.5  # the TCP port greets a silent client after its detect_timeout (0.5 s by default)
EXAMPLES = f"tcp://HOST:{DEFAULT_TCP_PORT} (text and JSON lines) or ws://HOST:{DEFAULT_WS_PORT} (WebSocket)"


class UrlMistake(ValueError):
    """The URL cannot be right; the message says what was expected."""


def check_url(url: str) -> Address:
    """The address of ``url``, or :class:`UrlMistake` with one line saying what is wrong."""
    parts = urlsplit(url if "://" in url else "tcp://" + url)
    scheme = parts.scheme.lower()
    if scheme not in ("tcp", "tcps", "ws", "wss"):
        raise UrlMistake(f"{url!r} is not an UtuVox URL: the scheme must be tcp://, tcps://, ws:// or wss://, "
                         f"as in {EXAMPLES}")
    try:
        port = parts.port
    except ValueError:
        port_text = parts.netloc.rpartition(":")[2]
        what = "out of range (1-65535)" if port_text.isdigit() else "not a number"
        raise UrlMistake(f"the port in {url!r} is {what}: expected {EXAMPLES}") from None
    if port == 0:
        raise UrlMistake(f"port 0 in {url!r} cannot be connected to: expected {EXAMPLES}")
    try:
        return parse_url(url)
    except ValueError as exc:
        raise UrlMistake(f"{exc}: expected {EXAMPLES}") from None


async def explain_failure(address: Address) -> str | None:
    """If what answers at ``address`` is the other UtuVox port (or an HTTP server), one line saying so and
    which URL to use; ``None`` when nothing tells (nothing listening, a TLS URL, the right kind of port)."""
    if address.scheme not in ("tcp", "ws"):
        return None
    try:
        with trio.move_on_after(PROBE_TIMEOUT):
            stream = await trio.open_tcp_stream(address.host, address.port)
            try:
                if address.scheme == "tcp":
                    await stream.send_all(b"GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
                                          % address.host.encode("idna"))
                answer = await stream.receive_some(4096)
            finally:
                await trio.aclose_forcefully(stream)
            return _diagnose(address, answer)
    except (OSError, trio.BrokenResourceError):
        return None
    return None


def _diagnose(address: Address, answer: bytes) -> str | None:
    where = f"{address.host}:{address.port}"
    if address.scheme == "tcp" and answer.startswith(b"HTTP/"):
        status = clean(answer.split(b"\r\n", 1)[0].decode("ascii", "replace"))  # another server's words
        return (f"tcp://{where} is a WebSocket (HTTP) port; it answered '{status}'. "
                f"Use ws://{where}, or the server's TCP port with tcp://")
    if address.scheme == "ws" and (answer.startswith(b"[") or answer.lstrip().startswith(b"{")):
        return (f"ws://{where} is UtuVox's TCP port, not its WebSocket port; it answered in text mode. "
                f"Use tcp://{where}, or the server's WebSocket port with ws://")
    return None
