"""Two ``utuvox serve`` nodes on one PostgreSQL database and one broker (Redis or NATS), as real processes.

Each test has its own database (dropped afterwards) and its own ``--cluster-name``, so runs sharing the
machine's Redis and NATS never hear each other.
"""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from pydantic import ValidationError

from utuvox.client import connect
from utuvox.client.errors import Disconnected
from utuvox.protocol import core as p
from utuvox.server.settings import Settings

from .clients import JsonLines
from .databases import fresh_database
from .processes import Serving, serve, stop
from .test_irc import RawIrc

REDIS = "redis://127.0.0.1:6379/0"
NATS = "nats://127.0.0.1:4222"
TIMEOUT = 10
# Fast password hashing; a node taken for dead two seconds after it falls silent (15 by default); login
# delays after the second failure on an account.
ENV = {"UTUVOX_ARGON2_MEMORY_KIB": "1024", "UTUVOX_ARGON2_TIME_COST": "1",
       "UTUVOX_HEARTBEAT_INTERVAL": "0.5", "UTUVOX_NODE_EXPIRY": "2", "UTUVOX_LOGIN_FREE_FAILURES": "2"}


@asynccontextmanager
async def two_nodes(tmp_path: Path, broker: str = REDIS) -> AsyncIterator[list[Serving]]:
    cluster = f"test-{secrets.token_hex(4)}"
    with fresh_database() as url:
        nodes: list[Serving] = []

        async def start(i: int) -> None:
            nodes.append(await serve(tmp_path / f"node{i}", "--database-url", url, "--broker-url", broker,
                                     "--node-name", f"node{i}", "--cluster-name", cluster,
                                     "--uploads-dir", str(tmp_path / "uploads"), env=ENV))

        try:
            async with trio.open_nursery() as nursery:  # both at once: migrations under the advisory lock
                for i in (1, 2):
                    nursery.start_soon(start, i)
            # The key is the cluster's, in the database: one node printed it; `utuvox admin-key` reads it.
            shown = await trio.run_process([sys.executable, "-m", "utuvox", "admin-key", "--database-url", url],
                                           capture_stdout=True, stdin=subprocess.DEVNULL)
            key = shown.stdout.decode().strip()
            assert len(key) > 16
            nodes[:] = [n._replace(admin_key=key) for n in nodes]
            names = [await node_name(n) for n in nodes]
            yield [n for _, n in sorted(zip(names, nodes, strict=True))]
        finally:
            for node in nodes:
                if node.proc.returncode is None:
                    await stop(node.proc)


async def node_name(node: Serving) -> str:
    c = await JsonLines.connect(node.port)
    await c.request("register", username=f"probe{secrets.token_hex(3)}", password="pw", admin_key=node.admin_key)
    reply = await c.request("stats")
    await c.aclose()
    return reply["node"]


async def login(node: Serving, name: str, *, register: bool = False, admin: bool = False) -> JsonLines:
    c = await JsonLines.connect(node.port)
    fields: dict[str, Any] = {"admin_key": node.admin_key} if admin else {}
    reply = await c.request("register" if register else "login", username=name, password="pw", **fields)
    assert reply["type"] == "logged_in", reply
    return c


async def until_listed(c: JsonLines, room: str, users: list[str]) -> None:
    """Presence travels over the broker: ask until the room lists exactly ``users``."""
    with trio.fail_after(TIMEOUT):
        while True:
            reply = await c.request("list_users_in_room", room=room)
            if [u["name"] for u in reply["users"]] == users:
                return
            await trio.sleep(0.05)


