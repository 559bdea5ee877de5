"""The store's writer thread: jobs run on one thread, in order, their results and errors come back to the
caller, a cancelled caller still sees its job through, and the thread ends with the task that owns it."""

from __future__ import annotations

import os
import threading

import pytest
import trio

from utuvox.store.writer_thread import WriterThread


async def test_jobs_run_in_order_on_one_thread_and_answer_their_caller() -> None:
    writer = WriterThread("test-writer")
    seen: list[tuple[int, int]] = []

    def job(i: int) -> int:
        seen.append((i, threading.get_ident()))
        return i * 10

    async with writer.started():
        assert writer.running
        results = [await writer.run(job, i) for i in range(5)]
    assert results == [0, 10, 20, 30, 40]
    assert [i for i, _ in seen] == [0, 1, 2, 3, 4]
    threads = {ident for _, ident in seen}
    assert len(threads) == 1 and threading.get_ident() not in threads


async def test_an_error_on_the_thread_is_raised_to_the_caller() -> None:
    writer = WriterThread("test-writer")

    def fails() -> None:
        raise ValueError("disk on fire")

    async with writer.started():
        with pytest.raises(ValueError, match="disk on fire"):
            await writer.run(fails)
        assert await writer.run(lambda: "still working") == "still working"


async def test_a_cancelled_caller_waits_for_its_job_to_finish() -> None:
    writer = WriterThread("test-writer")
    started, release = threading.Event(), threading.Event()
    finished: list[bool] = []
    got: list[str] = []

    def slow() -> str:
        started.set()
        release.wait(10)
        finished.append(True)
        return "done"

    async with writer.started(), trio.open_nursery() as nursery:
        scope = trio.CancelScope()

        async def call() -> None:
            with scope:
                got.append(await writer.run(slow))

        nursery.start_soon(call)
        await trio.to_thread.run_sync(started.wait)
        scope.cancel()  # the caller is cancelled while its job runs...
        await trio.sleep(0.05)
        assert finished == [] and got == []  # ... and still waits for it
        release.set()
    assert finished == [True]
    assert got == ["done"]


async def test_the_thread_ends_with_its_owner() -> None:
    writer = WriterThread("test-writer-ends")
    async with writer.started():
        assert any(t.name == "test-writer-ends" for t in threading.enumerate())
    assert not writer.running
    assert not any(t.name == "test-writer-ends" for t in threading.enumerate())


async def test_a_niced_thread_runs_its_jobs_at_that_priority_and_the_loop_keeps_its_own() -> None:
    writer = WriterThread("test-checkpoints", nice=7)
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    async with writer.started():
        niceness = await writer.run(lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
    assert niceness == 7 or (base > 7 and niceness == base)  # (a thread may not lower its priority)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base
