"""Every setting of the server, from command-line flags or ``UTUVOX_*`` environment variables.

The settings are one tree, :class:`Settings`: the server's own (addresses, directories, TLS, the cluster,
connections) at the top, and below them the sections of the parts that use them, declared where they are
used: ``chat`` (:class:`~utuvox.chat.config.ChatConfig`, with its ``limits``), ``files``
(:class:`~utuvox.chat.files.FileConfig`) and ``watch`` (:class:`~utuvox.server.keepalive.WatchConfig`).
Each field gives a setting's name, default, bounds and description, once.

Names stay flat whatever the depth: every setting is the environment variable ``UTUVOX_<NAME>`` and the
keyword ``<name>`` of ``Settings(...)``, so ``Settings(port=0, session_messages_burst=3)`` sets
``chat.limits.session_messages.burst`` (utuvox.chat.section says how a field's name is made).
:data:`VARIABLES` lists them all; ``utuvox serve --help`` prints that list.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic.dataclasses import is_pydantic_dataclass
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from utuvox.chat.config import ChatConfig
from utuvox.chat.files import FileConfig
from utuvox.chat.section import Env, Section
from utuvox.protocol.files import chunk_size_for_frame

from .keepalive import WatchConfig

PREFIX = "UTUVOX_"

# Limits that never slow a benchmark or a test suite down (one address, 10^5 messages a second through one
# connection): for trusted machines only. The benchmarks and the tests start their servers with these and
# set any limit they exercise themselves.
UNTHROTTLED: dict[str, float] = {
    **{f"{scope}_{kind}_{unit}": 1_000_000 for scope in ("session", "user", "bot")
       for kind in ("requests", "messages") for unit in ("per_second", "burst")},
    "session_joins_per_second": 1000, "session_joins_burst": 10_000,
    "user_joins_per_second": 1000, "user_joins_burst": 10_000,
    "user_creates_per_second": 1000, "user_creates_burst": 10_000,
    "session_logins_per_second": 1000, "session_logins_burst": 10_000,
    "user_logins_per_second": 1000, "user_logins_burst": 10_000,
    "max_rooms_created_per_user": 1_000_000,
    "max_sessions_per_user": 100_000,
    "max_connections_per_address": 100_000,
    "max_uploads_per_user": 64,
}


def unthrottled_env() -> dict[str, str]:
    """:data:`UNTHROTTLED` as ``UTUVOX_*`` environment variables, for a server started as a process."""
    return {VARIABLES[name].env: str(value) for name, value in UNTHROTTLED.items()}


@dataclass(frozen=True)
class Variable:
    """One setting as operators see it: ``name`` (lower case; ``UTUVOX_`` and the name in capitals is its
    environment variable), where it lands in the tree (``path``), its field, default and description."""

    name: str
    path: tuple[str, ...]
    field: FieldInfo
    default: Any
    description: str
    whole: dict[str, Any] | None = None  # a part of a compound value: the whole value's default, as a dict

    @property
    def env(self) -> str:
        return PREFIX + self.name.upper()

    def value(self, settings: Settings) -> Any:
        """This setting's value in ``settings``."""
        node: Any = settings
        for key in self.path:
            node = getattr(node, key)
        return node


def _variables(model: type[BaseModel], path: tuple[str, ...] = ()) -> Iterator[Variable]:
    for name, info in model.model_fields.items():
        env = next((m for m in info.metadata if isinstance(m, Env)), None)
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, Section):
            yield from _variables(annotation, (*path, name))
            continue
        if env is not None and env.name is None:
            continue
        flat = env.name if env is not None and env.name is not None else name
        default = info.get_default(call_default_factory=True)
        description = info.description or ""
        if isinstance(annotation, type) and is_pydantic_dataclass(annotation):  # a Rate: one variable per part
            for part, part_info in annotation.__pydantic_fields__.items():
                yield Variable(f"{flat}_{part}", (*path, name, part), part_info, getattr(default, part),
                               f"{description} ({part.replace('_', ' ')})", dataclasses.asdict(default))
        else:
            yield Variable(flat, (*path, name), info, default, description)