async def test_two_nodes_share_accounts_rooms_presence_and_one_order(tmp_path: Path) -> None:
    async with two_nodes(tmp_path) as (one, two):
        # One key for the whole cluster, in the database (two_nodes reads it with `utuvox admin-key`).
        assert one.admin_key == two.admin_key
        alice = await login(one, "alice", register=True)
        bob = await login(two, "bob", register=True)
        alice_too = await login(two, "alice")  # registered on node 1, logs in on node 2
        assert (await alice.request("create", room="lobby"))["created"]
        joined = await bob.request("join", room="lobby")  # created on node 1, joined on node 2
        assert [e["user"] for e in joined["history"]] == ["alice", "bob"] and joined["last_seq"] == 2
        await alice.recv_until(lambda f: f.get("type") == "join" and f["user"] == "bob")
        for c in (alice, bob):
            await until_listed(c, "lobby", ["alice", "bob"])

        # Pipelined messages from both nodes at once: one order, the same on both nodes.
        n = 150
        seen: dict[str, list[tuple[int, str, str]]] = {}
        acks: dict[str, dict[str, int]] = {}

        async def talk_and_listen(c: JsonLines, me: str) -> None:
            await c.send(b"".join(json.dumps({"type": "message", "id": f"{me}{i}", "room": "lobby",
                                              "text": f"{me} {i}"}).encode() + b"\n" for i in range(n)))
            events: list[tuple[int, str, str]] = []
            mine: dict[str, int] = {}
            with trio.fail_after(TIMEOUT):
                while len(events) < 2 * n or len(mine) < n:
                    frame = await c.recv()
                    if frame["type"] == "message":
                        events.append((frame["seq"], frame["user"], frame["text"]))
                    elif frame["type"] == "ok":
                        # A session reads its own writes: its echo came before its ok.
                        assert (frame["seq"], me, f"{me} {frame['re'][len(me):]}") in events
                        mine[frame["re"]] = frame["seq"]
                    else:
                        raise AssertionError(frame)
            seen[me], acks[me] = events, mine

        async with trio.open_nursery() as nursery:
            nursery.start_soon(talk_and_listen, alice, "alice")
            nursery.start_soon(talk_and_listen, bob, "bob")
        assert seen["alice"] == seen["bob"]
        assert [seq for seq, _, _ in seen["alice"]] == list(range(3, 3 + 2 * n))
        for me in ("alice", "bob"):  # each sender's messages in the order sent
            assert [t for _, u, t in seen["alice"] if u == me] == [f"{me} {i}" for i in range(n)]
        history = [[(e["seq"], e["user"], e.get("text")) for e in (await c.request("history", room="lobby",
                                                                                 limit=500))["events"]]
                   for c in (alice, bob)]
        assert history[0] == history[1] == [(1, "alice", None), (2, "bob", None), *seen["alice"]]

        # A second session of alice, on the other node, is not a second join.
        await alice_too.request("join", room="lobby")
        await alice_too.request("message", room="lobby", text="from alice's second session")
        frame = await bob.recv()
        assert (frame["type"], frame["text"]) == ("message", "from alice's second session"), frame
        await until_listed(bob, "lobby", ["alice", "bob"])
        assert [u["name"] for u in (await alice.request("list_all_users"))["users"]] == ["alice", "bob"]

        # The operators see every session of every node, with its node.
        admin = await login(one, "root", register=True, admin=True)
        who = (await admin.request("who"))["sessions"]
        assert sorted((s["user"], s["node"]) for s in who if s["user"] in ("alice", "bob")) == [
            ("alice", "node1"), ("alice", "node2"), ("bob", "node2")]
        stats = await admin.request("stats")
        assert stats["node"] == "node1" and stats["nodes"] == ["node1", "node2"]

        # A private message crosses nodes; a ban on node 1 ends bob's session on node 2 at once.
        assert (await alice.request("msg", to="bob", text="psst"))["type"] == "ok"
        frame = await bob.recv()
        assert (frame["type"], frame["user"], frame["text"]) == ("msg", "alice", "psst")
        assert (await admin.request("ban_user", username="bob", reason="spam"))["type"] == "ok"
        bye = await bob.recv_until(lambda f: f["type"] == "bye")
        assert bye["code"] == "banned"
        assert await bob.closed()
        leave = await alice.recv_until(lambda f: f["type"] == "leave")
        assert leave["user"] == "bob"
        refused = await (await JsonLines.connect(two.port)).request("login", username="bob", password="pw")
        assert refused["code"] == "banned"
        for c in (alice, alice_too, admin):
            await c.aclose()


