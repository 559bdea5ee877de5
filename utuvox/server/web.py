"""The web client's files, answered on the WebSocket port to a request that is not an upgrade, and the
browser's side of the upgrade: whether an ``Origin`` may open a WebSocket.

A pure core like :mod:`.websocket`: the files are read once, when the server starts (a few tens of KB,
gzipped once too), and every answer is built from memory, so serving the page never touches the disk
or the event loop's time. Only the files shipped in ``utuvox/web/static/`` exist: a path is a key in a
dictionary, never joined to a directory, so no path can lead anywhere else.
"""

from __future__ import annotations

import gzip
import hashlib
import re
from dataclasses import dataclass
from http import HTTPStatus
from importlib import resources

TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
# Compressing these pays; an SVG icon of a few hundred bytes does not need it either, but costs nothing.
_COMPRESSIBLE = (".html", ".js", ".css", ".svg")

# What a Host header may hold before it is echoed into the Content-Security-Policy: a name, an IPv4 or a
# bracketed IPv6 address, and a port. Anything else is refused rather than quoted.
_HOST = re.compile(rb"^[A-Za-z0-9.\-]{1,253}(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]{2,45}\](:[0-9]{1,5})?$")
_DEFAULT_PORTS = {"http": "80", "https": "443"}


@dataclass(frozen=True)
class Asset:
    body: bytes
    gzipped: bytes
    content_type: str
    etag: bytes


def _asset(name: str, body: bytes) -> Asset:
    suffix = name[name.rfind("."):]
    gzipped = gzip.compress(body, 9, mtime=0) if suffix in _COMPRESSIBLE else b""
    if len(gzipped) >= len(body):
        gzipped = b""
    etag = b'"' + hashlib.sha256(body).hexdigest()[:20].encode() + b'"'
    return Asset(body, gzipped, TYPES.get(suffix, "application/octet-stream"), etag)


def load_assets() -> dict[str, Asset]:
    """The shipped files by URL path (``/`` is ``index.html``)."""
    static = resources.files("utuvox.web").joinpath("static")
    assets: dict[str, Asset] = {}
    for entry in static.iterdir():
        name = entry.name
        if entry.is_file() and name[name.rfind("."):] in TYPES:
            assets["/" + name] = _asset(name, entry.read_bytes())
    if "/index.html" in assets:
        assets["/"] = assets["/index.html"]
    return assets


def _origin_key(origin: str) -> str | None:
    """``scheme://host[:port]`` in one spelling (lower case, default port left out), or None."""
    scheme, sep, rest = origin.strip().lower().rstrip("/").partition("://")
    if not sep or not rest or "/" in rest:
        return None
    host, colon, port = rest.rpartition(":")
    if colon and "]" not in port and port == _DEFAULT_PORTS.get(scheme):
        rest = host
    return f"{scheme}://{rest}"


def parse_origins(text: str) -> frozenset[str]:
    """The ``allowed_origins`` setting: origins separated by commas or spaces; ``*`` allows any."""
    out = set()
    for item in re.split(r"[,\s]+", text.strip()):
        if item == "*":
            out.add("*")
        elif item and (key := _origin_key(item)) is not None:
            out.add(key)
    return frozenset(out)


class Site:
    """The web client (``assets``; none: this port speaks WebSocket only) and the origins allowed to
    open a WebSocket besides the page's own. ``secure``: the port speaks TLS (https and wss)."""

    def __init__(self, assets: dict[str, Asset] | None = None, *, secure: bool = False,
                 allowed_origins: frozenset[str] = frozenset()) -> None:
        self.assets = assets or {}
        self.secure = secure
        self.allowed_origins = allowed_origins

    def origin_allowed(self, origin: bytes, host: bytes | None) -> bool:
        """A browser says where the page that opens a WebSocket came from: allow the server's own page
        (the origin of the Host it asked for), and the origins the operator listed. Programs that send no
        ``Origin`` are not asked (the caller only asks when there is one)."""
        if "*" in self.allowed_origins:
            return True
        key = _origin_key(origin.decode("latin-1"))
        if key is None:
            return False
        if key in self.allowed_origins:
            return True
        if host is None:
            return False
        scheme = "https" if self.secure else "http"
        return key == _origin_key(f"{scheme}://{host.decode('latin-1')}")

    def policy(self, host: bytes) -> bytes:
        """The Content-Security-Policy: this origin's own files only, no inline script or style, and
        WebSockets to this same host and port."""
        ws = b"wss" if self.secure else b"ws"
        return (b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
                b"connect-src 'self' " + ws + b"://" + host + b"; object-src 'none'; base-uri 'none'; "
                b"form-action 'none'; frame-ancestors 'none'")

    def respond(self, method: bytes, target: bytes, headers: dict[bytes, list[bytes]]) -> bytes:
        """The whole HTTP answer (head and body) to a plain GET or HEAD."""
        hosts = headers.get(b"host", [])
        if len(hosts) != 1 or not _HOST.match(hosts[0].strip()):
            return self._plain(400, "A request needs one valid Host header.")
        host = hosts[0].strip()
        security = self._security(host)
        if method not in (b"GET", b"HEAD"):
            return self._plain(405, "Only GET and HEAD are answered here.", security + b"Allow: GET, HEAD\r\n")
        path = target.split(b"?", 1)[0].split(b"#", 1)[0].decode("latin-1")
        asset = self.assets.get(path)
        if asset is None:
            return self._plain(404, "Not found.", security, head_only=method == b"HEAD")
        common = (security + b"Cache-Control: no-cache\r\nETag: " + asset.etag + b"\r\nVary: Accept-Encoding\r\n")
        if asset.etag in {t.strip() for v in headers.get(b"if-none-match", []) for t in v.split(b",")}:
            return b"HTTP/1.1 304 Not Modified\r\n" + common + b"Connection: close\r\n\r\n"
        body, encoding = asset.body, b""
        accept = {t.split(b";")[0].strip().lower() for v in headers.get(b"accept-encoding", []) for t in v.split(b",")}
        if asset.gzipped and b"gzip" in accept:
            body, encoding = asset.gzipped, b"Content-Encoding: gzip\r\n"
        head = (b"HTTP/1.1 200 OK\r\nContent-Type: " + asset.content_type.encode() + b"\r\nContent-Length: "
                + str(len(body)).encode() + b"\r\n" + encoding + common + b"Connection: close\r\n\r\n")
        return head if method == b"HEAD" else head + body

    def _security(self, host: bytes) -> bytes:
        return (b"Content-Security-Policy: " + self.policy(host) + b"\r\nX-Content-Type-Options: nosniff\r\n"
                b"Referrer-Policy: no-referrer\r\nX-Frame-Options: DENY\r\nCross-Origin-Opener-Policy: same-origin\r\n"
                b"Cross-Origin-Resource-Policy: same-origin\r\n")

    @staticmethod
    def _plain(status: int, message: str, extra: bytes = b"", *, head_only: bool = False) -> bytes:
        body = message.encode() + b"\n"
        head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: text/plain; charset=utf-8\r\n"
                f"Content-Length: {len(body)}\r\n").encode() + extra + b"Connection: close\r\n\r\n"
        return head if head_only else head + body
