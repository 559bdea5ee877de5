"""Faults: SIGTERM under load keeps every acknowledged message (in order, once); a disk that fills up during
uploads and messages gives clear errors, damages nothing and is recovered from once space returns; and
``utuvox serve`` refuses a damaged database or a newer schema with a clear message and a non-zero exit.

The disk-full test runs twice: on a real, tiny tmpfs (mounted here when the test runs as root and may
mount), and with the failures simulated (SQLite's ``max_page_count`` and a file write that raises
``ENOSPC``). Where mounting is not permitted the first falls back to the second: it still asserts."""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from utuvox.chat import files as chat_files
from utuvox.server.app import Server
from utuvox.store.migrations import SCHEMA_VERSION

from .clients import JsonLines
from .conftest import login_json, running_server
from .processes import serve, stop
from .test_files import begin, room_of, send_chunks, upload


async def whole_history(client: JsonLines, room: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    before = None
    while True:
        page = await client.request("history", room=room, limit=500, **({"before": before} if before else {}))
        events = page["events"] + events
        if not page["more"]:
            return events
        before = page["events"][0]["seq"]


def check_acknowledged(acked: dict[int, list[tuple[int, int]]], events: list[dict[str, Any]]) -> None:
    """Every acknowledged message is stored, once, and each sender's messages are stored in the order sent.

    ``acked[sender]`` holds (message number, seq) pairs; a message's text starts ``"<sender>-<number>"``."""
    messages = [e for e in events if e["type"] == "message"]
    assert [e["seq"] for e in events] == sorted({e["seq"] for e in events})  # in seq order, each seq once
    texts = [e["text"].split(" ")[0] for e in messages]
    assert len(texts) == len(set(texts)), "a message was stored twice"
    by_seq = {e["seq"]: text for e, text in zip(messages, texts, strict=True)}
    for sender, pairs in acked.items():
        for n, seq in pairs:
            assert by_seq.get(seq) == f"{sender}-{n}", f"acknowledged message {sender}-{n} (seq {seq}) lost"
        assert [seq for _, seq in sorted(pairs)] == sorted(seq for _, seq in pairs), "acknowledged out of order"
        stored = [int(t.split("-")[1]) for t in texts if t.startswith(f"{sender}-")]
        assert stored == sorted(stored), f"sender {sender}'s messages stored out of order"


# --- SIGTERM under load ---------------------------------------------------------------------------


async def test_sigterm_while_clients_pipeline_loses_nothing_acknowledged(tmp_path: Path) -> None:
    proc, port = (await serve(tmp_path))[:2]
    acked: dict[int, list[tuple[int, int]]] = {i: [] for i in range(4)}
    goodbyes: list[str] = []
    try:
        clients = [await JsonLines.connect(port) for _ in range(4)]
        for i, c in enumerate(clients):
            await login_json(c, f"user{i}")
            await c.request("create" if i == 0 else "join", room="r")

        async def pipeline(c: JsonLines, who: int) -> None:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                for n in range(1_000_000):
                    await c.send({"type": "message", "text": f"{who}-{n}", "id": n})

        async def collect(c: JsonLines, who: int) -> None:
            with contextlib.suppress(trio.BrokenResourceError, EOFError, OSError):
                while True:
                    frame = await c.recv(timeout=30)
                    if frame.get("type") == "ok":
                        acked[who].append((frame["re"], frame["seq"]))
                    elif frame.get("type") == "bye":
                        goodbyes.append(frame["code"])

        async with trio.open_nursery() as nursery:
            for i, c in enumerate(clients):
                nursery.start_soon(pipeline, c, i)
                nursery.start_soon(collect, c, i)
            with trio.fail_after(20):
                while sum(map(len, acked.values())) < 2000:
                    await trio.sleep(0.05)
            assert await stop(proc) == 0  # SIGTERM mid-flood: a clean exit...
            await trio.sleep(0.3)
            nursery.cancel_scope.cancel()
        assert goodbyes and set(goodbyes) == {"shutdown"}  # ...that told the clients
    finally:
        if proc.returncode is None:
            proc.kill()

    proc, port = (await serve(tmp_path))[:2]
    try:
        c = await JsonLines.connect(port)
        await login_json(c, "user0", register=False)
        await c.request("join", room="r")
        check_acknowledged(acked, await whole_history(c, "r"))
    finally:
        assert await stop(proc) == 0


# --- a full disk ----------------------------------------------------------------------------------


class Disk:
    """A data directory whose disk can be filled and freed again."""

    kind = ""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.server: Server | None = None

    async def fill(self) -> None: ...
    async def free(self) -> None: ...


class Tmpfs(Disk):
    """A real 4 MiB tmpfs, filled with a ballast file to the last byte."""

    kind = "tmpfs"

    async def fill(self) -> None:
        def write() -> None:
            with open(self.data_dir / "ballast", "wb", buffering=0) as f:
                block = b"\0" * 65536
                while True:
                    try:
                        f.write(block)
                    except OSError as exc:
                        assert exc.errno == errno.ENOSPC
                        block = block[: len(block) // 2]
                        if not block:
                            return

        await trio.to_thread.run_sync(write)

    async def free(self) -> None:
        (self.data_dir / "ballast").unlink()


class Simulated(Disk):
    """No room for SQLite to grow (``max_page_count``) and every upload write failing with ENOSPC."""

    kind = "simulated"

    def __init__(self, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        super().__init__(data_dir)
        self.monkeypatch = monkeypatch

    async def _writer_sql(self, sql: str) -> None:
        assert self.server is not None and self.server.store is not None
        store = self.server.store
        # On the writer's own thread slot, so it never runs beside a commit.
        await trio.to_thread.run_sync(store._writer.execute, sql, limiter=store._writes)  # type: ignore[union-attr]

    async def fill(self) -> None:
        def no_space(*_: object) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        self.monkeypatch.setattr(chat_files, "_write_batch", no_space)
        await self._writer_sql("PRAGMA max_page_count = 1")  # clamps to the pages already in use

    async def free(self) -> None:
        self.monkeypatch.undo()
        await self._writer_sql("PRAGMA max_page_count = 1073741823")


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[bool]:
    """Mount a tmpfs of ``size`` at ``path`` if this process may; yields whether it did."""
    path.mkdir(parents=True)
    mounted = False
    if os.geteuid() == 0:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                 capture_output=True, check=False).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


@asynccontextmanager
async def disk_of_kind(kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Disk]:
    with tmpfs(tmp_path / "data", "4m") as mounted:
        if kind == "tmpfs" and mounted:
            yield Tmpfs(tmp_path / "data")
        else:  # simulated, or mounting is not permitted here: the simulated variant, same assertions
            yield Simulated(tmp_path / "data", monkeypatch)


@pytest.mark.parametrize("kind", ["tmpfs", "simulated"])
async def test_a_full_disk_gives_clear_errors_and_the_server_recovers(kind: str, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    async with disk_of_kind(kind, tmp_path, monkeypatch) as disk:
        data = disk.data_dir
        acked: dict[int, list[tuple[int, int]]] = {0: []}
        async with running_server(data, min_free_disk_bytes=0, file_write_batch_bytes=4096) as srv:
            disk.server = srv
            alice = await JsonLines.connect(srv.tcp_port)
            await room_of(alice, "alice")
            n = 0

            async def say() -> dict[str, Any]:
                nonlocal n
                n += 1
                reply = await alice.request("message", text=f"0-{n}" + " " + "x" * 3000)
                if reply["type"] == "ok":
                    acked[0].append((n, reply["seq"]))
                return reply

            assert [(await say())["type"] for _ in range(5)] == ["ok"] * 5
            # An upload under way when the disk fills...
            blob = os.urandom(300_000)
            ready = await begin(alice, "general", blob, "big.bin")
            chunk = ready["chunk_size"]
            await send_chunks(alice, ready, blob, stop=chunk * 2)
            await disk.fill()
            await send_chunks(alice, ready, blob, start=chunk * 2, final_id="last")
            failed = await alice.recv_until(lambda f: f.get("type") == "upload_failed", timeout=15)
            assert failed["code"] == "disk_full" and "disk space" in failed["message"], failed
            # ...and messages: each is stored and acknowledged, or refused with a clear error.
            errors = []
            for _ in range(3000):
                reply = await say()
                if reply["type"] == "error":
                    errors.append(reply)
                    if len(errors) == 3:
                        break
            assert errors, "the disk never filled"
            assert {e["code"] for e in errors} == {"storage_error"}
            assert all("could not store" in e["message"] for e in errors)
            refused = await alice.request("upload", room="general", name="new.bin", size=1000, sha256="0" * 64)
            assert refused["type"] in ("error", "upload_ready")
            if refused["type"] == "error":  # the real disk is seen to be full before any byte is sent
                assert refused["code"] == "disk_full"
            else:
                await send_chunks(alice, refused, b"\0" * 1000, final_id="second")
                assert (await alice.recv_until(lambda f: f.get("re") == "second"))["code"] == "disk_full"
            assert (await alice.request("ping"))["type"] == "pong"  # the session goes on

            await disk.free()
            with trio.fail_after(10):
                while (await say())["type"] != "ok":  # at once, or after a checkpoint has caught up
                    await trio.sleep(0.1)
            good = os.urandom(50_000)
            stored = await upload(alice, "general", good, "good.bin")
            assert stored["type"] == "uploaded", stored
            check_acknowledged(acked, await whole_history(alice, "general"))
        # Nothing damaged, nothing half-written left behind.
        conn = sqlite3.connect(data / "utuvox_db.db")
        try:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            assert [r[0] for r in conn.execute("SELECT original FROM files")] == ["good.bin"]
        finally:
            conn.close()
        assert os.listdir(data / "uploads.tmp") == []
        assert len(os.listdir(data / "uploads")) == 1


# --- refusing to start ----------------------------------------------------------------------------


async def _serve_fails(data_dir: Path) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(
        [sys.executable, "-m", "utuvox", "serve", "--port", "0", "--ws-port", "0", "--irc-port", "0",
         "--data-dir", str(data_dir)],
        capture_stdout=True, capture_stderr=True, check=False, stdin=subprocess.DEVNULL)


async def _make_database(data_dir: Path) -> Path:
    async with running_server(data_dir) as srv:
        js = await JsonLines.connect(srv.tcp_port)
        await login_json(js, "alice")
        await js.request("create", room="general")
        for i in range(50):
            await js.request("message", text=f"message {i} " + "y" * 200)
    db = data_dir / "utuvox_db.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # everything in the main file, as after a clean stop
    conn.close()
    return db


@pytest.mark.parametrize("damage", ["pages", "header"])
async def test_serve_refuses_a_damaged_database(tmp_path: Path, damage: str) -> None:
    db = await _make_database(tmp_path)
    data = bytearray(db.read_bytes())
    if damage == "pages":  # the file still opens, but its integrity check fails
        data[4096 + 100: 4096 * 3] = b"\xab" * (4096 * 2 - 100)
    else:  # not even recognisable as SQLite
        data[:100] = os.urandom(100)
    db.write_bytes(bytes(data))
    result = await _serve_fails(tmp_path)
    assert result.returncode != 0
    err = result.stderr.decode()
    assert err.startswith("utuvox: ") and "Traceback" not in err, err
    assert ("failed its integrity check" in err) if damage == "pages" else ("cannot use the database" in err)
    assert db.read_bytes() == bytes(data)  # left as found, for the operator to look at
    assert b"Server started" not in result.stdout


async def test_serve_refuses_a_newer_schema(tmp_path: Path) -> None:
    db = await _make_database(tmp_path)
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    result = await _serve_fails(tmp_path)
    assert result.returncode != 0
    err = result.stderr.decode()
    assert "newer than this UtuVox knows" in err and "Upgrade UtuVox" in err and "Traceback" not in err, err
    conn = sqlite3.connect(db)  # not migrated, not written to
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
        assert conn.execute("SELECT count(*) FROM events WHERE type = 'message'").fetchone()[0] == 50
    finally:
        conn.close()