async def test_nats_carries_doorbells_presence_kicks_and_the_admin_key(tmp_path: Path) -> None:
    async with two_nodes(tmp_path, NATS) as (one, two):
        ann = await login(one, "ann", register=True, admin=True)
        ben = await login(two, "ben", register=True)
        await ann.request("create", room="hall")
        await ben.request("join", room="hall")
        await until_listed(ann, "hall", ["ann", "ben"])
        await ann.request("message", room="hall", text="hello from node 1")
        frame = await ben.recv_until(lambda f: f["type"] == "message")
        assert (frame["seq"], frame["text"]) == (3, "hello from node 1")
        # A room deleted on node 1 is gone on node 2 for its members there.
        await ann.request("create", room="brief")
        await ben.request("join", room="brief")
        assert (await ann.request("delete_room", room="brief"))["type"] == "ok"
        deleted = await ben.recv_until(lambda f: f["type"] == "room_deleted")
        assert deleted["room"] == "brief"
        assert (await ben.request("join", room="brief"))["code"] == "no_such_room"
        # The admin key changed on node 1 is the key on node 2.
        assert (await ann.request("change_admin_key", new_key="a-new-key-for-all"))["type"] == "ok"
        with trio.fail_after(TIMEOUT):
            while True:
                c = await JsonLines.connect(two.port)
                reply = await c.request("register", username=f"r{secrets.token_hex(3)}", password="pw",
                                        admin_key="a-new-key-for-all")
                await c.aclose()
                if reply["type"] == "logged_in":
                    break
                await trio.sleep(0.05)
        # Failed logins on node 1 delay the account's logins on node 2 (messages from one node arrive in the
        # order sent: once ben has ann's private message, node 2 has heard of the failures before it).
        await (await login(one, "carol", register=True)).aclose()
        guesser = await JsonLines.connect(one.port)
        for _ in range(3):
            assert (await guesser.request("login", username="carol", password="guess"))["code"] == "auth_failed"
        await ann.request("msg", to="ben", text="after the guesses")
        await ben.recv_until(lambda f: f["type"] == "msg")
        carol = await JsonLines.connect(two.port)
        assert (await carol.request("login", username="carol", password="pw"))["code"] == "rate_limited"
        for c in (guesser, carol):
            await c.aclose()
        # A kick on node 1 of a user on node 2 (from a second session: the first must not skip the leave).
        console = await login(one, "ann")
        kicked = await console.request("kick", username="ben")
        await console.aclose()
        assert kicked["count"] == 1
        assert (await ben.recv_until(lambda f: f["type"] == "bye"))["code"] == "kicked"
        await ann.recv_until(lambda f: f["type"] == "leave" and f["user"] == "ben")
        await ann.aclose()


async def balancer(listener: trio.SocketListener, backends: list[int], nursery: trio.Nursery) -> None:
    """A TCP load balancer as small as can be: each connection goes to the first backend that answers."""

    async def pipe(source: trio.abc.Stream, sink: trio.abc.Stream) -> None:
        try:
            while data := await source.receive_some(65536):
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            await trio.aclose_forcefully(sink)

    async def handle(client: trio.SocketStream) -> None:
        for port in backends:
            try:
                backend = await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                continue
            async with trio.open_nursery() as inner:
                inner.start_soon(pipe, client, backend)
                inner.start_soon(pipe, backend, client)
            return
        await client.aclose()

    await trio.serve_listeners(handle, [listener], handler_nursery=nursery)


async def test_a_killed_node_loses_no_acknowledged_message_and_clients_resume_on_the_other(tmp_path: Path) -> None:
    async with two_nodes(tmp_path) as (one, two), trio.open_nursery() as nursery:
        listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
        nursery.start_soon(balancer, listener, [one.port, two.port], nursery)
        front = f"tcp://127.0.0.1:{listener.socket.getsockname()[1]}"
        options: dict[str, Any] = {"reconnect": True, "retry_initial": 0.05, "retry_max": 0.2}
        states: list[str] = []
        async with connect(front, **options) as reader, connect(front, **options) as talker, \
                connect(f"tcp://127.0.0.1:{two.port}") as steady:
            reader.on_state.append(lambda state, _: states.append(state))
            await reader.register("reader", "pw")
            await reader.create("lobby")
            first = reader.last_seq("lobby")
            await talker.register("talker", "pw")
            await talker.join("lobby")
            await steady.register("steady", "pw")
            await steady.join("lobby")
            acked: list[str] = []
            stop_talking = trio.Event()

            async def talk(client: Any, me: str) -> None:
                i = 0
                while not stop_talking.is_set():
                    i += 1
                    try:
                        await client.message(f"{me} {i}", room="lobby")
                    except Disconnected:
                        continue  # in flight as the node died: it may or may not be stored
                    acked.append(f"{me} {i}")

            async with trio.open_nursery() as talkers:
                talkers.start_soon(talk, talker, "talker")  # on node 1, then node 2
                talkers.start_soon(talk, steady, "steady")  # on node 2 all along
                with trio.fail_after(TIMEOUT):
                    while sum(1 for a in acked if a.startswith("talker")) < 30:
                        await trio.sleep(0.005)
                    one.proc.send_signal(signal.SIGKILL)  # under load
                    await one.proc.wait()
                    mark = len(acked)
                    while len(acked) < mark + 60 or "reconnected" not in states:
                        await trio.sleep(0.005)
                stop_talking.set()
            assert states[:2] == ["disconnected", "reconnected"]
            received: list[p.MessageEvent] = []
            seqs: list[int] = []
            with trio.fail_after(TIMEOUT):
                async for event in reader:
                    if isinstance(event, p.RoomEvent) and event.room == "lobby":
                        seqs.append(event.seq)
                        if isinstance(event, p.MessageEvent):
                            received.append(event)
                    if set(acked) <= {m.text for m in received}:
                        break
            # Every acknowledged message is in the history, which has no gap; the reader got each event
            # once, in order, with no gap across the move from the dead node to the living one.
            history = await all_events(steady, "lobby")
            stored = [e.seq for e in history]
            assert stored == list(range(1, stored[-1] + 1))
            assert set(acked) <= {e.text for e in history if isinstance(e, p.MessageEvent)}
            assert seqs == [s for s in stored if first < s <= seqs[-1]]
            # The dead node's sessions leave node 2's presence once its heartbeats stop; each user is
            # listed once, whatever node they are on.
            admin = await login(two, "root", register=True, admin=True)
            with trio.fail_after(TIMEOUT):
                while any(s["node"] != "node2" for s in (await admin.request("who"))["sessions"]):
                    await trio.sleep(0.05)
            assert [u.name for u in (await steady.list_users_in_room("lobby")).users] == ["reader", "steady", "talker"]
            await admin.aclose()
        nursery.cancel_scope.cancel()


