"""Attacks on a real server over real sockets, and what holds against them: memory per connection under
the send-queue cap in bytes (read from outside, through the admin socket), no banned or demoted session
surviving a racing login, the server outliving a descriptor flood, listings paged, rooms and upload slots
capped, file events charged as messages, text mode unforgeable, bounded integers, private files,
acknowledgements before the goodbye, and password hashing shared fairly."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import stat
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from utuvox.server.app import Server

from .clients import JsonLines, TextLines
from .conftest import login_json, running_server
from .processes import serve, stop
from .test_admin import operator
from .test_files import begin, room_of, upload

KiB = 1024


async def slow_socket(port: int, *, source: str | None = None) -> JsonLines:
    """A JSON client with a 4 KiB receive buffer (so the server's queue, not the kernel, holds what it
    does not read), optionally from another loopback address."""
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    if source is not None:
        await sock.bind((source, 0))
    await sock.connect(("127.0.0.1", port))
    return JsonLines(trio.SocketStream(sock))


async def who(op: JsonLines) -> list[dict[str, Any]]:
    return (await op.request("who"))["sessions"]


async def sample_while(op: JsonLines, done: Callable[[dict[str, Any]], bool], timeout: float = 15
                       ) -> list[dict[str, Any]]:
    """``stats`` every 20 ms until ``done(stats)``; every sample taken."""
    samples = []
    with trio.fail_after(timeout):
        while True:
            stats = await op.request("stats")
            samples.append(stats)
            if done(stats):
                return samples
            await trio.sleep(0.02)


# --- 1. memory is capped in bytes -----------------------------------------------------------------


async def test_a_history_flood_that_reads_nothing_stays_under_the_byte_cap(tmp_path: Path) -> None:
    cap = 512 * KiB
    async with running_server(tmp_path, send_queue_bytes=cap) as srv:
        writer = await JsonLines.connect(srv.tcp_port)
        await room_of(writer, "alice")
        body = "x" * 3900
        for i in range(150):  # a room of long messages: ~600 KB of history (the writer reads its echoes as it
            # goes: a member that left 600 KB of them unread would be over the cap itself)
            await writer.request("message", text=f"{i} {body}")
        with trio.fail_after(10):
            while (await writer.request("history", room="general", limit=1))["events"][0].get("text", "")[:3] != "149":
                await trio.sleep(0.05)

        attacker = await slow_socket(srv.tcp_port)
        await room_of(attacker, "mallory", create=False)
        requests = 60  # 60 pages of up to 150 long events: ~36 MB if nothing stopped them
        await attacker.send(b"".join(json.dumps({"type": "history", "room": "general", "limit": 500, "id": i}).encode()
                                     + b"\n" for i in range(requests)))
        op = await operator(srv)
        peak = 0
        for _ in range(40):  # 0.8 s with the attacker reading nothing
            stats = await op.request("stats")
            peak = max(peak, stats["queued_bytes_max"])
            await trio.sleep(0.02)
        assert 0 < peak <= cap, peak
        # The attacker was made to wait, not dropped: once it reads, every page comes, each within the cap.
        pages = 0
        while pages < requests:
            frame = await attacker.recv(timeout=20)
            if frame.get("type") == "history_page":
                pages += 1
                assert len(json.dumps(frame)) <= cap
        assert (await attacker.request("ping"))["type"] == "pong"


async def test_a_member_that_stops_reading_is_dropped_with_a_bye_at_the_cap(tmp_path: Path) -> None:
    cap = 256 * KiB
    async with running_server(tmp_path, send_queue_bytes=cap, send_queue_frames=1_000_000) as srv:
        sender = await JsonLines.connect(srv.tcp_port)
        await room_of(sender, "alice")
        stuck = await slow_socket(srv.tcp_port)
        await room_of(stuck, "stuck", create=False)
        op = await operator(srv)
        before = (await op.request("stats"))["slow_consumers"]

        async def flood() -> None:
            body = "z" * 3000
            while True:
                await sender.send(b"".join(json.dumps({"type": "message", "text": f"{i} {body}"}).encode() + b"\n"
                                           for i in range(50)))
                await trio.sleep(0.005)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(flood)
            nursery.start_soon(sender.closed, 60)  # alice reads her own echoes, so only the stuck one falls behind
            samples = await sample_while(op, lambda s: s["slow_consumers"] > before)
            # At once: read what the kernel holds, and find the goodbye at its end.
            frames = []
            with trio.fail_after(10):
                try:
                    while True:
                        frames.append(await stuck.recv())
                except EOFError:
                    pass
            nursery.cancel_scope.cancel()
        assert max(s["queued_bytes_max"] for s in samples) <= cap
        assert frames[-1]["type"] == "bye" and frames[-1]["code"] == "slow_consumer", frames[-1]
        assert str(cap) in frames[-1]["reason"]
        assert "stuck" not in [s.get("user") for s in await who(op)]


# --- 2. a login decides on the account as it is when it signs in ----------------------------------

# Hashing that takes a while (tens of ms), so that changes made by an operator land during the logins.
SLOW_HASH = {"argon2_memory_kib": 8192, "argon2_time_cost": 2}
RACERS = 20


async def race_logins(srv: Server, names: list[str], password: str,
                      change: Callable[[JsonLines, str], Awaitable[None]]) -> tuple[list[JsonLines], list[dict]]:
    """Send every login, then at once the change of every account on the admin socket; the clients and
    the answers to their logins."""
    clients = [await JsonLines.connect(srv.tcp_port) for _ in names]
    for client in clients:
        # Speak JSON at once: a connection silent for the detection timeout (0.2 s in tests) is taken for a
        # person at a terminal, which connecting twenty clients on a loaded machine can outlast.
        await client.send({"type": "ping", "id": 0})
    op = await operator(srv)
    for client, name in zip(clients, names, strict=True):
        await client.send({"type": "login", "id": 1, "username": name, "password": password})
    for name in names:
        await change(op, name)
    for _ in names:
        assert (await op.recv_until(lambda f: f.get("re") is not None))["type"] == "ok"
    answers = [await c.recv_until(lambda f: f.get("re") == 1) for c in clients]
    return clients, answers


async def survivors(srv: Server, names: list[str]) -> list[str]:
    """The users among ``names`` still signed in once the goodbyes have gone out."""
    op = await operator(srv)
    with trio.move_on_after(3):
        while {s.get("user") for s in await who(op)} & set(names):
            await trio.sleep(0.05)
    return sorted({s.get("user") for s in await who(op)} & set(names))


async def test_no_banned_user_survives_a_racing_login(tmp_path: Path) -> None:
    async with running_server(tmp_path, **SLOW_HASH) as srv:
        op = await operator(srv)
        names = [f"u{i}" for i in range(RACERS)]
        for name in names:
            assert (await op.request("add_user", username=name, password="pw"))["type"] == "ok"

        async def ban(op: JsonLines, name: str) -> None:
            await op.send({"type": "ban_user", "id": name, "username": name, "reason": "spam"})

        clients, answers = await race_logins(srv, names, "pw", ban)
        assert await survivors(srv, names) == []
        for client, answer in zip(clients, answers, strict=True):
            if answer["type"] == "logged_in":  # signed in before the ban: the ban ended it
                assert (await client.recv_until(lambda f: f["type"] == "bye"))["code"] == "banned"
                assert await client.closed()
            else:
                assert answer["code"] == "banned", answer


async def test_no_demoted_admin_keeps_its_rights_after_a_racing_login(tmp_path: Path) -> None:
    async with running_server(tmp_path, **SLOW_HASH) as srv:
        op = await operator(srv)
        names = [f"a{i}" for i in range(RACERS)]
        for name in names:
            assert (await op.request("add_user", username=name, password="pw", is_admin=True))["type"] == "ok"

        async def demote(op: JsonLines, name: str) -> None:
            await op.send({"type": "edit_user", "id": name, "username": name, "is_admin": False})

        clients, answers = await race_logins(srv, names, "pw", demote)
        still_admin = 0
        for client, answer in zip(clients, answers, strict=True):
            assert answer["type"] == "logged_in", answer
            me = await client.request("whoami")
            refused = await client.request("edit_user", username=answer["user"], is_admin=True)  # re-promote itself
            still_admin += me["is_admin"] or refused["type"] != "error"
        assert still_admin == 0
        assert not any(u["is_admin"] for u in (await op.request("view_users"))["users"])


async def test_a_password_reset_stops_logins_under_way_and_ends_other_sessions(tmp_path: Path) -> None:
    async with running_server(tmp_path, **SLOW_HASH) as srv:
        op = await operator(srv)
        names = [f"p{i}" for i in range(RACERS)]
        for name in names:
            assert (await op.request("add_user", username=name, password="old"))["type"] == "ok"

        async def reset(op: JsonLines, name: str) -> None:
            await op.send({"type": "edit_user", "id": name, "username": name, "new_password": "new"})

        await race_logins(srv, names, "old", reset)
        assert await survivors(srv, names) == []  # whoever got in with the old password was signed out

        # A user's own change of password ends their other sessions, not the one that changed it.
        here, there = await JsonLines.connect(srv.tcp_port), await JsonLines.connect(srv.tcp_port)
        await login_json(here, "p0", "new", register=False)
        await login_json(there, "p0", "new", register=False)
        assert (await here.request("changepassword", old_password="new", new_password="newer"))["type"] == "ok"
        assert (await there.recv_until(lambda f: f["type"] == "bye"))["code"] == "password_changed"
        assert (await here.request("whoami"))["user"] == "p0"


# --- 3. descriptors -------------------------------------------------------------------------------


async def admin_request(data_dir: Path, type_: str) -> dict[str, Any]:
    client = JsonLines(await trio.open_unix_socket(str(data_dir / "admin.sock")))
    try:
        return await client.request(type_)
    finally:
        await client.aclose()


async def test_the_server_outlives_a_descriptor_flood_and_the_admin_socket_answers(tmp_path: Path) -> None:
    # A hard limit of 256 open files; the flood comes the moment the server has started, from one address
    # allowed any number of connections, and asks for more connections than the server can hold.
    serving = await serve(tmp_path, "--log-level", "WARNING", env={"UTUVOX_MAX_CONNECTIONS_PER_ADDRESS": "100000"},
                          nofile=(128, 256))
    flood: list[trio.SocketStream] = []
    try:
        for _ in range(400):
            flood.append(await trio.open_tcp_stream("127.0.0.1", serving.port))
        stats = await admin_request(tmp_path, "stats")
        assert stats["max_open_files"] == 256  # the soft limit was raised to the hard one
        assert stats["open_files"] < 256 and stats["refused_busy"] > 0
        # A newcomer is refused with a reason, not left hanging; the server is still there.
        late = await JsonLines.connect(serving.port)
        await late.send({"type": "ping"})
        bye = await late.recv()
        assert bye["type"] == "bye" and bye["code"] == "server_busy", bye
        assert serving.proc.returncode is None
    finally:
        for stream in flood:
            await stream.aclose()
    with trio.fail_after(10):  # once the flood is gone, everyone is served again
        while True:
            client = await JsonLines.connect(serving.port)
            await client.send({"type": "register", "id": 1, "username": "alice", "password": "pw"})
            try:
                if (await client.recv())["type"] == "logged_in":
                    break
            except EOFError:  # refused while the flood's connections were still being closed
                pass
            await client.aclose()
            await trio.sleep(0.1)
    assert (await client.request("create", room="general"))["type"] == "joined"  # the store still works
    assert await stop(serving.proc) == 0


def test_the_default_connections_per_address_fit_the_usual_open_files_limit() -> None:
    from utuvox.server.settings import Settings

    assert Settings().max_connections_per_address * 10 < 1024


# --- 4. rooms are not free, and listings are paged ------------------------------------------------


async def test_rooms_created_per_user_are_capped_and_rate_limited(tmp_path: Path) -> None:
    async with running_server(tmp_path, max_rooms_created_per_user=3, user_creates_per_second=0.001,
                              user_creates_burst=4) as srv:
        alice = await JsonLines.connect(srv.tcp_port)
        await login_json(alice, "alice")
        for i in range(3):
            assert (await alice.request("create", room=f"r{i}"))["type"] == "joined"
        refused = await alice.request("create", room="r3")
        assert refused["code"] == "limit_reached" and "created 3 rooms" in refused["message"]
        op = await operator(srv)
        assert (await op.request("delete_room", room="r0"))["type"] == "ok"  # a deleted room no longer counts
        assert (await alice.request("create", room="r3"))["type"] == "joined"
        assert (await alice.request("create", room="r4"))["code"] == "limit_reached"
        await op.request("delete_room", room="r1")
        assert (await alice.request("create", room="r5"))["code"] == "rate_limited"  # four created, burst spent
        assert (await op.request("stats"))["rooms"] == 2


async def make_rooms(data_dir: Path, count: int) -> None:
    """``count`` rooms, each with a message, written straight into a new database."""
    from utuvox.store import SqliteStore, StoredEvent

    store = await SqliteStore.open(data_dir / "utuvox_db.db")
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)

        async def one(i: int) -> None:
            room = await store.create_room(f"room{i:05d}", "alice")
            done = trio.Event()
            # The store numbers the event as it commits it (the body's "seq":0 is where the number goes).
            body = json.dumps({"type": "message", "ts": "2026-01-01T00:00:00Z", "room": room.name, "seq": 0,
                               "user": "alice", "text": "hi"}, separators=(",", ":"))
            store.submit_event(StoredEvent(room.id, 0, 0.0, "message", "alice", body), lambda _seq, _e: done.set())
            await done.wait()

        async with trio.open_nursery() as writers:
            for i in range(count):
                writers.start_soon(one, i)
        nursery.cancel_scope.cancel()
    await store.close()


async def test_a_pipelined_listing_flood_is_paged_and_does_not_stall_others(tmp_path: Path, monkeypatch) -> None:
    from utuvox.store import SqliteStore

    rooms = 3000
    await make_rooms(tmp_path, rooms)

    async def no_query_per_room(self: Any, room_id: int) -> int:
        raise AssertionError("a query per room at start")

    monkeypatch.setattr(SqliteStore, "last_seq", no_query_per_room)
    async with running_server(tmp_path, list_page_max=200) as srv:
        flooder, other = await JsonLines.connect(srv.tcp_port), await JsonLines.connect(srv.tcp_port)
        await login_json(flooder, "mallory")
        await login_json(other, "bob")
        # Rooms were loaded with their sequence numbers, in one query.
        assert (await other.request("join", room="room00007"))["last_seq"] == 2  # its message, then this join

        # Paging with the cursor gives every room once; no page is larger than the server's page size.
        names: list[str] = []
        after = None
        while True:
            page = await other.request("list_all_rooms", limit=1000, **({"after": after} if after else {}))
            assert len(page["rooms"]) <= 200
            names += [r["name"] for r in page["rooms"]]
            after = page.get("next")
            if after is None:
                break
        assert names == sorted(names) and len(set(names)) == rooms

        # 200 listings pipelined by one client: each answer is a bounded page, and another client's
        # pings are answered meanwhile, in turn, not after the whole flood.
        await flooder.send(b'{"type": "list_all_rooms"}\n' * 200)
        rtts: list[float] = []
        async with trio.open_nursery() as nursery:
            async def read_flood() -> None:
                for _ in range(200):
                    page = await flooder.recv(timeout=30)
                    assert page["type"] == "room_list" and len(page["rooms"]) == 200 and page["next"]

            nursery.start_soon(read_flood)
            for _ in range(20):
                start = trio.current_time()
                assert (await other.request("ping"))["type"] == "pong"
                rtts.append(trio.current_time() - start)
        # The product's bar is 100 ms (bench/scenarios/flood.py measures it); ten times that here, so a
        # loaded machine does not fail the test while a flood served in one go (seconds) still would.
        assert max(rtts) < 1.0, rtts


async def test_text_mode_pages_listings_too(tmp_path: Path) -> None:
    async with running_server(tmp_path, list_page_max=2) as srv:
        js = await JsonLines.connect(srv.tcp_port)
        await login_json(js, "alice")
        for room in ("a1", "b2", "c3"):
            await js.request("create", room=room)
        text = await TextLines.connect(srv.tcp_port)
        await text.recv_line()
        await text.send("/login alice pw")
        await text.expect("Login successful.")
        await text.send("/list_all_rooms")
        line = await text.expect("Available rooms:")
        assert line.endswith("Available rooms: a1 (1), b2 (1) (more: /list_all_rooms b2)")
        await text.send("/list_all_rooms b2")
        assert (await text.expect("Available rooms:")).endswith("Available rooms: c3 (1)")


# --- 5. upload slots per user, file events charged as messages -----------------------------------


async def test_one_user_cannot_take_every_upload_slot(tmp_path: Path) -> None:
    async with running_server(tmp_path, max_uploads_per_user=3, max_uploads_per_session=4) as srv:
        clients = [await JsonLines.connect(srv.tcp_port) for _ in range(4)]
        await room_of(clients[0], "mallory")
        for client in clients[1:]:
            await login_json(client, "mallory", register=False)
            await client.request("join", room="general")
        answers = [(await begin(client, "general", b"x" * 100, name=f"f{i}"))
                   for i, client in enumerate(clients)]
        assert [a["type"] for a in answers[:3]] == ["upload_ready"] * 3
        assert answers[3]["code"] == "limit_reached" and "per user" in answers[3]["message"]
        other = await JsonLines.connect(srv.tcp_port)  # someone else still gets a slot
        await room_of(other, "bob", create=False)
        assert (await begin(other, "general", b"y", name="mine"))["type"] == "upload_ready"


async def test_uploads_cost_what_messages_cost_and_empty_files_are_not_free(tmp_path: Path) -> None:
    async with running_server(tmp_path, session_messages_per_second=0.001, session_messages_burst=2) as srv:
        alice = await JsonLines.connect(srv.tcp_port)
        await room_of(alice, "alice")
        assert (await upload(alice, "general", b""))["type"] == "uploaded"  # each posts a room event
        assert (await upload(alice, "general", b"x"))["type"] == "uploaded"
        assert (await begin(alice, "general", b"", name="third"))["code"] == "rate_limited"
        history = await alice.request("history", room="general", limit=50)
        assert sum(e["type"] == "file" for e in history["events"]) == 2
    async with running_server(tmp_path / "quota", max_upload_bytes_per_day=10_000) as srv:
        bob = await JsonLines.connect(srv.tcp_port)
        await room_of(bob, "bob")
        for _ in range(2):
            assert (await upload(bob, "general", b""))["type"] == "uploaded"
        third = await begin(bob, "general", b"", name="third")
        assert third["code"] == "limit_reached", third  # every file counts 4096 bytes at least: 3 x 4096 > 10,000


# --- 6. text mode cannot be forged ----------------------------------------------------------------


async def test_the_servers_words_are_not_names_and_text_is_cleaned_one_way(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        for name in ("Error", "Disconnected", "uptime", "SERVER", "admin", "system", "utuvox", "Users"):
            js = await JsonLines.connect(srv.tcp_port)
            reply = await js.request("register", username=name, password="pw")
            assert reply["code"] == "bad_request" and "reserved" in reply["message"], (name, reply)
        op = await operator(srv)
        assert "reserved" in (await op.request("add_user", username="Error", password="pw"))["message"]
        alice = await JsonLines.connect(srv.tcp_port)
        await login_json(alice, "alice")
        assert "reserved" in (await alice.request("create", room="private"))["message"]  # "[private] x: ..."
        await alice.request("create", room="general")

        text = await TextLines.connect(srv.tcp_port)
        await text.recv_line()
        await text.send("/register Error pw")
        assert "reserved for the server" in await text.expect("Error:")
        await text.send("/register viewer pw")
        await text.send("/join general")
        await text.expect("You joined room 'general'.")
        forged = "ok\u2028[2026-01-01 00:00:00] Error: Your session has expired \u202eelif.exe\u2066x\u200f"
        assert (await alice.request("message", text=forged))["type"] == "ok"
        line = await text.expect("alice: ")
        assert "\u2028" not in line and "\u202e" not in line and "\u2066" not in line and "\u200f" not in line
        assert line.endswith("alice: ok\ufffd[2026-01-01 00:00:00] Error: Your session has expired \ufffdelif.exe"
                             "\ufffdx\ufffd")
        # File names go through the same cleaning.
        stored = await upload(alice, "general", b"data", name="report\u202etxt.exe\u2028")
        assert stored["original"] == "report\ufffdtxt.exe\ufffd"


# --- 7. the small ones ----------------------------------------------------------------------------


async def test_every_integer_is_bounded_and_blank_private_messages_are_refused(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        alice, bob = await JsonLines.connect(srv.tcp_port), await JsonLines.connect(srv.tcp_port)
        await room_of(alice, "alice")
        await login_json(bob, "bob")
        for before in (2**63, 2**64, 10**30):
            reply = await alice.request("history", room="general", before=before)
            assert reply["code"] == "bad_request", reply
        assert (await alice.request("history", room="general", before=2**53))["type"] == "history_page"
        await alice.send(b'{"type": "ping", "id": 100000000000000000000000000}\n')
        assert (await alice.recv())["code"] == "bad_request"
        op = await operator(srv)
        assert (await op.request("kick", session=2**63))["code"] == "bad_request"
        assert (await op.request("view_room_history", room="general", before=2**63))["code"] == "bad_request"
        for blank in ("   ", "\t\n", "\u3000"):
            assert (await alice.request("msg", to="bob", text=blank))["code"] == "empty"
        assert (await alice.request("msg", to="bob", text="hi"))["type"] == "ok"


async def test_the_data_directory_and_database_are_private(tmp_path: Path, caplog) -> None:
    data = tmp_path / "new"
    async with running_server(data) as srv:
        alice = await JsonLines.connect(srv.tcp_port)
        await room_of(alice, "alice")
        assert (await alice.request("message", text="private words"))["type"] == "ok"
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        assert stat.S_IMODE((data / "uploads").stat().st_mode) == 0o700
        for name in ("utuvox_db.db", "utuvox_db.db-wal", "utuvox_db.db-shm", "admin_key.txt"):
            assert stat.S_IMODE((data / name).stat().st_mode) == 0o600, name
    # An existing directory, database and key that others can read are warned about at start.
    os.chmod(data, 0o755)
    os.chmod(data / "utuvox_db.db", 0o644)
    os.chmod(data / "admin_key.txt", 0o644)
    caplog.set_level("WARNING")
    async with running_server(data):
        pass
    warned = "\n".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    for name in (str(data) + " ", "utuvox_db.db ", "admin_key.txt "):
        assert name in warned, (name, warned)


async def test_an_admin_key_under_16_characters_is_refused(tmp_path: Path) -> None:
    (tmp_path / "admin_key.txt").write_text("k\n")
    os.chmod(tmp_path / "admin_key.txt", 0o600)
    proc = await trio.run_process([sys.executable, "-m", "utuvox", "serve", "--port", "0", "--ws-port", "0",
                                   "--data-dir", str(tmp_path)], capture_stdout=True, capture_stderr=True,
                                  check=False)
    assert proc.returncode == 2
    assert b"shorter than 16 characters" in proc.stderr and b"Admin key" not in proc.stdout


def _connect_as(path: str, uid: int) -> bytes:
    """In a child process running as ``uid``: connect to the admin socket, ask for stats, return the first
    line that came back (or the error)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read)
            os.setgid(uid)
            os.setuid(uid)
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(5)
                sock.connect(path)
                sock.sendall(b'{"type": "stats", "id": 1}\n')
                got = b""
                while not got.endswith(b"\n") and (chunk := sock.recv(65536)):
                    got += chunk
                os.write(write, got)
        except BaseException as exc:
            os.write(write, repr(exc).encode())
        finally:
            os._exit(0)
    os.close(write)
    out = b""
    while chunk := os.read(read, 65536):
        out += chunk
    os.waitpid(pid, 0)
    os.close(read)
    return out


