"""History: a room with a million stored messages; the time to join it (the reply carries the last 50)
and to page back 100 older messages.

Filling a database through the server would take many minutes, so the bench starts the server once to
let it create the schema, the room and its first event, stops it, bulk-inserts the messages into the
``events`` table in one transaction (each row's body is exactly the JSON the server itself stores for
a message event; the first row is checked against the server's own encoder), and starts it again.

Each timing runs from sending the request to the answer of a ``ping`` sent right behind it, so the
whole reply has arrived; the ping adds a round trip of well under a millisecond.
"""

from __future__ import annotations

import json
import multiprocessing.connection
import random
import shutil
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ..clients import BenchError, BlockingClient, JsonDialect, make_dialect, setup_steps
from ..harness import Figure, Report, ServerProcess, Worker, percentile, temp_dir, wait_for
from . import Options, measure, open_target, point, worker_config

ROOM = "archive"
WRITER = "archivist"


def _body(seq: int, ts: str, text: str) -> str:
    return json.dumps({"type": "message", "ts": ts, "room": ROOM, "seq": seq, "user": WRITER, "text": text},
                      separators=(",", ":"), ensure_ascii=False)


def _server_body(seq: int, when: datetime, text: str) -> str:
    """The body as the server writes it (utuvox.chat.service.Chat.record), for checking ours."""
    from utuvox.protocol import json_codec
    from utuvox.protocol.core import MessageEvent

    return json_codec.encode(MessageEvent(ts=when, room=ROOM, seq=seq, user=WRITER, text=text))[:-1].decode()


def fill(db_path: Path, count: int) -> float:
    """Append ``count`` messages to the room; returns the seconds taken."""
    from utuvox.protocol import iso

    started = time.monotonic()
    conn = sqlite3.connect(db_path, isolation_level=None)
    try:
        room_id, = conn.execute("SELECT id FROM rooms WHERE name_key = ?", (ROOM.lower(),)).fetchone()
        last = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events WHERE room_id = ?", (room_id,)).fetchone()[0]
        base = datetime.now(UTC) - timedelta(seconds=count / 100)  # a hundred a second, ending now
        first_when = base
        first_text = f"stored message {last + 1}"
        if _body(last + 1, iso(first_when), first_text) != _server_body(last + 1, first_when, first_text):
            raise BenchError("the server's stored message format changed; update bench/scenarios/history.py: "
                             f"{_server_body(last + 1, first_when, first_text)}")

        def rows() -> Any:
            for i in range(count):
                seq = last + 1 + i
                when = base + timedelta(microseconds=10_000 * i)
                ts = iso(when)
                yield room_id, seq, when.timestamp(), "message", WRITER, _body(seq, ts, f"stored message {seq}")

        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO events(room_id, seq, ts, type, user, body) VALUES (?, ?, ?, ?, ?, ?)", rows())
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return time.monotonic() - started


def worker(pipe: multiprocessing.connection.Connection, cfg: dict[str, Any]) -> None:
    dialect = make_dialect(cfg["transport"], cfg["ws_port"], cfg.get("target", "utuvox"))
    port = cfg["port"]
    repeat = cfg["repeat"]
    last_seq = cfg["last_seq"]
    pipe.send({"kind": "ready", "setup_s": 0.0})
    wait_for(pipe, "go", cfg["setup_timeout"])
    cpu = time.process_time()
    ping = dialect.ping()

    def timed(client: BlockingClient, request: bytes) -> tuple[float, bytes]:
        started = time.perf_counter()
        client.sock.sendall(request + ping.send)
        got = client.wait(ping.wait)
        return (time.perf_counter() - started) * 1000, got

    def newcomer(i: int) -> BlockingClient:
        name = f"h{i}"
        client = BlockingClient(port, dialect, name)
        for step in setup_steps(dialect, name, None):
            client.step(step)
        return client

    joins: list[float] = []
    clients = []
    seen_join = seen_page = 0
    for i in range(repeat + 1):
        client = newcomer(i)
        ms, got = timed(client, dialect.enter(ROOM).send)
        joins.append(ms)
        if i == 0:
            seen_join = got.count(b"stored message")
        clients.append(client)
    rng = random.Random(6)
    pages: list[float] = []
    reader = clients[0]
    for i in range(repeat):
        before = rng.randrange(1000, max(1001, last_seq - 1000))
        ms, got = timed(reader, dialect.history(ROOM, before, 100))
        pages.append(ms)
        if i == 0:
            seen_page = got.count(b"stored message")
    for client in clients:
        client.close()
    pipe.send({"kind": "done", "cpu_s": time.process_time() - cpu, "joins": joins, "pages": pages,
               "seen_join": seen_join, "seen_page": seen_page})


def run(opts: Options, report: Report) -> None:
    with temp_dir("utuvox-bench-") as work:
        data_dir = work / "data"
        with ServerProcess(data_dir, log_level=opts.server_log_level) as srv:
            setup = BlockingClient(srv.tcp_port, JsonDialect(), WRITER)
            for step in setup_steps(JsonDialect(), WRITER, ROOM, create=True):
                setup.step(step)
            setup.close()
        fill_s = fill(data_dir / "utuvox_db.db", opts.stored)
        last_seq = opts.stored + 1
        report.note(f"history: {opts.stored:,} messages bulk-inserted in {fill_s:.1f} s; "
                    f"database {(data_dir / 'utuvox_db.db').stat().st_size / 2**20:.0f} MiB")
        setting = f"{opts.stored:,} stored"
        for target, transport in opts.targets:
            if target != "utuvox":
                continue
            with point(report, "history", f"{target}/{transport}", setting, "join (last 50)"):
                _point(opts, report, transport, data_dir, last_seq, setting)


def _point(opts: Options, report: Report, transport: str, filled: Path, last_seq: int, setting: str) -> None:
    label = f"utuvox/{transport}"
    # Each transport gets a copy of the filled database and a fresh server, so each finds the same room
    # and its first join finds the room's cache empty.
    data_dir = filled.with_name(f"data-{transport}")
    shutil.copytree(filled, data_dir, ignore=shutil.ignore_patterns("*.log", "admin.sock"))
    with open_target("utuvox", data_dir, opts) as server:
        cfg = worker_config(server, transport, opts, repeat=opts.repeat, last_seq=last_seq)
        with Worker(worker, cfg) as w:
            _ready, done, _summary = measure(server, w, opts, f"history-{transport}")
    joins, pages = done["joins"], sorted(done["pages"])
    cold, warm = joins[0], sorted(joins[1:])
    page_name = "page of 100 (before=)" if transport != "text" else "/history room 100"
    page_note = f"{done['seen_page']} messages in the first page"
    if transport == "text":
        page_note += "; text mode has no 'before', so this is the newest page"
    report.add(
        Figure("history", label, setting, "first join, cold (last 50)", cold, "ms", "≤ 5 ms", cold <= 5,
               f"{done['seen_join']} stored messages in the reply (and the join itself); the room's cache loads "
               "from SQLite"),
        Figure("history", label, setting, "join p50 (last 50)", percentile(warm, 0.5), "ms", "≤ 5 ms",
               percentile(warm, 0.5) <= 5, f"{len(warm)} joins by new members, each commits a join event"),
        Figure("history", label, setting, "join max", warm[-1] if warm else None, "ms"),
        Figure("history", label, setting, f"{page_name} p50", percentile(pages, 0.5), "ms", "≤ 5 ms",
               percentile(pages, 0.5) <= 5, page_note),
        Figure("history", label, setting, f"{page_name} max", pages[-1] if pages else None, "ms"),
    )
