"""The engines the store contract runs against, each able to open a store, run it and, for the durable
ones, open the same data again."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import trio

from utuvox.store import MemoryStore, SqliteStore, StoredEvent
from utuvox.store.interface import SEQ_PLACEHOLDER
from utuvox.store.postgres import PostgresStore

from .databases import fresh_database

ENGINES = ["memory", "sqlite", "postgres"]


class Engine:
    """One engine's way to open a store on the same data, again and again."""

    def __init__(self, name: str, opener: Callable[..., Any], *, durable: bool) -> None:
        self.name = name
        self.durable = durable
        self._opener = opener

    @asynccontextmanager
    async def running(self, **kwargs: Any) -> AsyncIterator[Any]:
        """An open store whose committer runs; closed on exit."""
        store = await self._opener(**kwargs)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(store.run)
                yield store
                nursery.cancel_scope.cancel()
        finally:
            await store.close()


@contextmanager
def engine(name: str, tmp_path: Path) -> Iterator[Engine]:
    if name == "memory":
        yield Engine(name, MemoryStore.open, durable=False)
    elif name == "sqlite":
        path = tmp_path / "utuvox_db.db"
        yield Engine(name, lambda **kwargs: SqliteStore.open(path, **kwargs), durable=True)
    else:
        with fresh_database() as url:
            yield Engine(name, lambda **kwargs: PostgresStore.open(url, **kwargs), durable=True)


def event(room_id: int, text: str = "x", *, ts: float = 1767225600.0, version: int = 1) -> StoredEvent:
    """A room event as the chat layer submits it: made with ``seq=0``."""
    body = f'{{"type":"message"{SEQ_PLACEHOLDER}"text":"{text}"}}'
    return StoredEvent(room_id, 0, ts, "message", "bob", body, version)


Outcomes = dict[int, tuple[int, BaseException | None]]


def recorder(outcomes: Outcomes, expected: int, done: trio.Event, order: list[int] | None = None
             ) -> Callable[[int], Callable[[int, BaseException | None], None]]:
    """``recorder(key)`` is a commit callback that records its outcome under ``key``."""
    def make(key: int) -> Callable[[int, BaseException | None], None]:
        def on_commit(seq: int, error: BaseException | None) -> None:
            outcomes[key] = (seq, error)
            if order is not None:
                order.append(key)
            if len(outcomes) == expected:
                done.set()
        return on_commit
    return make


async def commit(store: Any, stored: StoredEvent) -> int:
    """Submit one event and return its number once it is committed."""
    outcomes: Outcomes = {}
    done = trio.Event()
    store.submit_event(stored, recorder(outcomes, 1, done)(0))
    with trio.fail_after(10):
        await done.wait()
    seq, error = outcomes[0]
    if error is not None:
        raise error
    return seq