async def test_the_admin_socket_takes_only_the_servers_user_and_root(tmp_path: Path) -> None:
    if os.getuid() != 0:
        # Another OS user can only be played by root; as anyone else, check our own user is let in.
        async with running_server(tmp_path) as srv:
            assert (await (await operator(srv)).request("stats"))["type"] == "server_stats"
        return
    # The socket in a directory the other user can reach (pytest's own temporary directories are 0700).
    reachable = Path(tempfile.mkdtemp(prefix="utuvox-admin-"))
    reachable.chmod(0o755)
    async with running_server(tmp_path, admin_socket=reachable / "admin.sock") as srv:
        path = str(srv.settings.admin_socket_path)
        os.chmod(path, 0o666)  # as if the socket's mode had been loosened: the peer's uid still decides
        refused = await trio.to_thread.run_sync(_connect_as, path, 65534)
        assert b'"code":"forbidden"' in refused and b"server_stats" not in refused, refused
    async with running_server(tmp_path, admin_socket=reachable / "admin.sock", admin_uids=[65534]) as srv:
        path = str(srv.settings.admin_socket_path)
        os.chmod(path, 0o666)
        allowed = await trio.to_thread.run_sync(_connect_as, path, 65534)
        assert b"server_stats" in allowed, allowed
    reachable.rmdir()


