"""File sharing on the real server over real sockets, with the raw test clients: uploads and downloads over
TCP JSON and WebSocket, failures that leave nothing behind, names that cannot escape uploads/, permissions,
concurrency, text mode, room events and history, room deletion, and the protocol page's examples."""

from __future__ import annotations

import base64
import errno
import hashlib
import itertools
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import trio

from utuvox.chat import files as chat_files
from utuvox.protocol.schema import CLIENT_FRAME, SERVER_FRAME

from .clients import JsonLines, WsJson
from .conftest import login_json, open_ws, running_server

UNIQUE = re.compile(r"^general_\d{8}_\d{6}_[A-Za-z0-9._-]+_[0-9a-f]{8}$")
MAX_FRAME = 64 * 1024
_ids = itertools.count(1)

Client = JsonLines | WsJson


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def uploads(data_dir: Path) -> list[str]:
    return sorted(os.listdir(data_dir / "uploads"))


def temps(data_dir: Path) -> list[str]:
    path = data_dir / "uploads.tmp"
    return sorted(os.listdir(path)) if path.exists() else []


async def begin(client: Client, room: str, data: bytes, name: str = "report.pdf", **over: Any) -> dict:
    fields = {"room": room, "name": name, "size": len(data), "sha256": sha(data), **over}
    return await client.request("upload", **fields)


async def send_chunks(client: Client, ready: dict, data: bytes, *, start: int = 0, stop: int | None = None,
                      final_id: str | None = None) -> None:
    """Send the chunks covering data[start:stop], back to back; the last gets ``final_id``."""
    size = ready["chunk_size"]
    stop = len(data) if stop is None else stop
    offsets = list(range(start, stop, size)) or [start]
    for i, offset in enumerate(offsets):
        frame: dict[str, Any] = {"type": "upload_chunk", "upload_id": ready["upload_id"], "offset": offset,
                                 "data": b64(data[offset:min(offset + size, stop)])}
        if final_id is not None and i == len(offsets) - 1:
            frame["id"] = final_id
        await client.send(frame)


async def upload(client: Client, room: str, data: bytes, name: str = "report.pdf") -> dict:
    """The whole upload; returns the answer to the final chunk (``uploaded`` or ``upload_failed``)."""
    ready = await begin(client, room, data, name)
    assert ready["type"] == "upload_ready", ready
    final = f"fin-{next(_ids)}"
    await send_chunks(client, ready, data, final_id=final)
    return await client.recv_until(lambda f: f.get("re") == final, timeout=30)


async def download(client: Client, name: str) -> tuple[dict, bytes, dict | None]:
    """(download_start or error, the bytes, download_end or download_failed)."""
    rid = f"dl-{next(_ids)}"
    await client.send({"type": "download", "id": rid, "name": name})
    start = await client.recv_until(lambda f: f.get("re") == rid)
    if start["type"] != "download_start":
        return start, b"", None
    got = bytearray()
    while True:
        frame = await client.recv(timeout=30)
        if frame.get("download_id") != start["download_id"]:
            continue
        if frame["type"] == "download_chunk":
            assert frame["offset"] == len(got)
            chunk = base64.b64decode(frame["data"])
            assert 0 < len(chunk) <= start["chunk_size"]
            assert len(json.dumps(frame, separators=(",", ":"))) < MAX_FRAME
            got += chunk
        else:
            return start, bytes(got), frame


async def room_of(client: Client, name: str, room: str = "general", *, create: bool = True) -> None:
    await login_json(client, name)
    joined = await client.request("create" if create else "join", room=room)
    assert joined["type"] == "joined", joined


async def wait_for(predicate: Any, timeout: float = 5) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