def _put(tree: dict[str, Any], variable: Variable, value: Any) -> None:
    """Set ``value`` at the variable's place in a tree of dicts, turning the models met on the way into
    dicts; the other parts of a compound value keep their defaults."""
    *parents, last = variable.path
    node = tree
    for depth, key in enumerate(parents, 1):
        child = node.get(key)
        if child is None and depth == len(parents) and variable.whole is not None:
            child = variable.whole
        if isinstance(child, BaseModel):
            child = child.model_dump()
        elif dataclasses.is_dataclass(child) and not isinstance(child, type):
            child = dataclasses.asdict(child)
        elif isinstance(child, dict):
            child = dict(child)
        else:
            child = {}
        node[key] = child
        node = child
    node[last] = value


class _FlatEnv(EnvSettingsSource):
    """Each setting from ``UTUVOX_<NAME>``, into its place in the tree (parsed as pydantic-settings parses
    a variable: JSON for a list, as given otherwise)."""

    def __call__(self) -> dict[str, Any]:
        tree: dict[str, Any] = {}
        for variable in VARIABLES.values():
            raw, _, is_complex = self.get_field_value(variable.field, variable.name)
            value = self.prepare_field_value(variable.name, variable.field, raw, is_complex)
            if value is not None:
                _put(tree, variable, value)
        return tree