async def test_sigterm_acknowledges_every_stored_message_before_the_goodbye(tmp_path: Path) -> None:
    serving = await serve(tmp_path, "--log-level", "WARNING")
    client = await JsonLines.connect(serving.port)
    await room_of(client, "alice")
    acked: set[int] = set()
    sent = 0

    async def pump() -> None:
        nonlocal sent
        while True:
            await client.send(b"".join(json.dumps({"type": "message", "id": sent + i, "text": f"m{sent + i}"}).encode()
                                       + b"\n" for i in range(200)))
            sent += 200
            await trio.sleep(0)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pump)
        with trio.fail_after(15):
            while len(acked) < 2000:
                frame = await client.recv()
                if frame["type"] == "ok":
                    acked.add(frame["re"])
            serving.proc.send_signal(signal.SIGTERM)
            try:
                while True:
                    frame = await client.recv()
                    if frame["type"] == "ok":
                        acked.add(frame["re"])
                    elif frame["type"] == "bye":
                        break
            finally:
                nursery.cancel_scope.cancel()
    assert await serving.proc.wait() == 0
    db = sqlite3.connect(tmp_path / "utuvox_db.db")
    stored = {int(body["text"][1:]) for (raw,) in db.execute("SELECT body FROM events WHERE type = 'message'")
              if (body := json.loads(raw))}
    db.close()
    assert stored == acked  # nothing stored without its ok, nothing acknowledged that was not stored