# --- round trips --------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1000, 3 * 1024 * 1024 + 7], ids=["empty", "small", "3MiB"])
async def test_round_trip_over_tcp(server, connect_json, tmp_path: Path, size: int) -> None:
    alice, bob = await connect_json(), await connect_json()
    await room_of(alice, "alice")
    await room_of(bob, "bob", create=False)
    data = os.urandom(size)
    done = await upload(alice, "general", data)
    assert done["type"] == "uploaded", done
    assert UNIQUE.match(done["name"]) and "_report.pdf_" in done["name"]
    assert (done["size"], done["sha256"], done["original"], done["room"]) == (size, sha(data), "report.pdf", "general")
    assert uploads(tmp_path) == [done["name"]]
    assert (tmp_path / "uploads" / done["name"]).read_bytes() == data
    assert temps(tmp_path) == []
    start, got, end = await download(bob, done["name"])
    assert start["type"] == "download_start", start
    assert (start["size"], start["sha256"], start["original"]) == (size, sha(data), "report.pdf")
    assert got == data
    assert end == {"type": "download_end", "download_id": start["download_id"], "name": done["name"], "size": size}


@pytest.mark.parametrize("size", [0, 1000, 3 * 1024 * 1024 + 7], ids=["empty", "small", "3MiB"])
async def test_round_trip_over_websocket(server, tmp_path: Path, size: int) -> None:
    async with open_ws(server.ws_port) as alice, open_ws(server.ws_port) as bob:
        await room_of(alice, "alice")
        await room_of(bob, "bob", create=False)
        data = os.urandom(size)
        done = await upload(alice, "general", data, name="photo.jpg")
        assert done["type"] == "uploaded", done
        assert (tmp_path / "uploads" / done["name"]).read_bytes() == data
        _, got, end = await download(bob, done["name"])
        assert got == data and end is not None and end["type"] == "download_end"
        # Across transports: what WebSocket stored, TCP fetches.
        tcp = await JsonLines.connect(server.tcp_port)
        await room_of(tcp, "carol", create=False)
        assert (await download(tcp, done["name"]))[1] == data


async def test_several_uploads_on_one_connection_interleaved(server, connect_json, tmp_path: Path) -> None:
    alice = await connect_json()
    await room_of(alice, "alice")
    one, two = os.urandom(200_000), os.urandom(150_000)
    r1, r2 = await begin(alice, "general", one, "one.bin"), await begin(alice, "general", two, "two.bin")
    assert r1["upload_id"] != r2["upload_id"]
    size = r1["chunk_size"]
    for offset in range(0, 200_000, size):  # alternate chunks of the two
        for ready, data in ((r1, one), (r2, two)):
            if offset < len(data):
                end = min(offset + size, len(data))
                frame = {"type": "upload_chunk", "upload_id": ready["upload_id"], "offset": offset,
                         "data": b64(data[offset:end])}
                if end == len(data):
                    frame["id"] = ready["upload_id"]
                await alice.send(frame)
    answers: dict[str, dict] = {}
    while len(answers) < 2:
        frame = await alice.recv_until(lambda f: f.get("re") in (r1["upload_id"], r2["upload_id"]))
        answers[frame["re"]] = frame
    done1, done2 = answers[r1["upload_id"]], answers[r2["upload_id"]]
    assert done1["type"] == done2["type"] == "uploaded"
    assert (tmp_path / "uploads" / done1["name"]).read_bytes() == one
    assert (tmp_path / "uploads" / done2["name"]).read_bytes() == two


async def test_two_users_upload_at_once(server, connect_json, tmp_path: Path) -> None:
    alice, bob = await connect_json(), await connect_json()
    await room_of(alice, "alice")
    await room_of(bob, "bob", create=False)
    data = {"alice": os.urandom(2 * 1024 * 1024 + 1), "bob": os.urandom(1024 * 1024 + 3)}
    results: dict[str, dict] = {}

    async def go(client: JsonLines, who: str) -> None:
        results[who] = await upload(client, "general", data[who], name=f"{who}.bin")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(go, alice, "alice")
        nursery.start_soon(go, bob, "bob")
    assert {r["type"] for r in results.values()} == {"uploaded"}
    for who, done in results.items():
        assert (tmp_path / "uploads" / done["name"]).read_bytes() == data[who]
    listed = await alice.request("list_files")
    assert {f["uploader"] for f in listed["files"]} == {"alice", "bob"}


