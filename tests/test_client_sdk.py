"""The client SDK against the real server: requests and replies, events, errors, many requests in
flight, and reconnecting across a server restart without losing or repeating an event."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from utuvox.client import Client, Disconnected, UtuVoxError, connect, parse_url
from utuvox.client import rooms as client_rooms
from utuvox.client.files import safe_file_name
from utuvox.protocol import core as p
from utuvox.protocol import files as f
from utuvox.protocol import json_codec
from utuvox.protocol.admin import Kick
from utuvox.server.app import Server

from .conftest import make_settings, open_ws

TIMEOUT = 10


def tcp_url(server: Server) -> str:
    return f"tcp://127.0.0.1:{server.tcp_port}"


def ws_url(server: Server) -> str:
    return f"ws://127.0.0.1:{server.ws_port}"


URLS: dict[str, Callable[[Server], str]] = {"tcp": tcp_url, "ws": ws_url}


async def next_of(client: Client, kind: type, pred: Callable[[Any], bool] = lambda _: True) -> Any:
    """The next event of type ``kind`` satisfying ``pred``, skipping others."""
    with trio.fail_after(TIMEOUT):
        while True:
            event = await client.next_event()
            if isinstance(event, kind) and pred(event):
                return event


class Restartable:
    """Runs a server in the test's nursery and can stop it and start a new one on the same data
    directory and the same ports, as an operator restarting the service would."""

    def __init__(self, nursery: trio.Nursery, data_dir: Path) -> None:
        self.nursery = nursery
        self.data_dir = data_dir
        self.server: Server | None = None
        self._done = trio.Event()

    async def start(self, **overrides: object) -> Server:
        server = Server(make_settings(self.data_dir, **overrides), announce=lambda _: None)
        done = trio.Event()

        async def run(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            try:
                await server.run(task_status=task_status)
            finally:
                done.set()

        await self.nursery.start(run)
        self.server, self._done = server, done
        return server

    async def stop(self) -> None:
        assert self.server is not None
        self.server.request_stop()
        await self._done.wait()

    async def restart(self) -> Server:
        assert self.server is not None
        old = self.server
        await self.stop()
        return await self.start(port=old.tcp_port, ws_port=old.ws_port)


@asynccontextmanager
async def restartable(data_dir: Path) -> AsyncIterator[Restartable]:
    async with trio.open_nursery() as nursery:
        runner = Restartable(nursery, data_dir)
        await runner.start()
        try:
            yield runner
        finally:
            # Stop gracefully before the nursery sees any exception from the test: cancelled from
            # outside, the server could not finish its shutdown.
            with trio.move_on_after(5, shield=True):
                await runner.stop()


# --- urls ---------------------------------------------------------------------------------------


def test_parse_url() -> None:
    assert str(parse_url("tcp://127.0.0.1:9090")) == "tcp://127.0.0.1:9090"
    assert parse_url("localhost").port == 9090
    assert parse_url("ws://h").port == 9091
    assert parse_url("ws://h:1/chat").path == "/chat"
    with pytest.raises(ValueError):
        parse_url("http://h:1")


# --- requests and replies -----------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["tcp", "ws"])
async def test_every_request_has_a_typed_helper(server: Server, transport: str) -> None:
    async with connect(URLS[transport](server)) as c:
        assert (await c.whoami()).user is None
        logged = await c.register("alice", "pw1")
        assert logged.registered and logged.user == "alice" and c.user == "alice"
        assert (await c.whoami()).user == "alice"
        assert (await c.whereami()).room is None and c.current_room is None

        created = await c.create("lobby")
        assert created.created and created.room == "lobby" and c.current_room == "lobby"
        joined = await c.create("games")
        assert joined.room == "games" and c.rooms == ("lobby", "games")
        where = await c.whereami()
        assert where.room == "games" and where.rooms == ["lobby", "games"]

        ok = await c.message("hello", room="lobby")
        assert ok.room == "lobby" and ok.seq == 2
        page = await c.history("lobby")
        assert [e.type for e in page.events] == ["join", "message"] and not page.more
        older = await c.history("lobby", before=2, limit=1)
        assert [e.seq for e in older.events] == [1]

        assert [u.name for u in (await c.list_all_users()).users] == ["alice"]
        assert [u.name for u in (await c.list_users_in_room("lobby")).users] == ["alice"]
        assert {r.name for r in (await c.list_all_rooms()).rooms} == {"lobby", "games"}
        assert any(line.startswith("/join") for line in (await c.help()).commands)
        assert await c.ping() >= 0

        left = await c.leave()
        assert left.room == "games" and c.current_room == "lobby" and c.rooms == ("lobby",)

        await c.change_password("pw1", "pw2")
        bye = await c.quit()
        assert bye.code == "quit"

    async with connect(URLS[transport](server)) as c:
        with pytest.raises(UtuVoxError) as info:
            await c.login("alice", "pw1")
        assert info.value.code == "auth_failed"
        assert (await c.login("alice", "pw2")).user == "alice"


async def test_errors_carry_the_code_and_the_connection_survives(server: Server) -> None:
    async with connect(tcp_url(server)) as c:
        with pytest.raises(UtuVoxError) as info:
            await c.join("lobby")
        assert info.value.code == "not_logged_in" and "log in" in info.value.message
        await c.register("bob", "pw")
        with pytest.raises(UtuVoxError) as info:
            await c.join("nowhere")
        assert info.value.code == "no_such_room"
        with pytest.raises(UtuVoxError) as info:
            await c.msg("nobody", "hi")
        assert info.value.code == "no_such_user"
        with pytest.raises(UtuVoxError) as info:
            await c.message("into the void")
        assert info.value.code == "not_in_room"
        assert (await c.whoami()).user == "bob"


async def test_a_tcp_client_speaks_json_even_if_it_waits(server: Server) -> None:
    # The server tells JSON from text by the first byte within a short delay; the SDK speaks at once,
    # so a client that only makes its first request later is still a JSON client.
    async with connect(tcp_url(server)) as c:
        await trio.sleep(0.3)  # longer than the test server's detection delay
        assert (await c.whoami()).type == "you_are"


async def test_many_requests_in_flight_get_their_own_replies(server: Server) -> None:
    async with connect(ws_url(server)) as c:
        await c.register("carol", "pw")
        await c.create("busy")
        replies: dict[int, p.Ok] = {}

        async def say(i: int) -> None:
            replies[i] = await c.message(f"m{i}")

        async with trio.open_nursery() as nursery:
            for i in range(60):
                nursery.start_soon(say, i)
        assert sorted(r.seq for r in replies.values()) == list(range(2, 62))
        texts = {}
        for _ in range(60):
            event = await next_of(c, p.MessageEvent)
            texts[event.seq] = event.text
        # Each reply's seq is the seq of the message that request sent.
        assert all(texts[replies[i].seq] == f"m{i}" for i in range(60))


# --- events -------------------------------------------------------------------------------------


async def test_events_are_protocol_models(server: Server) -> None:
    async with connect(tcp_url(server)) as a, connect(ws_url(server)) as b:
        await a.register("ann", "pw")
        await b.register("ben", "pw", bot=True)
        await a.create("hall")
        await b.join("hall")
        join = await next_of(a, p.JoinEvent)
        assert join.user == "ben" and join.room == "hall"
        await b.message("hi ann")
        message = await next_of(a, p.MessageEvent)
        assert (message.user, message.text, message.room) == ("ben", "hi ann", "hall")
        await a.msg("ben", "psst")
        private = await next_of(b, p.PrivateMessage)
        assert (private.user, private.text) == ("ann", "psst")
        await b.leave("hall")
        leave = await next_of(a, p.LeaveEvent)
        assert leave.user == "ben"
        users = (await a.list_all_users()).users
        assert {u.name: u.is_bot for u in users} == {"ann": False, "ben": True}


async def test_text_mode_shows_bots(server: Server, connect_text: Any) -> None:
    async with connect(tcp_url(server)) as bot:
        await bot.register("robo", "pw", bot=True)
        person = await connect_text()
        await person.send("/register pat pw")
        await person.expect("Registration successful")
        await person.send("/list_all_users")
        line = await person.expect("Online users")
        assert line.endswith("Online users: pat, robo (bot)")
        await person.aclose()


async def test_events_end_when_the_server_goes_away(tmp_path: Path) -> None:
    async with restartable(tmp_path) as runner:
        assert runner.server is not None
        async with connect(tcp_url(runner.server)) as c:
            await c.register("dan", "pw")
            await runner.stop()
            seen = [event async for event in c]
            assert isinstance(seen[-1], p.Goodbye) and seen[-1].code == "shutdown"
            with pytest.raises(Disconnected):
                await c.whoami()


async def test_connecting_to_nothing_raises_oserror(tmp_path: Path) -> None:
    async with restartable(tmp_path) as runner:
        assert runner.server is not None
        port = runner.server.tcp_port
        await runner.stop()
    with pytest.raises(OSError):
        async with connect(f"tcp://127.0.0.1:{port}"):
            pass


# --- catching up --------------------------------------------------------------------------------


async def test_join_since_yields_the_gap_then_live_events(server: Server, monkeypatch: Any) -> None:
    # Small pages, so the gap takes several history requests.
    monkeypatch.setattr(client_rooms, "PAGE", 7)
    async with connect(tcp_url(server)) as writer:
        await writer.register("wri", "pw")
        await writer.create("log")
        for i in range(80):
            await writer.message(f"old {i}")
        async with connect(ws_url(server)) as reader:
            await reader.register("rea", "pw")
            joined = await reader.join("log", since=5)
            assert joined.room == "log" and reader.current_room == "log"
            await writer.message("live")
            seqs = []
            while not seqs or seqs[-1] < 83:
                event = await reader.next_event(TIMEOUT)
                seqs.append(event.seq)  # type: ignore[union-attr]
            # 6..81: the gap; 82: the reader's own join; 83: the live message.
            assert seqs == list(range(6, 84))
            assert reader.last_seq("log") == 83


async def test_reconnect_after_a_restart_loses_no_message(tmp_path: Path) -> None:
    async with restartable(tmp_path) as runner:
        assert runner.server is not None
        url = tcp_url(runner.server)
        options = {"reconnect": True, "retry_initial": 0.02, "retry_max": 0.2}
        states: list[str] = []
        async with connect(url, **options) as bot, connect(url, **options) as talker:
            bot.on_state.append(lambda state, _: states.append(state))
            await bot.register("bot", "pw", bot=True)
            await bot.create("lobby")
            await bot.create("side")  # the current room, to see it is still current afterwards
            await bot.change_password("pw", "pw2")  # the re-login must use the new password
            first_seq = bot.last_seq("lobby")
            await talker.register("talker", "pw")
            await talker.join("lobby")

            acked: list[str] = []
            stop = trio.Event()

            async def talk() -> None:
                i = 0
                while not stop.is_set():
                    text = f"n{i}"
                    i += 1
                    try:
                        await talker.message(text, room="lobby")
                    except Disconnected:
                        continue  # in flight as the server stopped: it may or may not be stored
                    acked.append(text)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(talk)
                with trio.fail_after(TIMEOUT):
                    while len(acked) < 20:
                        await trio.sleep(0.005)
                    await runner.restart()
                    mark = len(acked)
                    while len(acked) < mark + 20:
                        await trio.sleep(0.005)
                stop.set()
            received: list[p.MessageEvent] = []
            seqs: list[int] = []
            with trio.fail_after(TIMEOUT):
                async for event in bot:
                    if isinstance(event, p.RoomEvent) and event.room == "lobby":
                        seqs.append(event.seq)
                        if isinstance(event, p.MessageEvent):
                            received.append(event)
                    if set(acked) <= {m.text for m in received}:
                        break
                # The missed events may all be in before the client reports itself reconnected.
                while "reconnected" not in states:
                    await trio.sleep(0.01)
            assert states[:2] == ["disconnected", "reconnected"]
            # Every acknowledged message arrived, none twice, in order; and nothing stored is missing.
            assert seqs == sorted(set(seqs))
            stored = await all_seqs(talker, "lobby")
            assert seqs == [s for s in stored if first_seq < s <= seqs[-1]]
            assert [m.text for m in received if m.text in set(acked)] == acked
            assert bot.user == "bot" and bot.current_room == "side"
            assert (await bot.whereami()).rooms == ["lobby", "side"]



async def all_seqs(client: Client, room: str) -> list[int]:
    seqs: list[int] = []
    before = None
    while True:
        page = await client.history(room, before=before, limit=500)
        seqs = [e.seq for e in page.events] + seqs
        if not page.more or not page.events:
            return seqs
        before = page.events[0].seq


async def test_reconnect_over_websocket_rejoins_and_fills_the_gap(tmp_path: Path) -> None:
    async with restartable(tmp_path) as runner:
        assert runner.server is not None
        async with connect(ws_url(runner.server), reconnect=True, retry_initial=0.02, retry_max=0.2) as bot:
            await bot.register("wsbot", "pw", bot=True)
            await bot.create("den")
            server = await runner.restart()
            # Messages said while the bot may still be away: it must see them after it is back.
            async with open_ws(server.ws_port) as raw:
                await raw.request("register", username="other", password="pw")
                await raw.request("join", room="den")
                for i in range(3):
                    reply = await raw.request("message", text=f"while away {i}")
                    assert reply["type"] == "ok"
            texts = []
            while len(texts) < 3:
                event = await next_of(bot, p.MessageEvent)
                texts.append(event.text)
            assert texts == ["while away 0", "while away 1", "while away 2"]
            assert (await bot.whereami()).room == "den"


async def test_a_refused_login_on_reconnect_ends_the_client(tmp_path: Path) -> None:
    async with restartable(tmp_path) as runner:
        assert runner.server is not None
        url = tcp_url(runner.server)
        async with connect(url, reconnect=True, retry_initial=0.02) as c, connect(url) as other:
            await c.register("eve", "pw")
            # Another session changes the password: the reconnecting client's login will be refused.
            await other.login("eve", "pw")
            await other.change_password("pw", "new")
            await runner.restart()
            with pytest.raises(UtuVoxError) as info:
                with trio.fail_after(TIMEOUT):
                    async for _ in c:
                        pass
            assert info.value.code == "auth_failed"
            with pytest.raises(UtuVoxError):
                await c.whoami()


async def test_a_kicked_client_does_not_come_back(server: Server) -> None:
    key = server.settings.admin_key_path.read_text().strip()
    async with connect(tcp_url(server)) as admin, connect(ws_url(server), reconnect=True, retry_initial=0.02) as c:
        await admin.register("root", "pw", admin_key=key)
        await c.register("mallory", "pw")
        kicked = await admin.request(Kick(username="mallory", reason="flooding"))
        assert kicked.type == "kicked"
        with trio.fail_after(TIMEOUT):
            events = [e async for e in c]
        assert isinstance(events[-1], p.Goodbye) and events[-1].code == "kicked"
        with pytest.raises(Disconnected):
            await c.whoami()
        assert [u.name for u in (await admin.list_all_users()).users] == ["root"]


async def test_quit_does_not_reconnect(server: Server) -> None:
    async with connect(tcp_url(server), reconnect=True, retry_initial=0.02) as c:
        await c.register("fay", "pw")
        await c.quit()
        assert [e.type async for e in c] == ["bye"]
        with pytest.raises(Disconnected):
            await c.whoami()


# --- files --------------------------------------------------------------------------------------


async def test_upload_then_download_over_both_transports(server: Server, tmp_path: Path) -> None:
    data = bytes(range(256)) * 900  # several chunks, not a multiple of the chunk size
    source = tmp_path / "data.bin"
    source.write_bytes(data)
    async with connect(tcp_url(server)) as up, connect(ws_url(server)) as down:
        await up.register("ulla", "pw")
        await up.create("share")
        await down.register("dirk", "pw")
        await down.join("share")
        seen: list[tuple[int, int]] = []
        done = await up.upload("share", source, lambda n, total: seen.append((n, total)))
        assert (done.original, done.room, done.size) == ("data.bin", "share", len(data))
        assert seen[0] == (0, len(data)) and seen[-1] == (len(data), len(data))
        assert [n for n, _ in seen] == sorted(n for n, _ in seen)
        event = await next_of(down, p.FileEvent)
        assert (event.name, event.user) == (done.name, "ulla")
        assert [f.name for f in (await down.list_files()).files] == [done.name]

        first = await down.download(done.name, tmp_path / "in")
        second = await down.download(done.name, tmp_path / "in")
        assert first == tmp_path / "in" / "data.bin" and second == tmp_path / "in" / "data (1).bin"
        assert first.read_bytes() == data and second.read_bytes() == data
        assert sorted(x.name for x in (tmp_path / "in").iterdir()) == ["data (1).bin", "data.bin"]  # no temp left

        with pytest.raises(UtuVoxError) as info:
            await down.download("share_20000101_000000_nothing_00000000", tmp_path / "in")
        assert info.value.code == "no_such_file"
        with pytest.raises(UtuVoxError) as info:
            await down.upload("elsewhere", source)
        assert info.value.code in ("no_such_room", "not_in_room")
        assert (await down.whoami()).user == "dirk"  # the connection is still good


def test_safe_file_names() -> None:
    assert safe_file_name("report.pdf") == "report.pdf"
    assert safe_file_name("../../etc/passwd") == "_.._etc_passwd"
    assert safe_file_name("..") == "download" and safe_file_name("/") == "download"
    assert safe_file_name("a\x00b\x1b[2Jc\u202e.txt") == "a_b_[2Jc_.txt"
    assert safe_file_name("C:\\Windows\\evil.exe") == "C__Windows_evil.exe"
    assert safe_file_name(".hidden") == "hidden"
    assert len(safe_file_name("é" * 500).encode()) <= 200


class HostileServer:
    """Speaks just enough of the protocol to offer one download, under a name and with a digest of its
    choosing: what a compromised or buggy server could send."""

    def __init__(self, name: str, data: bytes, *, sha256: str | None = None, hold_back: bool = False) -> None:
        self.name, self.data = name, data
        self.sha256 = sha256 or hashlib.sha256(data).hexdigest()
        # With hold_back, the second half of the download goes out only with the answer to the next ping.
        self.hold_back = hold_back
        self.held: list[Any] = []

    async def handle(self, stream: trio.SocketStream) -> None:
        buf = b""
        while True:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return
            buf += chunk
            while b"\n" in buf:
                line, _, buf = buf.partition(b"\n")
                request = json.loads(line)
                for frame in self.answer(request):
                    await stream.send_all(json_codec.encode(frame))

    def answer(self, request: dict[str, Any]) -> list[Any]:
        rid = request.get("id")
        if request["type"] == "ping":
            held, self.held = self.held, []
            return [*held, p.Pong(re=rid)]
        if request["type"] != "download":
            return [p.Error(re=rid, code="not_supported", message="no")]
        half = len(self.data) // 2
        frames = [
            f.DownloadStart(re=rid, download_id="d1", name=self.name, original=self.name, room="r",
                            size=len(self.data), sha256=self.sha256, chunk_size=half or 1),
            p.MessageEvent(room="r", seq=1, user="x", text="interleaved"),
            f.DownloadChunk(download_id="d1", offset=0, data=f.encode_chunk(self.data[:half])),
            f.DownloadChunk(download_id="d1", offset=half, data=f.encode_chunk(self.data[half:])),
            f.DownloadEnd(download_id="d1", name=self.name, size=len(self.data)),
            p.MessageEvent(room="r", seq=2, user="x", text="after"),
        ]
        if self.hold_back:
            frames, self.held = frames[:3], frames[3:]
        return frames


@asynccontextmanager
async def hostile(name: str, data: bytes, **kwargs: Any) -> AsyncIterator[str]:
    fake = HostileServer(name, data, **kwargs)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, fake.handle, 0)
        yield f"tcp://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("name", ["../../escape.txt", "/etc/passwd", "..", "a\x00b", "dir/../../x", "\x1b[31mred"])
async def test_a_server_supplied_name_never_leaves_the_directory(tmp_path: Path, name: str) -> None:
    target = tmp_path / "a" / "b" / "downloads"
    async with hostile(name, b"payload") as url, connect(url) as c:
        path = await c.download("anything", target)
        event = await c.next_event(TIMEOUT)
    assert path.parent == target and path.read_bytes() == b"payload"
    assert list(target.iterdir()) == [path]
    assert sorted(x.name for x in tmp_path.rglob("*") if x.is_file()) == [path.name]
    assert isinstance(event, p.MessageEvent)  # frames between the chunks still reach the application


async def test_a_download_that_fails_its_check_leaves_nothing(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_bytes(b"mine")
    async with hostile("keep.txt", b"theirs", sha256="0" * 64) as url, connect(url) as c:
        with pytest.raises(UtuVoxError) as info:
            await c.download("keep.txt", tmp_path)
    assert info.value.code == "transfer_failed"
    assert [x.name for x in tmp_path.iterdir()] == ["keep.txt"] and (tmp_path / "keep.txt").read_bytes() == b"mine"


async def test_a_cancelled_download_leaks_nothing(tmp_path: Path) -> None:
    async with hostile("big.bin", b"x" * 1000, hold_back=True) as url, connect(url) as c:
        with trio.CancelScope() as scope:
            await c.download("big.bin", tmp_path, lambda done, _: scope.cancel() if done else None)
        assert scope.cancelled_caught
        await c.ping()  # the rest of the download arrives now, after it was given up
        texts = [(await c.next_event(TIMEOUT)).text, (await c.next_event(TIMEOUT)).text]  # type: ignore[union-attr]
        assert texts == ["interleaved", "after"]  # no chunk of the abandoned download in between
    assert list(tmp_path.iterdir()) == []


async def test_cancelled_uploads_are_dropped_by_the_server(server: Server, tmp_path: Path) -> None:
    source = tmp_path / "big.bin"
    source.write_bytes(b"y" * 1_000_000)  # many chunks: the cancel lands halfway
    async with connect(tcp_url(server)) as c:
        await c.register("cal", "pw")
        await c.create("uploads")
        # More cancelled uploads than the server lets one session have in progress: each must be dropped.
        for _ in range(6):
            with trio.CancelScope() as scope:
                await c.upload("uploads", source, lambda done, _: scope.cancel() if done else None)
            assert scope.cancelled_caught
        done = await c.upload("uploads", source)
        assert done.size == 1_000_000
        await c.ping()
        assert not [e for e in c.drain_events() if not isinstance(e, p.RoomEvent)]
