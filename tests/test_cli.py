"""``utuvox serve`` as the README runs it: a real process, ports read from its startup lines, clean
shutdown on SIGTERM and SIGINT, and every acknowledged message kept across SIGKILL."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import trio

from .clients import JsonLines, TextLines
from .conftest import login_json, open_ws
from .processes import serve, stop


async def start_server(data_dir: Path, *extra: str) -> tuple[trio.Process, int, int, str]:
    serving = await serve(data_dir, *extra)
    assert not serving.tls  # the plain startup lines, word for word (processes.STARTUP)
    return serving.proc, serving.port, serving.ws_port, serving.admin_key


async def test_serve_prints_its_ports_and_serves_every_transport(tmp_path: Path) -> None:
    proc, port, ws_port, key = await start_server(tmp_path)
    try:
        assert (tmp_path / "admin_key.txt").read_text().strip() == key
        assert (tmp_path / "utuvox_db.db").exists() and (tmp_path / "uploads").is_dir()
        text = await TextLines.connect(port)
        assert "Welcome to UtuVox" in await text.recv_line()
        await text.send(f"/register root pw {key}")
        assert (await text.recv_line()).endswith("Registration successful as admin.")
        await text.send("/create lobby")
        await text.expect("You joined room 'lobby'")
        async with open_ws(ws_port) as ws:
            await login_json(ws, "wsuser")
            await ws.request("join", room="lobby")
            await text.send("hello ws")
            assert (await ws.recv_until(lambda f: f.get("type") == "message"))["text"] == "hello ws"
            # SIGTERM: everyone is told, the process exits 0
            proc.send_signal(signal.SIGTERM)
            bye = await ws.recv_until(lambda f: f.get("type") == "bye")
            assert bye["code"] == "shutdown"
        assert "shutting down" in await text.expect("Disconnected")
        with trio.fail_after(15):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
    assert proc.stderr is not None
    log = await proc.stderr.receive_some(1 << 20)
    assert b"pw" not in log.replace(b"pwd", b"") and key.encode() not in log  # no password, no key in the log
    assert b"login" in log or b"registered root" in log


async def test_sigint_also_stops_cleanly(tmp_path: Path) -> None:
    proc, _, _, _ = await start_server(tmp_path)
    assert await stop(proc, signal.SIGINT) == 0


async def test_schema_command_prints_json_schema() -> None:
    result = await trio.run_process([sys.executable, "-m", "utuvox", "schema"], capture_stdout=True)
    schema = json.loads(result.stdout)
    assert "client_frame" in schema and "server_frame" in schema
    assert '"register"' in result.stdout.decode()


async def test_acknowledged_messages_survive_sigkill(tmp_path: Path) -> None:
    proc, port, _, _ = await start_server(tmp_path)
    acked: list[tuple[int, str]] = []
    try:
        clients = [await JsonLines.connect(port) for _ in range(4)]
        for i, c in enumerate(clients):
            await login_json(c, f"user{i}")
            if i == 0:
                await c.request("create", room="r")
            else:
                await c.request("join", room="r")

        sent: dict[tuple[int, int], str] = {}

        async def flood(c: JsonLines, who: int) -> None:
            try:
                for n in range(100_000):
                    sent[who, n] = f"{who}-{n}"
                    await c.send({"type": "message", "text": sent[who, n], "id": n})
            except (trio.BrokenResourceError, OSError):
                return

        async def collect(c: JsonLines, who: int) -> None:
            try:
                while True:
                    frame = await c.recv(timeout=30)
                    if frame.get("type") == "ok":
                        acked.append((frame["seq"], sent[who, frame["re"]]))
            except (trio.BrokenResourceError, EOFError, OSError):
                return

        async with trio.open_nursery() as nursery:
            for i, c in enumerate(clients):
                nursery.start_soon(flood, c, i)
                nursery.start_soon(collect, c, i)
            await trio.sleep(1.5)
            proc.kill()  # SIGKILL, mid-flood
            await proc.wait()
            await trio.sleep(0.5)
            nursery.cancel_scope.cancel()
    finally:
        if proc.returncode is None:
            proc.kill()
    assert len(acked) > 100

    proc, port, _, _ = await start_server(tmp_path)
    try:
        c = await JsonLines.connect(port)
        await login_json(c, "user0", register=False)
        await c.request("join", room="r")
        stored: dict[int, str] = {}
        before = None
        while True:
            page = await c.request("history", room="r", limit=500, **({"before": before} if before else {}))
            stored.update({e["seq"]: e["text"] for e in page["events"] if e["type"] == "message"})
            if not page["more"]:
                break
            before = page["events"][0]["seq"]
        for seq, text in acked:
            assert stored.get(seq) == text, f"acknowledged message {seq} lost"
        assert len(set(stored.values())) == len(stored)  # each message once
        # In order: what each sender sent later got a later seq, both as acknowledged and as stored.
        for who in range(4):
            mine = sorted((int(text.split("-")[1]), seq) for seq, text in acked if text.startswith(f"{who}-"))
            assert [seq for _, seq in mine] == sorted(seq for _, seq in mine), f"sender {who} acknowledged out of order"
            kept = [int(text.split("-")[1]) for _, text in sorted(stored.items()) if text.startswith(f"{who}-")]
            assert kept == sorted(kept), f"sender {who}'s messages stored out of order"
    finally:
        await stop(proc)
