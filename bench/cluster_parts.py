"""``python -m bench.cluster_parts``: the parts of a cluster on their own, beside SQLite.

- commit: events committed per second through the store's group commit (SQLite; PostgreSQL with one
  writer; PostgreSQL with two writers, as two nodes, on the same rooms, numbering inside the commit);
- catch-up: the read a node makes when a doorbell rings (the last 50 events of a room), p50 and p99;
- broker: doorbells per second through Redis and NATS from trio (the one-thread bridge), and the round
  trip of one doorbell, p50.

Needs PostgreSQL, Redis and NATS on their usual ports (``UTUVOX_TEST_POSTGRES`` for another PostgreSQL).
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
import trio

from utuvox.cluster.broker import open_broker
from utuvox.store import SqliteStore, StoredEvent
from utuvox.store.interface import SEQ_PLACEHOLDER
from utuvox.store.postgres import PostgresStore

ADMIN_URL = os.environ.get("UTUVOX_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
BODY = '{"type":"message","ts":"2026-12-02T12:00:00.000000Z","room":"r"' + SEQ_PLACEHOLDER + \
    '"user":"bench","text":"' + "x" * 32 + '"}'


async def _commit(stores: list[Any], rooms: list[int], events: int) -> tuple[float, int]:
    """Events per second committed by ``stores`` together (each submits ``events`` spread over ``rooms``)."""
    remaining = events * len(stores)
    done = trio.Event()

    def on_commit(_seq: int, error: BaseException | None) -> None:
        nonlocal remaining
        assert error is None, error
        remaining -= 1
        if remaining == 0:
            done.set()

    async def feed(store: Any) -> None:
        for i in range(events):
            if store.backlogged:
                await store.wait_for_room()
            store.submit_event(StoredEvent(rooms[i % len(rooms)], 0, time.time(), "message", "bench", BODY),
                               on_commit)
            if i % 100 == 99:
                await trio.sleep(0)  # let commits run while feeding, as sessions would

    commits = sum(s.commits for s in stores)
    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for store in stores:
            nursery.start_soon(feed, store)
    await done.wait()
    elapsed = time.perf_counter() - start
    return events * len(stores) / elapsed, sum(s.commits for s in stores) - commits


async def _catch_up(store: Any, room: int, repeat: int) -> tuple[float, float]:
    last = await store.last_seq(room)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        rows = await store.events_after(room, last - 50, 50)
        times.append(time.perf_counter() - t)
        assert len(rows) == 50
    times.sort()
    return statistics.median(times) * 1000, times[int(len(times) * 0.99)] * 1000


async def _broker(url: str, count: int) -> tuple[float, float]:
    broker = open_broker(url, f"bench-{secrets.token_hex(4)}.events")
    got = 0
    done = trio.Event()
    arrived = trio.Event()

    def on_message(_data: bytes) -> None:
        nonlocal got
        got += 1
        arrived.set()
        if got == count:
            done.set()

    async with trio.open_nursery() as nursery:
        await nursery.start(broker.run, on_message, lambda: None)
        start = time.perf_counter()
        for i in range(count):
            broker.publish(b'{"node":"bench","kind":"doorbell","rooms":[[1,"r",%d]]}' % i)
        await done.wait()
        rate = count / (time.perf_counter() - start)
        trips = []
        for _ in range(200):
            arrived = trio.Event()
            t = time.perf_counter()
            broker.publish(b"{}")
            await arrived.wait()
            trips.append(time.perf_counter() - t)
        nursery.cancel_scope.cancel()
    return rate, statistics.median(trips) * 1000


async def _in_nursery(store: Any, nursery: trio.Nursery) -> Any:
    await nursery.start(store.run)
    return store


async def main(events: int, rooms: int) -> None:
    print(f"{'what':<58} {'figure':>14}")
    with tempfile.TemporaryDirectory() as tmp:
        async with trio.open_nursery() as nursery:
            sqlite = await _in_nursery(await SqliteStore.open(Path(tmp) / "db"), nursery)
            ids = [(await sqlite.create_room(f"r{i}", None)).id for i in range(rooms)]
            rate, commits = await _commit([sqlite], ids, events)
            print(f"{'commit, SQLite, one writer':<58} {rate:>10,.0f} ev/s  ({events / commits:.0f} per commit)")
            p50, p99 = await _catch_up(sqlite, ids[0], 500)
            print(f"{'catch-up read (last 50 events), SQLite':<58} {p50:>9.2f} ms p50, {p99:.2f} ms p99")
            nursery.cancel_scope.cancel()
        await sqlite.close()

    name = f"utuvox_bench_{secrets.token_hex(4)}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")  # type: ignore[arg-type]
    url = ADMIN_URL.rpartition("/")[0] + "/" + name
    try:
        async with trio.open_nursery() as nursery:
            one = await _in_nursery(await PostgresStore.open(url), nursery)
            two = await _in_nursery(await PostgresStore.open(url), nursery)
            ids = [(await one.create_room(f"r{i}", None)).id for i in range(rooms)]
            rate, commits = await _commit([one], ids, events)
            print(f"{'commit, PostgreSQL, one node':<58} {rate:>10,.0f} ev/s  ({events / commits:.0f} per commit)")
            rate, commits = await _commit([one, two], ids, events)
            print(f"{'commit, PostgreSQL, two nodes writing the same rooms':<58} {rate:>10,.0f} ev/s  "
                  f"({2 * events / commits:.0f} per commit)")
            p50, p99 = await _catch_up(one, ids[0], 500)
            print(f"{'catch-up read (last 50 events), PostgreSQL':<58} {p50:>9.2f} ms p50, {p99:.2f} ms p99")
            nursery.cancel_scope.cancel()
        await one.close()
        await two.close()
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")  # type: ignore[arg-type]

    for label, url in (("Redis", "redis://127.0.0.1:6379/0"), ("NATS", "nats://127.0.0.1:4222")):
        rate, trip = await _broker(url, 20_000)
        print(f"{'doorbells through ' + label + ' (publish to delivery in trio)':<58} {rate:>10,.0f} msg/s, "
              f"round trip {trip:.2f} ms p50")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.cluster_parts", description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000, help="events each writer commits")
    parser.add_argument("--rooms", type=int, default=10, help="rooms the events are spread over")
    args = parser.parse_args()
    trio.run(main, args.events, args.rooms)