# --- failures leave nothing behind --------------------------------------------------------------


async def test_wrong_hash_stores_nothing(server, connect_json, tmp_path: Path) -> None:
    alice = await connect_json()
    await room_of(alice, "alice")
    data = os.urandom(100_000)
    ready = await begin(alice, "general", data, sha256=sha(b"something else"))
    await send_chunks(alice, ready, data, final_id="last")
    failed = await alice.recv_until(lambda f: f.get("re") == "last")
    assert failed["type"] == "upload_failed" and failed["code"] == "hash_mismatch", failed
    assert failed["upload_id"] == ready["upload_id"]
    assert uploads(tmp_path) == [] and temps(tmp_path) == []
    assert (await alice.request("list_files"))["files"] == []
    history = await alice.request("history", room="general")
    assert not [e for e in history["events"] if e["type"] == "file"]
    # The session goes on: a good upload right after works.
    assert (await upload(alice, "general", data))["type"] == "uploaded"


async def test_upload_cut_off_halfway_leaves_nothing_and_others_go_on(server, connect_json, tmp_path: Path) -> None:
    alice, bob = await connect_json(), await connect_json()
    await room_of(alice, "alice")
    await room_of(bob, "bob", create=False)
    data = os.urandom(4 * 1024 * 1024)
    ready = await begin(alice, "general", data)
    await send_chunks(alice, ready, data, stop=2 * 1024 * 1024)
    assert (await alice.request("ping"))["type"] == "pong"  # the first half has been taken in
    assert server.files.uploads_in_progress == 1
    await alice.aclose()
    await wait_for(lambda: server.files.uploads_in_progress == 0)
    await wait_for(lambda: temps(tmp_path) == [])
    assert uploads(tmp_path) == []
    assert (await bob.request("list_files"))["files"] == []
    # The server and the room carry on.
    assert (await bob.request("message", text="still here"))["type"] == "ok"
    small = os.urandom(5000)
    assert (await upload(bob, "general", small))["type"] == "uploaded"


async def test_too_large_is_refused(tmp_path: Path) -> None:
    async with running_server(tmp_path, max_upload_bytes=100_000) as server:
        alice = await JsonLines.connect(server.tcp_port)
        await room_of(alice, "alice")
        refused = await begin(alice, "general", os.urandom(100_001))
        assert refused["type"] == "error" and refused["code"] == "file_too_large", refused
        assert (await upload(alice, "general", os.urandom(100_000)))["type"] == "uploaded"
        # Announcing less than is sent is caught at the first byte too many.
        data = os.urandom(50_000)
        ready = await begin(alice, "general", data[:10_000])
        await send_chunks(alice, ready, data, final_id="over")
        failed = await alice.recv_until(lambda f: f.get("type") == "upload_failed")
        assert failed["code"] == "size_mismatch", failed
        assert (await alice.recv_until(lambda f: f.get("re") == "over"))["code"] == "size_mismatch"
        assert len(uploads(tmp_path)) == 1 and temps(tmp_path) == []


async def test_full_disk_stores_nothing(server, connect_json, tmp_path: Path, monkeypatch) -> None:
    def no_space(up: Any, parts: list[bytes]) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(chat_files, "_write_batch", no_space)
    alice = await connect_json()
    await room_of(alice, "alice")
    data = os.urandom(3 * 1024 * 1024)
    ready = await begin(alice, "general", data)
    await send_chunks(alice, ready, data, final_id="last")
    failed = await alice.recv_until(lambda f: f.get("type") == "upload_failed")
    assert failed["code"] == "disk_full", failed
    await wait_for(lambda: temps(tmp_path) == [])
    assert uploads(tmp_path) == []
    assert (await alice.request("list_files"))["files"] == []
    assert (await alice.request("ping"))["type"] == "pong"