class Settings(BaseSettings):
    """The whole tree. Keywords and environment variables use the flat names of :data:`VARIABLES`; the
    keywords win."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, extra="ignore")

    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(9090, ge=0, le=65535, description="TCP port (text mode and JSON lines); 0: any free port")
    ws_port: int = Field(9091, ge=0, le=65535, description="WebSocket port; 0: any free port")
    irc_port: int = Field(6667, ge=0, le=65535, description="IRC port; 0: any free port")
    irc_guests: bool = Field(True, description="IRC connections that give only a nick (guests) are let in")
    irc_register_before_connect: bool = Field(True, description="IRC REGISTER may come before registration ends")
    irc_server_name: str = Field("utuvox", pattern=r"^[A-Za-z0-9][A-Za-z0-9.\-]{0,62}$",
                                 description="the server's name on IRC")
    data_dir: Path = Field(Path("."), description="where utuvox_db.db, uploads/, admin_key.txt and admin.sock live")
    admin_socket: Path | None = Field(None, description="the operators' Unix socket (default: DATA_DIR/admin.sock)")
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")

    # several nodes (docs/SCALING.md): PostgreSQL instead of the SQLite file, a broker between the nodes
    database_url: str | None = Field(None, description="postgresql://... : store everything in PostgreSQL")
    broker_url: str | None = Field(None, description="redis://HOST:PORT/DB or nats://HOST:PORT: join the other nodes")
    node_name: str | None = Field(None, description="this node's name in who, stats and logs (default host:port)")
    cluster_name: str = Field("utuvox", description="prefix of every channel, subject and key on the broker")
    heartbeat_interval: float = Field(5.0, gt=0, description="seconds between a node's heartbeats on the broker")
    node_expiry: float = Field(15.0, gt=0, description="a node silent this long is taken for dead")
    uploads: Path | None = Field(None, description="the uploads directory (default DATA_DIR/uploads); "
                                                   "nodes of a cluster share one (a shared mount)")

    # connections
    max_frame_bytes: int = Field(64 * 1024, ge=1024, description="largest frame a client may send")
    send_queue_frames: int = Field(10_000, ge=16, description="frames queued for one client before it is cut off")
    send_queue_bytes: int = Field(8 * 1024 * 1024, ge=64 * 1024,
                                  description="bytes queued for one client (and being written) before it is cut off")
    detect_timeout: float = Field(0.5, gt=0, description="how long to wait for a first byte to tell JSON from text")
    shutdown_grace: float = Field(2.0, ge=0, description="seconds to flush goodbyes on shutdown")
    max_connections_per_address: int = Field(20, ge=1, description="connections from one IP (IPv6: one /64)")
    fd_reserve: int = Field(64, ge=8, description="file descriptors kept free for the store, the admin socket "
                                                  "and files: connections beyond the rest are refused")
    admin_uids: list[int] = Field(default_factory=list, description="OS users besides the server's own and root "
                                                                    "that may use the admin socket")
    handshake_timeout: float = Field(10.0, gt=0, description="TLS and WebSocket handshakes")

    # TLS: both or neither; then the TCP port speaks TLS and the WebSocket port WSS
    tls_cert: Path | None = Field(None, description="PEM certificate chain")
    tls_key: Path | None = Field(None, description="PEM private key")

    # the web client on the WebSocket port; browsers send Origin, and only the page's own is let in by default
    allowed_origins: str = Field("", description="other origins whose pages may open a WebSocket, separated by "
                                                 "commas (e.g. https://chat.example.com); * allows any")

    # the sections of the parts that use them. The rates and caps default to what suits a public server
    # (docs/SECURITY.md); the benchmarks and the tests set their own.
    watch: WatchConfig = Field(WatchConfig(), description="connections that go quiet or never finish")
    chat: ChatConfig = Field(ChatConfig(), description="the chat rules")
    files: FileConfig = Field(FileConfig(), description="file sharing")

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, _FlatEnv(settings_cls)

    @model_validator(mode="before")
    @classmethod
    def _nest(cls, data: Any) -> Any:
        """Flat keywords (``session_messages_burst=3``) go to their place in the tree, over what the
        environment put there."""
        if not isinstance(data, dict):
            return data
        tree = dict(data)
        for key in list(tree):
            variable = VARIABLES.get(key.lower()) if isinstance(key, str) else None
            if variable is not None and len(variable.path) > 1:
                _put(tree, variable, tree.pop(key))
        return tree

    @model_validator(mode="after")
    def _derive(self) -> Settings:
        """The values the sections take from the server's: where files go, how large a chunk is, and a
        history page that fits in half a send queue."""
        self.files = self.files.model_copy(update={
            "uploads_dir": self.uploads_dir, "temp_dir": self.temp_uploads_dir,
            "chunk_size": chunk_size_for_frame(self.max_frame_bytes)})
        page = min(self.chat.history_page_bytes, self.send_queue_bytes // 2)
        if page != self.chat.history_page_bytes:
            self.chat = self.chat.model_copy(update={"history_page_bytes": page})
        return self

    @field_validator("database_url")
    @classmethod
    def _postgres_only(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("postgresql://", "postgres://")):
            raise ValueError("the database URL must start with postgresql://")
        return url

    @field_validator("broker_url")
    @classmethod
    def _known_broker(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("redis://", "rediss://", "nats://", "tls://")):
            raise ValueError("the broker URL must start with redis:// or nats://")
        return url

    @field_validator("cluster_name")
    @classmethod
    def _token(cls, name: str) -> str:
        # One token of a NATS subject and a plain Redis channel name: letters, digits, '-' and '_'.
        if not name or not all(c.isascii() and (c.isalnum() or c in "-_") for c in name):
            raise ValueError("the cluster name may hold only letters, digits, '-' and '_'")
        return name

    @property
    def db_path(self) -> Path:
        return self.data_dir / "utuvox_db.db"

    @property
    def uploads_dir(self) -> Path:
        return self.uploads or self.data_dir / "uploads"

    @property
    def temp_uploads_dir(self) -> Path:
        """Where uploads in progress stream to (same file system as uploads/, so the final move is a link)."""
        return self.data_dir / "uploads.tmp"

    @property
    def admin_key_path(self) -> Path:
        return self.data_dir / "admin_key.txt"

    @property
    def admin_socket_path(self) -> Path:
        return self.admin_socket or self.data_dir / "admin.sock"


# Every setting by name, in the order of the tree.
VARIABLES: dict[str, Variable] = {v.name: v for v in _variables(Settings)}
_BY_PATH: dict[tuple[str, ...], Variable] = {v.path: v for v in VARIABLES.values()}


def setting_name(loc: tuple[int | str, ...]) -> str:
    """The name operators know for the place ``loc`` of a validation error (``chat.limits.strikes``:
    ``rate_limit_strikes``)."""
    for end in range(len(loc), 0, -1):
        variable = _BY_PATH.get(tuple(str(part) for part in loc[:end]))
        if variable is not None:
            return variable.name
    return ".".join(str(part) for part in loc)