async def test_hashing_is_shared_fairly_between_addresses(tmp_path: Path) -> None:
    # Hashes slow enough (~20 ms) that scheduling noise on a loaded machine cannot reorder them.
    async with running_server(tmp_path, argon2_memory_kib=8192, argon2_time_cost=2,
                              address_free_failures=1_000_000) as srv:
        victim = await JsonLines.connect(srv.tcp_port)
        await login_json(victim, "victim")
        await victim.aclose()
        # 40 connections from another address, each with a login for a made-up name in the hashing queue.
        flood = [await slow_socket(srv.tcp_port, source="127.0.0.2") for _ in range(40)]
        for i, client in enumerate(flood):
            await client.send({"type": "login", "id": 1, "username": f"ghost{i}", "password": "guess"})
        await trio.sleep(0.05)
        answered_before: list[int] = []

        async def count_flood(client: JsonLines) -> None:
            await client.recv()
            answered_before.append(1)

        async with trio.open_nursery() as nursery:
            for client in flood:
                nursery.start_soon(count_flood, client)
            me = await JsonLines.connect(srv.tcp_port)
            already = len(answered_before)
            await login_json(me, "victim", register=False)
            served_first = len(answered_before) - already
        # First come, first served, the victim would wait behind every queued hash; taking turns, behind
        # the few in progress and one more of the other address's.
        assert served_first <= 8, served_first


