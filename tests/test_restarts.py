"""A server restart is not people leaving: ``utuvox serve`` stopped (SIGTERM or SIGKILL) and started again
stores no leave or join for the members whose clients come back, and whoever does not come back within
the rejoin grace is recorded as having left. A person who leaves while the server runs is recorded."""

from __future__ import annotations

import signal
from pathlib import Path

import trio

from utuvox.client import Client, connect
from utuvox.protocol import core as p

from .conftest import FAST_HASH
from .processes import serve, stop

TIMEOUT = 20
ENV = {f"UTUVOX_{k.upper()}": str(v) for k, v in FAST_HASH.items()}


async def members_history(port: int, room: str) -> list[tuple[str, str]]:
    """The joins and leaves of ``room``, as (type, user), but those of the observer that reads them."""
    async with connect(f"tcp://127.0.0.1:{port}") as observer:
        await observer.sign_in("observer", "pw", register=True)
        joined = await observer.join(room)
        await observer.leave(room)
    return [(e.type, e.user) for e in joined.history
            if isinstance(e, p.JoinEvent | p.LeaveEvent) and e.user != "observer"]


async def wait_reconnected(client: Client, seen: list[str], count: int) -> None:
    with trio.fail_after(TIMEOUT):
        while seen.count("reconnected") < count:
            await trio.sleep(0.02)


async def test_restarts_store_no_leaves_or_joins_and_real_leaves_are_kept(tmp_path: Path) -> None:
    first = await serve(tmp_path, env=ENV)
    ports = ["--port", str(first.port), "--ws-port", str(first.ws_port)]
    url = f"tcp://127.0.0.1:{first.port}"
    states: dict[str, list[str]] = {"ann": [], "ben": []}
    proc = first.proc
    try:
        async with connect(url, reconnect=True, retry_initial=0.05, retry_max=0.3,
                           on_state=lambda s, _: states["ann"].append(s)) as ann, \
                connect(url, reconnect=True, retry_initial=0.05, retry_max=0.3,
                        on_state=lambda s, _: states["ben"].append(s)) as ben:
            await ann.sign_in("ann", "pw", register=True)
            await ben.sign_in("ben", "pw", register=True)
            await ann.create("hall")
            await ben.join("hall")
            assert await members_history(first.port, "hall") == [("join", "ann"), ("join", "ben")]
            with trio.fail_after(TIMEOUT):
                while not any(isinstance(e, p.LeaveEvent) for e in ann.drain_events()):
                    await trio.sleep(0.02)  # up to the observer's leave
            ben.drain_events()

            # SIGTERM then SIGKILL: both clients come back each time, and nothing is stored about it.
            for n, sig in enumerate((signal.SIGTERM, signal.SIGKILL), start=1):
                await stop(proc, sig)
                proc = (await serve(tmp_path, *ports, env=ENV)).proc
                await wait_reconnected(ann, states["ann"], n)
                await wait_reconnected(ben, states["ben"], n)
            assert await members_history(first.port, "hall") == [("join", "ann"), ("join", "ben")]
            assert ann.rooms == ("hall",) and ben.rooms == ("hall",)
            # Nobody saw anyone come or go: the only events are the observer's.
            for client in (ann, ben):
                assert {e.user for e in client.drain_events() if isinstance(e, p.JoinEvent | p.LeaveEvent)} \
                    <= {"observer"}

            # A person leaving, and coming back, is recorded as ever, right after a restart too.
            await ben.leave("hall")
            await ben.join("hall")
            history = await members_history(first.port, "hall")
            assert history == [("join", "ann"), ("join", "ben"), ("leave", "ben"), ("join", "ben")]
    finally:
        await stop(proc)


async def test_who_does_not_come_back_within_the_grace_is_recorded_as_leaving(tmp_path: Path) -> None:
    env = {**ENV, "UTUVOX_REJOIN_GRACE": "1"}
    first = await serve(tmp_path, env=env)
    url = f"tcp://127.0.0.1:{first.port}"
    seen: list[str] = []
    async with connect(url) as gone:
        await gone.sign_in("gone", "pw", register=True)
        await gone.create("hall")
    # gone quit while the server ran: recorded. Now stay, stop the server, and never come back.
    async with connect(url, reconnect=True, retry_initial=0.05, retry_max=0.3,
                       on_state=lambda s, _: seen.append(s)) as stays, connect(url) as leaves:
        await stays.sign_in("stays", "pw", register=True)
        await stays.join("hall")
        await leaves.sign_in("leaves", "pw", register=True)
        await leaves.join("hall")
        await stop(first.proc)
        again = await serve(tmp_path, "--port", str(first.port), "--ws-port", str(first.ws_port), env=env)
        try:
            await wait_reconnected(stays, seen, 1)
            with trio.fail_after(TIMEOUT):
                while ("leave", "leaves") not in (history := await members_history(first.port, "hall")):
                    await trio.sleep(0.3)
            assert history == [("join", "gone"), ("leave", "gone"), ("join", "stays"), ("join", "leaves"),
                               ("leave", "leaves")]
        finally:
            await stop(again.proc)
