"""``utuvox serve`` as the README runs it: a real process, ports read from its startup lines, clean
shutdown on SIGTERM and SIGINT, and every acknowledged message kept across SIGKILL."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import jsonschema
import trio
from pydantic import ValidationError

from utuvox.protocol.schema import CLIENT_FRAME, REQUEST_TYPES, SERVER_FRAME

from .clients import JsonLines, TextLines
from .conftest import login_json, open_ws
from .processes import serve, stop
from .test_protocol_doc import examples

UTUVOX = [sys.executable, "-m", "utuvox"]


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


async def test_schema_is_a_json_schema_of_exactly_the_frames_of_each_side() -> None:
    client = json.loads((await trio.run_process([*UTUVOX, "schema"], capture_stdout=True)).stdout)
    server = json.loads((await trio.run_process([*UTUVOX, "schema", "--server"], capture_stdout=True)).stdout)
    checkers = {}
    for side, schema in (("client", client), ("server", server)):
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        jsonschema.Draft202012Validator.check_schema(schema)
        checkers[side] = jsonschema.Draft202012Validator(schema)
    adapters = {"client": CLIENT_FRAME, "server": SERVER_FRAME}
    frames = examples()
    assert len(frames) > 40
    for frame in frames:
        for side, checker in checkers.items():
            try:
                adapters[side].validate_python(json.loads(json.dumps(frame)))
                valid = True
            except ValidationError:
                valid = False
            # The schema and the server's own validation agree on every documented frame, both ways: a
            # request is not a valid server frame and an event is not a valid client frame.
            assert checker.is_valid(frame) == valid, (side, frame, list(checker.iter_errors(frame))[:1])
    requests = {m.model_fields["type"].default for m in REQUEST_TYPES}
    assert requests == {f["type"] for f in frames if checkers["client"].is_valid(f)}
    for wrong in [{}, {"username": "bob", "password": "pw"}, {"type": "nonsense"},
                  {"type": "join", "room": "general", "romo": "x"}, {"type": "join"}, {"type": "join", "room": 5}]:
        assert not checkers["client"].is_valid(wrong), wrong
    assert checkers["client"].is_valid({"type": "join", "id": 7, "room": "general"})


def test_version_and_admin_key_commands(tmp_path: Path) -> None:
    version = subprocess.run([*UTUVOX, "--version"], capture_output=True, text=True, check=True)
    assert re.fullmatch(r"utuvox \d+\.\d+\.\d+\S*\n", version.stdout)
    missing = subprocess.run([*UTUVOX, "admin-key", "--data-dir", str(tmp_path)], capture_output=True, text=True)
    assert missing.returncode == 1 and missing.stdout == ""
    assert "no admin key in" in missing.stderr and "utuvox serve" in missing.stderr
    (tmp_path / "admin_key.txt").write_text("k-123456789\n")
    shown = subprocess.run([*UTUVOX, "admin-key"], capture_output=True, text=True, cwd=tmp_path)
    assert (shown.returncode, shown.stdout) == (0, "k-123456789\n")


async def test_the_admin_key_is_printed_only_when_it_is_created(tmp_path: Path) -> None:
    first = await serve(tmp_path)  # processes.serve insists on the "Admin key: <key>" line here
    assert await stop(first.proc) == 0
    again = await serve(tmp_path)
    try:
        await stop(again.proc)
        assert again.proc.stdout is not None
        rest = await again.proc.stdout.receive_some(1 << 16)
    finally:
        if again.proc.returncode is None:
            again.proc.kill()
    assert again.admin_key == first.admin_key
    assert b"Admin key" not in rest
    shown = subprocess.run([*UTUVOX, "admin-key", "--data-dir", str(tmp_path)], capture_output=True, text=True)
    assert shown.stdout.strip() == first.admin_key


async def test_serve_on_a_port_in_use_names_it_and_creates_nothing(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for flags in (["--port", str(port), "--ws-port", "0"], ["--port", "0", "--ws-port", str(port)]):
            result = await trio.run_process(
                [*UTUVOX, "serve", "--data-dir", str(tmp_path / "data"), *flags],
                capture_stdout=True, capture_stderr=True, check=False)
            assert result.returncode == 1
            assert result.stderr.decode() == (f"utuvox: cannot listen on 127.0.0.1:{port}: the port is in use "
                                              "(is another server running?)\n")
            assert not (tmp_path / "data").exists()


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