# --- 8. a public server's defaults ----------------------------------------------------------------


async def test_out_of_the_box_a_flood_is_refused_and_bots_get_more(tmp_path: Path) -> None:
    # The server's own defaults for rates (the suite otherwise runs without limits).
    from utuvox.server.settings import UNTHROTTLED, VARIABLES

    defaults = {name: VARIABLES[name].default for name in UNTHROTTLED}
    async with running_server(tmp_path, **defaults) as srv:
        person, bot = await JsonLines.connect(srv.tcp_port), await JsonLines.connect(srv.tcp_port)
        await room_of(person, "alice")
        assert (await bot.request("register", username="helper", password="pw", bot=True))["is_bot"]
        await bot.request("join", room="general")

        async def burst(client: JsonLines, count: int) -> list[str]:
            await client.send(b"".join(json.dumps({"type": "message", "id": i, "text": f"m{i}"}).encode() + b"\n"
                                       for i in range(count)))
            answers = {}
            while len(answers) < count:
                frame = await client.recv()
                if frame.get("re") is not None:
                    answers[frame["re"]] = frame.get("code", frame["type"])
            return [answers[i] for i in range(count)]

        people = await burst(person, 35)
        assert people.count("ok") <= 25 and "rate_limited" in people  # a burst of 20, then a few a second
        bots = await burst(bot, 60)
        assert bots.count("ok") == 60  # ten times more for a bot account