async def test_bad_chunks_get_clear_answers(server, connect_json, tmp_path: Path) -> None:
    alice = await connect_json()
    await room_of(alice, "alice")
    unknown = await alice.request("upload_chunk", upload_id="u-nope", offset=0, data="")
    assert unknown["type"] == "upload_failed" and unknown["code"] == "no_such_upload"
    data = os.urandom(100_000)
    ready = await begin(alice, "general", data)
    failed = await alice.request("upload_chunk", upload_id=ready["upload_id"], offset=5, data=b64(data[:10]))
    assert failed["type"] == "upload_failed" and failed["code"] == "bad_offset", failed
    # The upload is over; later chunks are ignored, except one with an id, told again why.
    await alice.send({"type": "upload_chunk", "upload_id": ready["upload_id"], "offset": 0, "data": b64(data[:10])})
    again = await alice.request("upload_chunk", upload_id=ready["upload_id"], offset=10, data="")
    assert again["code"] == "bad_offset"
    ready = await begin(alice, "general", data)
    bad = await alice.request("upload_chunk", upload_id=ready["upload_id"], offset=0, data="not base64!")
    assert bad["code"] == "bad_chunk"
    ready = await begin(alice, "general", data)
    ack = await alice.request("upload_chunk", upload_id=ready["upload_id"], offset=0, data=b64(data[:1000]))
    assert ack["type"] == "ok"
    assert temps(tmp_path) == [ready["upload_id"] + ".part"]
    await wait_for(lambda: server.files.uploads_in_progress == 1)
    assert uploads(tmp_path) == []


async def test_uploads_per_connection_are_capped(tmp_path: Path) -> None:
    async with running_server(tmp_path, max_uploads_per_session=2) as server:
        alice = await JsonLines.connect(server.tcp_port)
        await room_of(alice, "alice")
        data = os.urandom(10)
        assert (await begin(alice, "general", data))["type"] == "upload_ready"
        assert (await begin(alice, "general", data))["type"] == "upload_ready"
        third = await begin(alice, "general", data)
        assert third["type"] == "error" and third["code"] == "limit_reached"
        bob = await JsonLines.connect(server.tcp_port)
        await room_of(bob, "bob", create=False)
        assert (await upload(bob, "general", data))["type"] == "uploaded"


async def test_idle_upload_is_abandoned(tmp_path: Path) -> None:
    async with running_server(tmp_path, upload_idle_timeout=0.3) as server:
        alice = await JsonLines.connect(server.tcp_port)
        await room_of(alice, "alice")
        ready = await begin(alice, "general", os.urandom(10))
        dropped = await alice.recv_until(lambda f: f.get("type") == "upload_failed")
        assert dropped["upload_id"] == ready["upload_id"] and dropped["code"] == "limit_reached"
        assert temps(tmp_path) == [] and server.files.uploads_in_progress == 0


async def test_stale_temp_files_are_cleaned_at_startup(tmp_path: Path) -> None:
    (tmp_path / "uploads.tmp").mkdir()
    (tmp_path / "uploads.tmp" / "u0123456789abcdef.part").write_bytes(b"half a file")
    async with running_server(tmp_path):
        assert temps(tmp_path) == []


# --- names --------------------------------------------------------------------------------------

HOSTILE_NAMES = [
    "../../etc/passwd", "/etc/shadow", "..", ".", "a\x00b.txt", "evil\x1b[31mred\x07.txt",
    "C:\\Windows\\system.ini", "sub/dir/../../x.txt", "\u202etxt.exe", ".bashrc", "  ", "x" * 255,
]


