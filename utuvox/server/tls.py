"""TLS for the listeners: one server context from the certificate and key of the settings.

The TCP port then speaks TLS (``tcps://`` in the client, ``openssl s_client`` for a person) and the
WebSocket port WSS; what runs inside is unchanged: the server tells JSON from text mode by the first
bytes after the handshake.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import trio


class TlsConfigError(ValueError):
    """The certificate or key cannot be used; the message says which and why (never the key itself)."""


def server_context(cert: Path | None, key: Path | None) -> ssl.SSLContext | None:
    """The context for the listeners, or ``None`` when TLS is off (neither file given)."""
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise TlsConfigError("TLS needs both a certificate (--tls-cert) and its private key (--tls-key)")
    for what, path in (("certificate", cert), ("private key", key)):
        if not path.is_file():
            raise TlsConfigError(f"TLS {what} {path} does not exist or is not a file")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    # No session tickets: with them, a stolen ticket key would decrypt past sessions.
    ctx.options |= ssl.OP_NO_TICKET
    try:
        ctx.load_cert_chain(certfile=str(cert), keyfile=str(key))
    except ssl.SSLError as exc:
        raise TlsConfigError(f"cannot use TLS certificate {cert} with key {key}: {exc.reason or exc}") from None
    except OSError as exc:
        raise TlsConfigError(f"cannot read TLS certificate or key: {exc.strerror or exc}") from None
    return ctx


async def handshake(stream: trio.SocketStream, ctx: ssl.SSLContext, timeout: float) -> trio.SSLStream | None:
    """Wrap an accepted connection and complete the server side of the handshake within ``timeout``;
    ``None`` (the connection closed) if the client does not, or speaks something other than TLS."""
    tls = trio.SSLStream(stream, ctx, server_side=True)
    with trio.move_on_after(timeout):
        try:
            await tls.do_handshake()
            return tls
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
    with trio.move_on_after(1):
        await trio.aclose_forcefully(stream)
    return None
