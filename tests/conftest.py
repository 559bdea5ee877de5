from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio_websocket

from utuvox.server.app import Server
from utuvox.server.settings import UNTHROTTLED, Settings

from .clients import JsonLines, TextLines, WsJson

# Tests hash with small argon2 parameters (the defaults are exercised by the subprocess test and the
# benchmarks) and run without rate limits and caps, since every client comes from 127.0.0.1 and many
# pipeline (a test of a limit sets it); everything else is the real server on real sockets.
FAST_HASH = {"argon2_memory_kib": 1024, "argon2_time_cost": 1}


def make_settings(data_dir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {"port": 0, "ws_port": 0, "irc_port": 0, "data_dir": data_dir, "detect_timeout": 0.2,
                                 **FAST_HASH, **UNTHROTTLED}
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@asynccontextmanager
async def running_server(data_dir: Path, **overrides: object) -> AsyncIterator[Server]:
    """A real server on port 0 in its own nursery; stopped (as by SIGTERM) on exit."""
    lines: list[str] = []
    server = Server(make_settings(data_dir, **overrides), announce=lines.append)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        server.startup_lines = lines  # type: ignore[attr-defined]
        try:
            yield server
        finally:
            server.request_stop()


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    async with running_server(tmp_path) as srv:
        yield srv


@pytest.fixture
def connect_json(server: Server):
    async def connect() -> JsonLines:
        return await JsonLines.connect(server.tcp_port)

    return connect


@pytest.fixture
def connect_text(server: Server):
    async def connect() -> TextLines:
        return await TextLines.connect(server.tcp_port)

    return connect


@asynccontextmanager
async def open_ws(port: int) -> AsyncIterator[WsJson]:
    async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}") as ws:
        yield WsJson(ws)


async def login_json(client: JsonLines | WsJson, name: str, password: str = "pw", *, register: bool = True) -> dict:
    reply = await client.request("register" if register else "login", username=name, password=password)
    assert reply["type"] == "logged_in", reply
    return reply