async def test_hostile_names_are_stored_inside_uploads(server, connect_json, tmp_path: Path) -> None:
    alice = await connect_json()
    await room_of(alice, "alice")
    before = set(os.listdir(tmp_path))
    stored = []
    for name in HOSTILE_NAMES:
        done = await upload(alice, "general", name.encode("utf-8", "replace"), name=name)
        assert done["type"] == "uploaded", (name, done)
        assert UNIQUE.match(done["name"]) and len(done["name"]) < 200, done["name"]
        original = done["original"]
        assert "/" not in original and "\\" not in original and original not in ("", ".", "..")
        assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 or c == "\u202e" for c in original), original
        stored.append(done["name"])
    assert uploads(tmp_path) == sorted(stored)
    assert set(os.listdir(tmp_path)) == before
    assert not (tmp_path.parent / "etc").exists()
    texts = await alice.request("list_files")
    assert [f["name"] for f in texts["files"]] == stored


@pytest.mark.parametrize("name", [
    "../../etc/passwd", "..", ".", "/etc/passwd", "uploads/../utuvox_db.db", "utuvox_db.db", "admin_key.txt",
    "../uploads.tmp/x.part", "general\x00.txt", "name\nwith newline", "%2e%2e%2fetc", "uploads",
])
async def test_download_of_a_name_outside_uploads_is_refused(server, connect_json, name: str) -> None:
    alice = await connect_json()
    await room_of(alice, "alice")
    assert (await upload(alice, "general", b"hello"))["type"] == "uploaded"
    answer, got, _ = await download(alice, name)
    assert answer["type"] == "error" and answer["code"] == "no_such_file", answer
    assert got == b""


# --- permissions --------------------------------------------------------------------------------


async def test_only_members_and_operators_may_upload_and_download(server, connect_json, tmp_path: Path) -> None:
    alice, bob = await connect_json(), await connect_json()
    await room_of(alice, "alice")
    await login_json(bob, "bob")
    done = await upload(alice, "general", b"members only")
    refused = await begin(bob, "general", b"me too")
    assert refused["type"] == "error" and refused["code"] == "not_in_room", refused
    answer, got, _ = await download(bob, done["name"])
    assert answer["type"] == "error" and answer["code"] == "not_in_room" and got == b""
    assert (await bob.request("list_files", room="general"))["code"] == "not_in_room"
    assert (await begin(bob, "nowhere", b"x"))["code"] == "no_such_room"
    # An anonymous connection gets nothing either.
    anon = await connect_json()
    assert (await anon.request("download", name=done["name"]))["code"] == "not_logged_in"
    # An admin who is not in the room may.
    key = (tmp_path / "admin_key.txt").read_text().strip()
    admin = await connect_json()
    assert (await admin.request("register", username="root", password="pw", admin_key=key))["is_admin"]
    assert (await download(admin, done["name"]))[1] == b"members only"
    assert [f["name"] for f in (await admin.request("list_files", room="general"))["files"]] == [done["name"]]
    # Once bob joins, he may.
    await bob.request("join", room="general")
    assert (await download(bob, done["name"]))[1] == b"members only"


# --- the room sees it ---------------------------------------------------------------------------


async def test_room_sees_file_events_and_history_keeps_them(server, connect_json) -> None:
    alice, bob = await connect_json(), await connect_json()
    await room_of(alice, "alice")
    await room_of(bob, "bob", create=False)
    done = await upload(alice, "general", b"report body")
    seen = await bob.recv_until(lambda f: f.get("type") == "file")
    assert seen["action"] == "upload" and seen["user"] == "alice" and seen["name"] == done["name"]
    assert (seen["original"], seen["size"], seen["sha256"]) == ("report.pdf", 11, sha(b"report body"))
    await download(bob, done["name"])
    await alice.send({"type": "message", "room": "general", "text": "after the download"})
    # A download is no room event: alice sees her message next, and the history has the upload only.
    after = await alice.recv_until(lambda f: f.get("type") in ("file", "message"))
    assert (after["type"], after.get("text")) == ("message", "after the download")
    history = await bob.request("history", room="general")
    files = [(e["action"], e["user"]) for e in history["events"] if e["type"] == "file"]
    assert files == [("upload", "alice")]
    listed = await bob.request("list_files")
    assert listed["type"] == "file_list" and listed["room"] == "general" and listed["more"] is False
    [entry] = listed["files"]
    assert {k: entry[k] for k in ("name", "original", "size", "uploader")} == {
        "name": done["name"], "original": "report.pdf", "size": 11, "uploader": "alice"}
    assert entry["uploaded_at"].endswith("Z")


