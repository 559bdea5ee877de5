"""Every setting of the server, from command-line flags or ``UTUVOX_*`` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from utuvox.chat.config import ChatConfig
from utuvox.chat.files import FileConfig
from utuvox.chat.limits import LimitsConfig, Rate
from utuvox.protocol.files import chunk_size_for_frame

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
    return {f"UTUVOX_{name.upper()}": str(value) for name, value in UNTHROTTLED.items()}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="UTUVOX_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(9090, ge=0, le=65535, description="TCP port (text mode and JSON lines); 0: any free port")
    ws_port: int = Field(9091, ge=0, le=65535, description="WebSocket port; 0: any free port")
    irc_port: int = Field(6667, ge=0, le=65535, description="IRC port; 0: any free port")
    irc_guests: bool = Field(True, description="IRC connections that give only a nick (guests) are let in")
    irc_register_before_connect: bool = Field(True, description="IRC REGISTER may come before registration ends")
    irc_server_name: str = Field("utuvox", pattern=r"^[A-Za-z0-9][A-Za-z0-9.\-]{0,62}$",
                                 description="the server's name on IRC")
    data_dir: Path = Field(Path("."), description="where utuvox_db.db, uploads/, admin_key.txt and admin.sock live")
    admin_socket: Path | None = Field(None, description="the operators' Unix socket (default: DATA_DIR/admin.sock)")
    log_level: str = "INFO"

    # several nodes (docs/SCALING.md): PostgreSQL instead of the SQLite file, a broker between the nodes
    database_url: str | None = Field(None, description="postgresql://... : store everything in PostgreSQL")
    broker_url: str | None = Field(None, description="redis://HOST:PORT/DB or nats://HOST:PORT: join the other nodes")
    node_name: str | None = Field(None, description="this node's name in who, stats and logs (default host:port)")
    cluster_name: str = Field("utuvox", description="prefix of every channel, subject and key on the broker")
    heartbeat_interval: float = Field(5.0, gt=0, description="seconds between a node's heartbeats on the broker")
    node_expiry: float = Field(15.0, gt=0, description="a node silent this long is taken for dead")
    uploads: Path | None = Field(None, description="the uploads directory (default DATA_DIR/uploads); "
                                                   "nodes of a cluster share one (a shared mount)")

    # limits
    max_frame_bytes: int = Field(64 * 1024, ge=1024, description="largest frame a client may send")
    max_message_chars: int = Field(4000, ge=1)
    send_queue_frames: int = Field(10_000, ge=16, description="frames queued for one client before it is cut off")
    send_queue_bytes: int = Field(8 * 1024 * 1024, ge=64 * 1024,
                                  description="bytes queued for one client (and being written) before it is cut off")
    detect_timeout: float = Field(0.5, gt=0, description="how long to wait for a first byte to tell JSON from text")
    shutdown_grace: float = Field(2.0, ge=0, description="seconds to flush goodbyes on shutdown")
    rejoin_grace: float = Field(60.0, ge=0, description="seconds after a start in which the members of a room at "
                                "the last stop come back without a join being stored")

    # rates (token buckets: a steady rate per second and a burst), per connection and per user. The defaults
    # suit a public server (docs/SECURITY.md); the benchmarks and the tests set their own.
    session_requests_per_second: float = Field(50, gt=0, description="requests one connection may make")
    session_requests_burst: float = Field(200, ge=1)
    user_requests_per_second: float = Field(100, gt=0, description="requests of one user, all connections")
    user_requests_burst: float = Field(400, ge=1)
    session_messages_per_second: float = Field(5, gt=0, description="messages one connection may send")
    session_messages_burst: float = Field(20, ge=1)
    user_messages_per_second: float = Field(10, gt=0, description="messages of one user, all connections")
    user_messages_burst: float = Field(40, ge=1)
    bot_requests_per_second: float = Field(500, gt=0, description="requests of a bot account (per connection "
                                                                  "and per user)")
    bot_requests_burst: float = Field(2000, ge=1)
    bot_messages_per_second: float = Field(50, gt=0, description="messages of a bot account")
    bot_messages_burst: float = Field(200, ge=1)
    session_joins_per_second: float = Field(1, gt=0, description="rooms one connection may join")
    session_joins_burst: float = Field(20, ge=1)
    user_joins_per_second: float = Field(2, gt=0)
    user_joins_burst: float = Field(40, ge=1)
    user_creates_per_second: float = Field(0.1, gt=0, description="rooms one user may create")
    user_creates_burst: float = Field(10, ge=1)
    session_logins_per_second: float = Field(0.2, gt=0, description="login/register attempts of one connection")
    session_logins_burst: float = Field(5, ge=1)
    user_logins_per_second: float = Field(1, gt=0, description="login attempts on one account, from anywhere")
    user_logins_burst: float = Field(10, ge=1)
    rate_limit_strikes: int = Field(20, ge=1, description="requests sent while told to wait, before a disconnect")
    # failed logins: a delay doubling from login_delay_base up to login_delay_max after the free failures
    login_free_failures: int = Field(5, ge=0, description="failed logins on one account before delays start")
    address_free_failures: int = Field(20, ge=0, description="failed logins from one address before delays")
    login_delay_base: float = Field(1.0, gt=0)
    login_delay_max: float = Field(30.0, gt=0, description="the longest delay a run of failed logins earns")
    login_failure_window: float = Field(900.0, gt=0, description="seconds after which failures are forgotten")
    # caps
    max_rooms_per_user: int = Field(100, ge=1, description="rooms one user is in at once")
    max_rooms_created_per_user: int = Field(50, ge=0, description="rooms that exist and were created by one user "
                                                                  "(admins: no cap)")
    max_room_members: int = Field(20_000, ge=1, description="connections in one room")
    max_sessions_per_user: int = Field(10, ge=1, description="connections logged in as one user")
    max_connections_per_address: int = Field(20, ge=1, description="connections from one IP (IPv6: one /64)")
    fd_reserve: int = Field(64, ge=8, description="file descriptors kept free for the store, the admin socket "
                                                  "and files: connections beyond the rest are refused")
    admin_uids: list[int] = Field(default_factory=list, description="OS users besides the server's own and root "
                                                                    "that may use the admin socket")
    max_upload_bytes_per_day: int = Field(10 * 1024**3, ge=0, description="bytes one user may upload per UTC day")
    # connections that go quiet or never finish
    keepalive_interval: float = Field(30.0, gt=0, description="probe a connection after this long with no traffic")
    keepalive_timeout: float = Field(60.0, gt=0, description="close a connection whose peer is gone this long")
    login_timeout: float = Field(60.0, ge=0, description="close connections not logged in by then (0: never)")
    idle_timeout: float = Field(0.0, ge=0, description="close connections silent this long (0: never)")
    frame_timeout: float = Field(60.0, ge=0, description="longest time one frame may take to arrive (0: no limit)")
    handshake_timeout: float = Field(10.0, gt=0, description="TLS and WebSocket handshakes")

    # TLS: both or neither; then the TCP port speaks TLS and the WebSocket port WSS
    tls_cert: Path | None = Field(None, description="PEM certificate chain")
    tls_key: Path | None = Field(None, description="PEM private key")

    # the web client on the WebSocket port; browsers send Origin, and only the page's own is let in by default
    allowed_origins: str = Field("", description="other origins whose pages may open a WebSocket, separated by "
                                                 "commas (e.g. https://chat.example.com); * allows any")

    # file sharing
    max_upload_bytes: int = Field(100 * 1024 * 1024, ge=0, description="largest file a client may upload")
    max_uploads_per_session: int = Field(4, ge=1, description="uploads one connection may have in progress")
    max_uploads_per_user: int = Field(4, ge=1, description="uploads one user may have in progress, all connections")
    max_uploads_total: int = Field(64, ge=1, description="uploads in progress on the whole server")
    max_downloads_per_session: int = Field(4, ge=1, description="downloads one connection may have in progress")
    max_downloads_total: int = Field(64, ge=1, description="downloads in progress on the whole server")
    max_list_files: int = Field(200, ge=1, description="newest files listed by list_files")
    list_page_max: int = Field(500, ge=1, le=10_000, description="entries in one page of a listing (rooms, users, "
                                                                 "sessions)")
    history_page_bytes: int = Field(1024 * 1024, ge=16 * 1024, description="bytes of one history page at most "
                                                                           "(it keeps the newest events)")
    upload_idle_timeout: float = Field(300.0, gt=0, description="seconds without a chunk before an upload is dropped")
    min_free_disk_bytes: int = Field(64 * 1024 * 1024, ge=0, description="free space an upload must leave")
    file_io_threads: int = Field(4, ge=1, description="worker threads for file reads and writes")
    file_write_batch_bytes: int = Field(1024 * 1024, ge=4096, description="upload bytes gathered per disk write")
    file_read_block_bytes: int = Field(1024 * 1024, ge=4096, description="download bytes read per disk read")

    # argon2id (OWASP: 19 MiB, 2 iterations, 1 lane)
    argon2_memory_kib: int = Field(19 * 1024, ge=8)
    argon2_time_cost: int = Field(2, ge=1)
    argon2_parallelism: int = Field(1, ge=1)

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

    def file_config(self) -> FileConfig:
        return FileConfig(
            uploads_dir=self.uploads_dir,
            temp_dir=self.temp_uploads_dir,
            max_upload_bytes=self.max_upload_bytes,
            max_uploads_per_session=self.max_uploads_per_session,
            max_uploads_per_user=self.max_uploads_per_user,
            max_uploads_total=self.max_uploads_total,
            max_downloads_per_session=self.max_downloads_per_session,
            max_downloads_total=self.max_downloads_total,
            max_list_files=self.max_list_files,
            chunk_size=chunk_size_for_frame(self.max_frame_bytes),
            write_batch_bytes=self.file_write_batch_bytes,
            read_block_bytes=self.file_read_block_bytes,
            io_threads=self.file_io_threads,
            upload_idle_timeout=self.upload_idle_timeout,
            min_free_bytes=self.min_free_disk_bytes,
        )

    def chat_config(self) -> ChatConfig:
        return ChatConfig(
            max_message_chars=self.max_message_chars,
            rejoin_grace=self.rejoin_grace,
            argon2_memory_kib=self.argon2_memory_kib,
            argon2_time_cost=self.argon2_time_cost,
            argon2_parallelism=self.argon2_parallelism,
            history_page_bytes=min(self.history_page_bytes, self.send_queue_bytes // 2),
            list_page_max=self.list_page_max,
            limits=self.limits_config(),
        )

    def limits_config(self) -> LimitsConfig:
        def rate(kind: str) -> Rate:
            return Rate(getattr(self, f"{kind}_per_second"), getattr(self, f"{kind}_burst"))

        return LimitsConfig(
            session_requests=rate("session_requests"), user_requests=rate("user_requests"),
            session_messages=rate("session_messages"), user_messages=rate("user_messages"),
            session_joins=rate("session_joins"), user_joins=rate("user_joins"),
            session_logins=rate("session_logins"), user_logins=rate("user_logins"),
            bot_requests=rate("bot_requests"), bot_messages=rate("bot_messages"), user_creates=rate("user_creates"),
            max_rooms_created_per_user=self.max_rooms_created_per_user,
            strikes=self.rate_limit_strikes,
            login_free_failures=self.login_free_failures, address_free_failures=self.address_free_failures,
            login_delay_base=self.login_delay_base, login_delay_max=self.login_delay_max,
            login_failure_window=self.login_failure_window,
            max_rooms_per_user=self.max_rooms_per_user, max_room_members=self.max_room_members,
            max_sessions_per_user=self.max_sessions_per_user, max_upload_bytes_per_day=self.max_upload_bytes_per_day,
        )
