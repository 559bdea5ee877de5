"""Every setting of the server, from command-line flags or ``UTUVOX_*`` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from utuvox.chat.config import ChatConfig


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="UTUVOX_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(9090, ge=0, le=65535, description="TCP port (text mode and JSON lines); 0: any free port")
    ws_port: int = Field(9091, ge=0, le=65535, description="WebSocket port; 0: any free port")
    data_dir: Path = Field(Path("."), description="where utuvox_db.db, uploads/, admin_key.txt and admin.sock live")
    admin_socket: Path | None = Field(None, description="the operators' Unix socket (default: DATA_DIR/admin.sock)")
    log_level: str = "INFO"

    # limits
    max_frame_bytes: int = Field(64 * 1024, ge=1024, description="largest frame a client may send")
    max_message_chars: int = Field(4000, ge=1)
    send_queue_frames: int = Field(10_000, ge=16, description="frames queued for one client before it is cut off")
    detect_timeout: float = Field(0.5, gt=0, description="how long to wait for a first byte to tell JSON from text")
    shutdown_grace: float = Field(2.0, ge=0, description="seconds to flush goodbyes on shutdown")

    # argon2id (OWASP: 19 MiB, 2 iterations, 1 lane)
    argon2_memory_kib: int = Field(19 * 1024, ge=8)
    argon2_time_cost: int = Field(2, ge=1)
    argon2_parallelism: int = Field(1, ge=1)

    @property
    def db_path(self) -> Path:
        return self.data_dir / "utuvox_db.db"

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / "uploads"

    @property
    def admin_key_path(self) -> Path:
        return self.data_dir / "admin_key.txt"

    @property
    def admin_socket_path(self) -> Path:
        return self.admin_socket or self.data_dir / "admin.sock"

    def chat_config(self) -> ChatConfig:
        return ChatConfig(
            max_message_chars=self.max_message_chars,
            argon2_memory_kib=self.argon2_memory_kib,
            argon2_time_cost=self.argon2_time_cost,
            argon2_parallelism=self.argon2_parallelism,
        )