async def test_text_mode(server, connect_json, connect_text) -> None:
    alice = await connect_json()
    await room_of(alice, "alice")
    text = await connect_text()
    await text.expect("Welcome")
    await text.send("/register tina pw")
    await text.expect("Registration successful")
    await text.send("/join general")
    await text.expect("You joined room 'general'")
    done = await upload(alice, "general", b"%PDF-1.7")
    line = await text.expect("uploaded file")
    assert f"User alice uploaded file '{done['name']}' (Original: report.pdf)" in line
    await text.send("/upload general ./report.pdf")
    line = await text.expect("Error")
    assert "Text mode cannot carry files" in line and "utuvox client" in line
    await text.send(f"/download {done['name']}")
    assert "Text mode cannot carry files" in await text.expect("Error")
    await text.send("/list_files")
    assert "Files in room 'general':" in await text.expect("Files in room")
    row = await text.expect(done["name"])
    assert "alice" in row and "(Original: report.pdf)" in row and "8 B" in row
    await text.send("/help")
    assert "/upload <room> <filepath>" in await text.expect("/upload")
    json_err = await alice.request("upload", room="general", name="x", size=1, sha256="0" * 64)
    assert json_err["type"] == "upload_ready"  # JSON over the same port is not text mode


# --- room deletion ------------------------------------------------------------------------------


async def test_deleting_a_room_deletes_its_files(server, connect_json, tmp_path: Path) -> None:
    alice, bob = await connect_json(), await connect_json()
    await room_of(alice, "alice")
    await room_of(bob, "bob", "general_stuff")  # a room whose name starts like the other's
    kept = await upload(bob, "general_stuff", b"keep me")
    for i in range(3):
        assert (await upload(alice, "general", os.urandom(1000 + i)))["type"] == "uploaded"
    assert len(uploads(tmp_path)) == 4
    chat = server.chat
    room = chat.room("general")
    await chat.delete_room(room, "an admin")
    assert uploads(tmp_path) == [kept["name"]]
    assert await chat.store.list_files(room.id) == []
    assert [f.name for f in await chat.store.list_files(chat.room("general_stuff").id)] == [kept["name"]]


async def test_an_admin_deleting_a_room_deletes_its_files(server, connect_json, tmp_path: Path) -> None:
    alice = await connect_json()
    await room_of(alice, "alice")
    done = await upload(alice, "general", b"to be deleted")
    key = (tmp_path / "admin_key.txt").read_text().strip()
    admin = await connect_json()
    assert (await admin.request("register", username="root", password="pw", admin_key=key))["is_admin"]
    assert (await admin.request("delete_room", room="general"))["type"] == "ok"
    await wait_for(lambda: uploads(tmp_path) == [])
    assert await server.chat.store.get_file(done["name"]) is None
    # A new room under the same name starts without files.
    await alice.request("create", room="general")
    assert (await alice.request("list_files", room="general"))["files"] == []
    assert (await download(alice, done["name"]))[0]["code"] == "no_such_file"


async def test_deleting_a_room_abandons_its_uploads(server, connect_json, tmp_path: Path) -> None:
    alice = await connect_json()
    await room_of(alice, "alice")
    data = os.urandom(500_000)
    ready = await begin(alice, "general", data)
    await send_chunks(alice, ready, data, stop=100_000)
    room = server.chat.room("general")
    await server.files.on_room_deleted(room)
    failed = await alice.recv_until(lambda f: f.get("type") == "upload_failed")
    assert failed["code"] == "no_such_room"
    assert temps(tmp_path) == [] and uploads(tmp_path) == []


