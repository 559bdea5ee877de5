"""The broker between nodes: Redis pub/sub (``redis://``) or NATS (``nats://``), one channel per cluster.

Both clients run on one dedicated asyncio thread (redis-py's asyncio client, nats-py): trio has no
native NATS client, and one bridge for both engines keeps them alike. From trio, :meth:`publish` only
hands bytes to that thread (it never blocks the event loop); one publisher task sends them in order, many
at a time. What arrives is handed back to trio in order with ``run_sync_soon``.

The broker is a doorbell: a message lost while a broker restarts costs nothing but a delay, because
every node reads what it missed from the database (see utuvox.cluster.node).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import urlsplit

import trio

log = logging.getLogger("utuvox.cluster")

RECONNECT_DELAY = 0.5  # seconds between attempts to reach a broker that went away


class BrokerError(Exception):
    """The broker URL is wrong, or the broker cannot be reached at start."""


class Broker(Protocol):
    channel: str

    def publish(self, data: bytes) -> None:
        """Send ``data`` to every node of the cluster (this one included), in order; never blocks."""

    async def run(self, on_message: Callable[[bytes], None], on_reconnect: Callable[[], None],
                  *, task_status: Any = ...) -> None:
        """Connect and subscribe (``started`` once subscribed), then hand each message to ``on_message``
        in the event loop, in order, until cancelled. ``on_reconnect`` runs after a lost connection
        came back (messages may have been missed)."""


def open_broker(url: str, channel: str) -> Broker:
    scheme = urlsplit(url).scheme
    if scheme in ("redis", "rediss"):
        return RedisBroker(url, channel)
    if scheme in ("nats", "tls"):
        return NatsBroker(url, channel)
    raise BrokerError(f"unknown broker URL {url!r}: use redis://HOST:PORT/DB or nats://HOST:PORT")


class _Engine:
    """What differs between Redis and NATS, all of it run on the asyncio thread."""

    async def connect(self, deliver: Callable[[bytes], None], reconnected: Callable[[], None]) -> None:
        """Connect and subscribe."""

    async def send(self, batch: list[bytes]) -> None: ...

    async def listen(self) -> None:
        """Deliver messages until cancelled, reconnecting as needed."""

    async def close(self) -> None: ...


class _Bridged:
    """A broker client on its own asyncio thread, driven from trio."""

    def __init__(self, url: str, channel: str) -> None:
        self.url = url
        self.channel = channel
        self._loop: asyncio.AbstractEventLoop | None = None
        self._outbox: asyncio.Queue[bytes] | None = None
        self.published = 0
        self.received = 0

    def _engine(self) -> _Engine:
        raise NotImplementedError

    def publish(self, data: bytes) -> None:
        loop, outbox = self._loop, self._outbox
        if loop is None or outbox is None:
            return  # not connected yet or stopped: the database still has everything
        self.published += 1
        loop.call_soon_threadsafe(outbox.put_nowait, data)

    async def run(self, on_message: Callable[[bytes], None], on_reconnect: Callable[[], None],
                  *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        token = trio.lowlevel.current_trio_token()
        started = trio.Event()
        failure: list[BaseException] = []
        stopped = threading.Event()

        def deliver(data: bytes) -> None:
            self.received += 1
            token.run_sync_soon(on_message, data)

        def reconnected() -> None:
            token.run_sync_soon(on_reconnect)

        def ready(error: BaseException | None) -> None:
            if error is not None:
                failure.append(error)
            token.run_sync_soon(started.set)

        async def main() -> None:
            engine = self._engine()
            self._loop = asyncio.get_running_loop()
            self._outbox = asyncio.Queue()
            try:
                await engine.connect(deliver, reconnected)
            except Exception as exc:
                ready(exc)
                return
            ready(None)
            sender = asyncio.ensure_future(self._send_forever(engine))
            try:
                await engine.listen()
            finally:
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await sender
                with contextlib.suppress(Exception):
                    await engine.close()

        def thread() -> None:
            loop = asyncio.new_event_loop()
            task = loop.create_task(main())
            self._task = task
            try:
                loop.run_until_complete(task)
            except asyncio.CancelledError:
                pass
            except Exception as exc:
                log.error("broker connection failed: %s", exc)
            finally:
                self._loop = None
                loop.close()
                stopped.set()

        worker = threading.Thread(target=thread, name="utuvox-broker", daemon=True)
        worker.start()
        try:
            await started.wait()
            if failure:
                raise BrokerError(f"cannot reach the broker at {self.url}: {failure[0]}")
            task_status.started()
            await trio.sleep_forever()
        finally:
            loop = self._loop
            if loop is not None:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(self._task.cancel)
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(stopped.wait, 5.0)

    async def _send_forever(self, engine: _Engine) -> None:
        outbox = self._outbox
        assert outbox is not None
        while True:
            batch = [await outbox.get()]
            while not outbox.empty() and len(batch) < 1000:
                batch.append(outbox.get_nowait())
            while True:
                try:
                    await engine.send(batch)
                    break
                except Exception as exc:
                    # The broker went away: keep the order, try again. Nodes that miss a doorbell meanwhile
                    # catch up from the database.
                    log.warning("could not publish to the broker: %s", exc)
                    await asyncio.sleep(RECONNECT_DELAY)


class RedisBroker(_Bridged):
    def _engine(self) -> _Engine:
        return _RedisEngine(self.url, self.channel)


class _RedisEngine(_Engine):
    def __init__(self, url: str, channel: str) -> None:
        import redis.asyncio as aioredis

        self.channel = channel
        self.client = aioredis.from_url(url, socket_connect_timeout=5, health_check_interval=10)
        self.pubsub: Any = None
        self.deliver: Callable[[bytes], None] = lambda _data: None
        self.reconnected: Callable[[], None] = lambda: None

    async def connect(self, deliver: Callable[[bytes], None], reconnected: Callable[[], None]) -> None:
        self.deliver, self.reconnected = deliver, reconnected
        await self.client.ping()
        self.pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        await self.pubsub.subscribe(self.channel)

    async def send(self, batch: list[bytes]) -> None:
        if len(batch) == 1:
            await self.client.publish(self.channel, batch[0])
            return
        async with self.client.pipeline(transaction=False) as pipe:
            for data in batch:
                pipe.publish(self.channel, data)
            await pipe.execute()

    async def listen(self) -> None:
        import redis.exceptions

        lost = False
        while True:
            try:
                if lost:
                    await self.pubsub.aclose()
                    self.pubsub = self.client.pubsub(ignore_subscribe_messages=True)
                    await self.pubsub.subscribe(self.channel)
                    log.info("broker connection back")
                    self.reconnected()
                    lost = False
                message = await self.pubsub.get_message(timeout=None)
                if message is not None and message.get("type") == "message":
                    self.deliver(message["data"])
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
                if not lost:
                    log.warning("broker connection lost: %s", exc)
                lost = True
                await asyncio.sleep(RECONNECT_DELAY)

    async def close(self) -> None:
        if self.pubsub is not None:
            await self.pubsub.aclose()
        await self.client.aclose()


class NatsBroker(_Bridged):
    def _engine(self) -> _Engine:
        return _NatsEngine(self.url, self.channel)


class _NatsEngine(_Engine):
    def __init__(self, url: str, channel: str) -> None:
        self.url = url
        self.channel = channel
        self.nc: Any = None
        self.closing = False

    async def connect(self, deliver: Callable[[bytes], None], reconnected: Callable[[], None]) -> None:
        import nats

        async def on_reconnect() -> None:
            log.info("broker connection back")
            reconnected()

        async def on_disconnect() -> None:
            if not self.closing:
                log.warning("broker connection lost")

        async def on_error(exc: Exception) -> None:
            log.warning("broker: %s", exc)

        self.nc = await nats.connect(self.url, connect_timeout=5, max_reconnect_attempts=-1,
                                     reconnect_time_wait=RECONNECT_DELAY, allow_reconnect=True,
                                     reconnected_cb=on_reconnect, disconnected_cb=on_disconnect,
                                     error_cb=on_error, pending_size=64 * 1024 * 1024)

        async def on_message(msg: Any) -> None:
            deliver(msg.data)

        await self.nc.subscribe(self.channel, cb=on_message, pending_msgs_limit=1_000_000,
                                pending_bytes_limit=512 * 1024 * 1024)
        await self.nc.flush()

    async def send(self, batch: list[bytes]) -> None:
        for data in batch:
            await self.nc.publish(self.channel, data)

    async def listen(self) -> None:
        await asyncio.Event().wait()  # nats-py delivers and reconnects on its own tasks

    async def close(self) -> None:
        self.closing = True
        await self.nc.drain()