async def all_events(client: Any, room: str) -> list[Any]:
    events: list[Any] = []
    before = None
    while True:
        page = await client.history(room, before=before, limit=500)
        events = page.events + events
        if not page.more or not page.events:
            return events
        before = page.events[0].seq


async def test_wrong_cluster_settings_are_refused_with_a_clear_error(tmp_path: Path) -> None:
    async def refused(*args: str) -> tuple[int, str]:
        result = await trio.run_process(
            [sys.executable, "-m", "utuvox", "serve", "--port", "0", "--ws-port", "0", "--data-dir", str(tmp_path),
             *args], capture_stdout=True, capture_stderr=True, check=False, stdin=subprocess.DEVNULL)
        assert b"Server started" not in result.stdout
        return result.returncode, result.stderr.decode()

    code, err = await refused("--broker-url", REDIS)
    assert code == 1 and "give --database-url too" in err
    for bad, says in [({"database_url": "mysql://db/chat"}, "must start with postgresql://"),
                      ({"broker_url": "amqp://mq"}, "must start with redis:// or nats://"),
                      ({"cluster_name": "two words"}, "cluster name may hold only")]:
        with pytest.raises(ValidationError, match=says):
            Settings(**bad)  # type: ignore[arg-type]
    code, err = await refused("--database-url", "postgresql://postgres@127.0.0.1:1/utuvox")
    assert code == 1 and "cannot connect to PostgreSQL" in err
    with fresh_database() as url:
        code, err = await refused("--database-url", url, "--broker-url", "redis://127.0.0.1:1/0")
    assert code == 1 and "cannot reach the broker" in err


async def test_topics_and_irc_private_messages_cross_nodes(tmp_path: Path) -> None:
    async with two_nodes(tmp_path) as (one, two):
        alice = await login(one, "alice", register=True)
        assert (await alice.request("create", room="lobby"))["type"] == "joined"
        await login(one, "bob", register=True)
        bob = RawIrc(await trio.open_tcp_stream("127.0.0.1", two.irc_port))
        assert " 001 " in await bob.register("bob", "PASS bob:pw")
        await bob.send("JOIN #lobby")
        await bob.expect(" 366 ")  # end of NAMES: in the room
        # A topic set on one node reaches the members on the other, and the room there keeps it.
        assert (await alice.request("topic", room="lobby", text="cross-node"))["type"] == "ok"
        assert (await bob.expect(" TOPIC #lobby ")).endswith(" cross-node")
        await bob.send("TOPIC #lobby")
        assert (await bob.expect(" 332 ")).endswith(" cross-node")
        # An IRC user writes privately to a JSON user on the other node, by account name.
        await until_listed(alice, "lobby", ["alice", "bob"])
        await bob.send("PRIVMSG alice :psst, over here")
        frame = await alice.recv_until(lambda f: f.get("type") == "msg")
        assert (frame["user"], frame["to"], frame["text"]) == ("bob", "alice", "psst, over here")
        # Nicks are one namespace across the nodes: a nick an account uses on one node, or a guest's,
        # cannot be taken on the other.
        await bob.send("NICK bobby")
        await bob.expect(" NICK bobby")
        await bob.send("PRIVMSG alice :renamed")  # after the nick, through the same broker: node one knows it
        await alice.recv_until(lambda f: f.get("type") == "msg" and f.get("text") == "renamed")
        guest = RawIrc(await trio.open_tcp_stream("127.0.0.1", one.irc_port))
        assert " 433 " in await guest.register("bobby")
        assert " 001 " in await guest.register("wanderer")
        await guest.send("PRIVMSG bob :hello from a guest")
        await bob.expect("hello from a guest")
        other = RawIrc(await trio.open_tcp_stream("127.0.0.1", two.irc_port))
        assert " 433 " in await other.register("wanderer")
        assert " 001 " in await other.register("roamer")