async def test_a_reader_that_stalls_is_paced_not_cut_off(server, connect_json) -> None:
    alice, bob = await connect_json(), await connect_json()
    await room_of(alice, "alice")
    await room_of(bob, "bob", create=False)
    data = os.urandom(24 * 1024 * 1024)
    done = await upload(alice, "general", data)
    await bob.send({"type": "download", "id": "dl", "name": done["name"]})
    await bob.recv_until(lambda f: f.get("re") == "dl")
    await trio.sleep(0.5)  # bob reads nothing meanwhile
    [outbox] = [s.peer for s in server.chat.all_sessions() if s.user and s.user.name == "bob"]
    assert server.files.downloads_in_progress == 1  # waiting for bob, not done and not dropped
    assert outbox._queued_bytes <= 2 * 1024 * 1024 and not outbox.closing
    got = bytearray()
    while True:
        frame = await bob.recv(timeout=30)
        if frame["type"] == "download_chunk":
            got += base64.b64decode(frame["data"])
        elif frame["type"] == "download_end":
            break
    assert got == data


async def test_deleting_a_room_stops_its_downloads(server, connect_json) -> None:
    alice, bob = await connect_json(), await connect_json()
    await room_of(alice, "alice")
    await room_of(bob, "bob", create=False)
    done = await upload(alice, "general", os.urandom(24 * 1024 * 1024))
    await bob.send({"type": "download", "id": "dl", "name": done["name"]})
    start = await bob.recv_until(lambda f: f.get("re") == "dl")
    # bob reads nothing for now: the server stops at what the socket and a paced queue hold.
    await server.files.on_room_deleted(server.chat.room("general"))
    end = await bob.recv_until(lambda f: f.get("download_id") == start["download_id"]
                               and f["type"] != "download_chunk", timeout=30)
    assert end["type"] == "download_failed" and end["code"] == "no_such_room", end
    assert server.files.downloads_in_progress == 0


# --- the protocol page --------------------------------------------------------------------------


def test_protocol_page_examples_validate() -> None:
    page = (Path(__file__).parent.parent / "docs" / "PROTOCOL.md").read_text()
    section = page[page.index("## File sharing"):]
    section = section[: section.find("\n## ", 1)] if "\n## " in section[1:] else section
    count = 0
    for block in re.findall(r"```json\n(.*?)```", section, re.S):
        for line in block.strip().splitlines():
            frame = json.loads(line)
            try:
                CLIENT_FRAME.validate_python(frame)
            except ValueError:
                SERVER_FRAME.validate_python(frame)
            count += 1
    assert count >= 20


def test_unique_names_and_safe_components() -> None:
    assert chat_files.safe_component("report.pdf") == "report.pdf"
    assert chat_files.safe_component("../../etc/passwd") == "passwd"
    assert chat_files.safe_component("a b\x00c.txt") == "a_b_c.txt"
    assert chat_files.safe_component("..") == "file"
    assert chat_files.safe_component(".bashrc") == "bashrc"
    long = chat_files.safe_component("y" * 300 + ".tar.gz")
    assert len(long) == chat_files.SAFE_MAX and long.endswith(".gz")
    assert chat_files.display_original("dir/na\x1bme.txt") == "na\ufffdme.txt"
    assert not chat_files.is_unique_name("../x") and not chat_files.is_unique_name(".hidden")


def test_benchmark_runs_on_a_small_file(capsys) -> None:
    from bench import files as bench_files

    assert bench_files.main(["--size", "1", "--transports", "tcp,ws"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^tcp\s+\d+\.\d", out, re.M) and re.search(r"^ws\s+\d+\.\d", out, re.M), out
