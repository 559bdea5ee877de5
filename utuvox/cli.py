"""``utuvox serve`` runs the server; ``utuvox schema`` prints the protocol's JSON Schema;
``utuvox client`` runs the terminal client; ``utuvox admin-key`` shows the admin key.

Exit status: 0 done, 1 failed (a port in use, a damaged database, no server), 2 bad usage (a flag, a URL).
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

import trio


def _only_error(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _serve(args: argparse.Namespace) -> int:
    import sqlite3

    from pydantic import ValidationError

    from utuvox.chat.admin_key import AdminKeyError
    from utuvox.cluster.broker import BrokerError
    from utuvox.server.app import NODE, Server
    from utuvox.server.settings import Settings, setting_name
    from utuvox.server.tls import TlsConfigError
    from utuvox.store import StoreError

    overrides = {k: v for k, v in {
        "host": args.host, "port": args.port, "ws_port": args.ws_port, "irc_port": args.irc_port,
        "data_dir": args.data_dir,
        "log_level": args.log_level, "admin_socket": args.admin_socket,
        "tls_cert": args.tls_cert, "tls_key": args.tls_key,
        "database_url": args.database_url, "broker_url": args.broker_url, "node_name": args.node_name,
        "cluster_name": args.cluster_name, "uploads": args.uploads_dir,
    }.items() if v is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            print(f"utuvox: {setting_name(error['loc'])}: {error['msg']}", file=sys.stderr)
        return 2
    busy = _port_in_use(settings.host, [settings.port, settings.ws_port])
    if busy:
        # Before anything is made: a second server started by mistake leaves no data directory behind.
        print(f"utuvox: cannot listen on {busy}: the port is in use (is another server running?)",
              file=sys.stderr)
        return 1
    logging.basicConfig(
        level=settings.log_level.upper(), stream=sys.stderr,
        format="%(asctime)s %(levelname)s [%(node)s] %(name)s: %(message)s",
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(NODE)

    def announce(line: str) -> None:
        print(line, flush=True)

    try:
        try:
            trio.run(Server(settings, announce=announce, tune_gc=True).run)
        except BaseExceptionGroup as group:
            # A failure while starting (a port in use) comes out of the nurseries wrapped in a group.
            raise _only_error(group) from None
    except (TlsConfigError, AdminKeyError) as exc:
        print(f"utuvox: {exc}", file=sys.stderr)
        return 2
    except (StoreError, BrokerError) as exc:
        print(f"utuvox: {exc}", file=sys.stderr)
        return 1
    except sqlite3.Error as exc:  # so damaged that SQLite cannot even read it ("file is not a database")
        print(f"utuvox: cannot use the database {settings.db_path}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"utuvox: cannot start: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


def _port_in_use(host: str, ports: list[int]) -> str | None:
    """``host:port`` of the first of ``ports`` that cannot be bound now (as the listeners bind: with
    SO_REUSEADDR), or ``None``. Port 0 is always free."""
    for port in ports:
        if port == 0:
            continue
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except socket.gaierror:
            return None  # the listeners will say what is wrong with the host
        for family, kind, proto, _, address in infos:
            with socket.socket(family, kind, proto) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind(address)
                except OSError as exc:
                    if exc.errno == errno.EADDRINUSE:
                        return f"{host}:{port}"
    return None


def _schema(args: argparse.Namespace) -> int:
    from utuvox.protocol.schema import json_schema

    print(json.dumps(json_schema(server=args.server), indent=2))
    return 0


def _admin_key(args: argparse.Namespace) -> int:
    from utuvox.server.settings import Settings

    overrides = {k: v for k, v in {"data_dir": args.data_dir, "database_url": args.database_url}.items()
                 if v is not None}
    settings = Settings(**overrides)
    if settings.database_url:
        return _admin_key_in_database(settings.database_url)
    path = settings.admin_key_path
    try:
        key = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        print(f"utuvox: no admin key in {settings.data_dir}: `utuvox serve` creates {path.name} on its first start",
              file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"utuvox: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(key)
    return 0


def _admin_key_in_database(url: str) -> int:
    """With a database URL the key is the cluster's, in its ``settings`` table."""
    try:
        import psycopg

        with psycopg.connect(url, connect_timeout=10) as conn:
            row = conn.execute("SELECT value FROM settings WHERE name = 'admin_key'").fetchone()
    except ImportError:
        print("utuvox: a database URL needs the cluster extra: pip install 'utuvox[cluster]'", file=sys.stderr)
        return 1
    except psycopg.errors.UndefinedTable:
        row = None
    except psycopg.Error as exc:
        print(f"utuvox: cannot read the admin key from the database: {exc}", file=sys.stderr)
        return 1
    if row is None:
        print("utuvox: no admin key in the database: the first `utuvox serve --database-url` creates it",
              file=sys.stderr)
        return 1
    print(row[0])
    return 0