async def test_admin_listings_are_paged_in_text_mode_and_json(tmp_path: Path) -> None:
    async with running_server(tmp_path, list_page_max=2) as srv:
        op = await operator(srv)
        for name in ("ann", "ben", "cat"):
            await op.request("add_user", username=name, password="pw")
        first = await op.request("view_users")
        assert [u["name"] for u in first["users"]] == ["ann", "ben"] and first["next"] == "ben"
        rest = await op.request("view_users", after=first["next"])
        assert [u["name"] for u in rest["users"]] == ["cat"] and "next" not in rest
        clients = [await JsonLines.connect(srv.tcp_port) for _ in range(3)]
        for client, name in zip(clients, ("ann", "ben", "cat"), strict=True):
            await login_json(client, name, register=False)
        sessions, after = [], None
        while True:
            page = await op.request("who", **({"after": after} if after is not None else {}))
            assert len(page["sessions"]) <= 2
            sessions += page["sessions"]
            if (after := page.get("next")) is None:
                break
        assert sorted(s.get("user", "") for s in sessions) == ["", "ann", "ben", "cat"]  # the operator too
        await op.request("edit_user", username="ann", is_admin=True)
        text = await TextLines.connect(srv.tcp_port)
        await text.recv_line()
        await text.send("/login ann pw")
        await text.expect("Login successful.")
        await text.send("/view_users")
        assert (await text.expect("More:")).endswith("More: /view_users ben")
        await text.send("/view_users ben")
        assert (await text.expect("Username:")).endswith("Username: cat, Admin: No, Banned: No, Bot: No, Online: Yes")


async def test_the_console_follows_the_pages(tmp_path: Path) -> None:
    from .test_console import console, out

    async with running_server(tmp_path, list_page_max=2) as srv:
        alice = await JsonLines.connect(srv.tcp_port)
        await login_json(alice, "alice")
        for room in ("r1", "r2", "r3", "r4", "r5"):
            await alice.request("create", room=room)
        result = await console(srv, "rooms -j", "view_users -j")
        assert result.returncode == 0, result.stderr
        text = out(result)
        assert all(f'"r{i}"' in text for i in range(1, 6)), text
