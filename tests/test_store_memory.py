"""What only the memory store promises: it never hands work to a thread, so tests of the chat rules
built on it stay on the event loop, where trio's MockClock drives every timeout."""

from __future__ import annotations

from typing import Any, NoReturn

import pytest
import trio
import trio.testing

from utuvox.store import MemoryStore

from .store_contract import commit, event


def test_the_memory_store_never_uses_a_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_threads(*_args: Any, **_kwargs: Any) -> NoReturn:
        raise AssertionError("the memory store started a thread")

    monkeypatch.setattr(trio.to_thread, "run_sync", no_threads)

    async def main() -> list[int]:
        store = await MemoryStore.open()
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            with trio.fail_after(1):
                room = await store.create_room("clockwork", None)
                seqs = [await commit(store, event(room.id)) for _ in range(3)]
                await store.add_private(ts=1.0, sender="a", recipient="b", body="{}")
                await store.flush()
                assert [e.seq for e in await store.history(room.id, before=None, limit=5)] == seqs
            nursery.cancel_scope.cancel()
        await store.close()
        return seqs

    assert trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0)) == [1, 2, 3]