def _client(args: argparse.Namespace) -> int:
    from utuvox.client.terminal import main as terminal_main

    return terminal_main(args.url, args.downloads, args.ca, time_format=args.time_format,
                         paste_lines=args.paste_lines)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("utuvox")
    except PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown"


def _environment() -> str:
    """Every setting's environment variable, default and meaning, from the settings tree."""
    from utuvox.server.settings import VARIABLES

    lines = ["every setting also comes from an environment variable (the flags above win):"]
    for variable in VARIABLES.values():
        default = variable.default
        shown = "none" if default is None or default == [] else "''" if default == "" else f"{default:g}" \
            if isinstance(default, float) else str(default)
        lines.append(f"  {variable.env}={shown}")
        lines.append(f"      {variable.description}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="utuvox", description="UtuVox chat server")
    parser.add_argument("--version", action="version", version=f"utuvox {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the server", epilog=_environment(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="TCP port for text mode and JSON lines (default 9090; 0: any)")
    serve.add_argument("--ws-port", type=int, help="WebSocket port (default 9091; 0: any)")
    serve.add_argument("--irc-port", type=int, help="IRC port (default 6667; 0: any)")
    serve.add_argument("--data-dir", type=Path, help="data directory (default: the current directory)")
    serve.add_argument("--admin-socket", type=Path, help="operators' Unix socket (default DATA_DIR/admin.sock)")
    serve.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR (default INFO)")
    serve.add_argument("--tls-cert", type=Path, metavar="PEM",
                       help="certificate chain: the TCP port then speaks TLS and the WebSocket port WSS")
    serve.add_argument("--tls-key", type=Path, metavar="PEM", help="the certificate's private key")
    serve.add_argument("--uploads-dir", type=Path,
                       help="uploads directory (default DATA_DIR/uploads); the nodes of a cluster share one")
    cluster = serve.add_argument_group("several nodes (docs/SCALING.md)")
    cluster.add_argument("--database-url", metavar="URL",
                         help="postgresql://... : store everything in PostgreSQL instead of the SQLite file "
                              "(env UTUVOX_DATABASE_URL)")
    cluster.add_argument("--broker-url", metavar="URL",
                         help="redis://HOST:PORT/DB or nats://HOST:PORT: join the other nodes for fan-out and "
                              "presence (env UTUVOX_BROKER_URL)")
    cluster.add_argument("--node-name", metavar="NAME", help="this node's name (default: host name and port)")
    cluster.add_argument("--cluster-name", metavar="NAME",
                         help="prefix of every channel, subject and key on the broker (default utuvox)")
    serve.set_defaults(func=_serve)

    schema = sub.add_parser("schema", help="print the JSON Schema of the protocol (JSON Schema 2020-12)")
    schema.add_argument("--server", action="store_true",
                        help="the schema of what the server sends (default: of what a client sends)")
    schema.set_defaults(func=_schema)

    key = sub.add_parser("admin-key", help="print the admin key (the key /register takes for an admin)")
    key.add_argument("--data-dir", type=Path, help="data directory (default: the current directory)")
    key.add_argument("--database-url", metavar="URL",
                     help="the cluster's database: its key is there (env UTUVOX_DATABASE_URL)")
    key.set_defaults(func=_admin_key)

    client = sub.add_parser("client", help="run the terminal client")
    client.add_argument("--url", default="tcp://127.0.0.1:9090",
                        help="server URL: tcp://, tcps:// (TLS), ws:// or wss:// host:port "
                             "(default tcp://127.0.0.1:9090)")
    client.add_argument("--ca", type=Path, metavar="PEM",
                        help="verify a tcps:// or wss:// server against this CA (default: the system's CAs)")
    client.add_argument("--downloads", type=Path, default=Path("downloads"),
                        help="where /download saves files (default ./downloads)")
    client.add_argument("--time-format", default=os.environ.get("UTUVOX_TIME_FORMAT", "%H:%M"), metavar="FORMAT",
                        help="how times show, in local time (the TZ variable), as strftime does: "
                             "'%%H:%%M:%%S', '%%Y-%%m-%%d %%H:%%M'... (default $UTUVOX_TIME_FORMAT or '%%H:%%M')")
    client.add_argument("--paste-lines", type=int, default=5, metavar="N",
                        help="a paste of more lines than N is sent only once confirmed (default 5)")
    client.set_defaults(func=_client)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
