"""`RedisSide`: requests, replies, fanout and consumer presence beside Dramatiq on Redis.

Replies and fanout are channels under `skipper:<ns>:`; a consumer's pub/sub connection also
subscribes to `presence:<queue>`, and `has_consumers` reads `PUBSUB NUMSUB`.

Requests do not ride Dramatiq's Redis consumer, which polls (5 ms and more between looks at an
idle queue): the sender pushes a request frame on `requests:<queue>` (a list that expires with
the request's timeout) and each consumer process waits on its queues' lists with one BLPOP, so a
request is taken the moment it arrives, by whichever process has waited longest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import redis
import redis.asyncio

from skipper.core.bus import BusOptions
from skipper.core.errors import Unavailable
from skipper.core.messages import new_id
from skipper.transports.dramatiq.side import CONNECT_TIMEOUT_S, SideListener

log = logging.getLogger("skipper.transports.dramatiq")

REQUEST_WAIT_S = 1.0  # one BLPOP's longest wait; a change of the queues served wakes it sooner


class RedisSide:
    """Replies, fanout and consumer presence over PUBLISH/SUBSCRIBE, all on the event loop.

    A consumer's presence is its pub/sub connection's subscription to `presence:<queue>`:
    `PUBSUB NUMSUB` counts live consumers, and a killed process's subscriptions vanish with its
    socket, so requests get `NoConsumers` at once instead of waiting for a TTL to run out.
    """

    presence_on_send = False  # a list takes a request whether or not anyone waits on it

    def __init__(self, listener: SideListener, url: str, options: BusOptions, *, prefetch: dict[str, int]) -> None:
        """`prefetch` (shared with the transport, by queue) bounds the requests a queue has in hand."""
        self._listener = listener
        self._options = options
        self._client: redis.asyncio.Redis = redis.asyncio.Redis.from_url(
            url, client_name=options.client_name("dramatiq-side")
        )
        self._prefix = f"skipper:{options.namespace}"
        own = new_id()
        self._reply_channel = f"{self._prefix}:reply:{own}"
        self._wake_key = f"{self._prefix}:wake:{own}"  # pushed to end this process's BLPOP early
        self._pubsub: Any = None
        self._queues: set[str] = set()
        self._prefetch = prefetch
        self._in_hand: dict[str, int] = {}
        self._queues_changed = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._taker: asyncio.Task[None] | None = None
        self._wakers: set[asyncio.Task[None]] = set()
        self._stopping = False
        self.connected = False

    def exchanges(self) -> set[str]:
        return set()

    def _topic_channel(self, topic: str) -> str:
        return f"{self._prefix}:topic:{topic}"

    def _presence_channel(self, queue: str) -> str:
        return f"{self._prefix}:presence:{queue}"

    def _request_key(self, queue: str) -> str:
        return f"{self._prefix}:requests:{queue}"

    async def start(self, loop: asyncio.AbstractEventLoop, *, topics: list[str]) -> None:
        try:
            self._pubsub = self._client.pubsub()
            channels = [self._reply_channel, *(self._topic_channel(t) for t in topics)]
            await self._pubsub.subscribe(*channels)
            await self._await_subscriptions(len(channels))
        except (redis.RedisError, OSError) as exc:
            await self.close()
            raise Unavailable(f"cannot reach Redis: {exc}") from exc
        self.connected = True
        self._reader = loop.create_task(self._read())
        self._taker = loop.create_task(self._take_requests())

    async def _await_subscriptions(self, count: int) -> None:
        """Read until Redis confirmed every SUBSCRIBE, so no reply or event sent after start is lost."""
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        while count > 0:
            if time.monotonic() > deadline:
                raise redis.TimeoutError("no subscription confirmation from Redis")
            message = await self._pubsub.get_message(timeout=0.5)
            if message is None:
                continue
            if message["type"] == "subscribe":
                count -= 1
            else:
                self._dispatch(message)

    async def close(self) -> None:
        if self._taker is not None:
            self._stopping = True
            await self._wake()
            # A BLPOP cancelled mid-wait may already have taken a request: let it return first.
            done, _ = await asyncio.wait([self._taker], timeout=REQUEST_WAIT_S + 1)
            if not done:
                self._taker.cancel()
                await asyncio.gather(self._taker, return_exceptions=True)
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        self.connected = False
        try:
            if self._pubsub is not None:
                await self._pubsub.aclose()
            await self._client.aclose()
        except (redis.RedisError, OSError):
            log.debug("closing the Redis side channel failed", exc_info=True)

    async def withdraw_queue(self, queue: str) -> None:
        if queue in self._queues and self._pubsub is not None:
            self._queues.discard(queue)
            await self._wake()
            with contextlib.suppress(redis.RedisError, OSError):
                await self._pubsub.unsubscribe(self._presence_channel(queue))

    async def withdraw(self) -> None:
        queues, self._queues = self._queues, set()
        if queues and self._pubsub is not None:
            await self._wake()
            with contextlib.suppress(redis.RedisError, OSError):
                await self._pubsub.unsubscribe(*(self._presence_channel(q) for q in queues))

    async def consumers_attached(self, queues: list[str], *, wait: bool = True) -> None:
        """Announce this transport as a consumer of `queues` and take their requests from now on."""
        self._queues.update(queues)
        await self._wake()
        await self._pubsub.subscribe(*(self._presence_channel(q) for q in queues))
        if wait:
            # Confirmed once NUMSUB counts us: the reader task consumes the confirmations.
            deadline = time.monotonic() + CONNECT_TIMEOUT_S
            for queue in queues:
                while not await self.has_consumers(queue) and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)

    def reply_address(self) -> str:
        return self._reply_channel

    async def has_consumers(self, queue: str) -> bool:
        try:
            counts = await self._client.pubsub_numsub(self._presence_channel(queue))
        except (redis.RedisError, OSError) as exc:
            raise Unavailable(f"cannot reach Redis: {exc}") from exc
        return bool(counts) and int(counts[0][1]) > 0

    async def send_request(self, queue: str, frame: bytes, *, timeout: float) -> bool:
        """Queue a request frame for one consumer of `queue`; the list expires with the request."""
        key = self._request_key(queue)
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.rpush(key, frame)
                pipe.pexpire(key, max(1, round(timeout * 1000)))
                await pipe.execute()
        except (redis.RedisError, OSError) as exc:
            raise Unavailable(f"cannot reach Redis: {exc}") from exc
        return True

    async def publish(self, topic: str, frame: bytes) -> None:
        await self._publish(self._topic_channel(topic), frame)

    async def reply(self, address: str, frame: bytes) -> None:
        await self._publish(address, frame)

    async def _publish(self, channel: str, frame: bytes) -> None:
        try:
            await self._client.publish(channel, frame)
        except (redis.RedisError, OSError) as exc:
            raise Unavailable(f"cannot reach Redis: {exc}") from exc

    async def add_topic(self, topic: str) -> None:
        await self._pubsub.subscribe(self._topic_channel(topic))

    def _dispatch(self, message: dict[str, Any]) -> None:
        if message.get("type") != "message":
            return
        channel = message["channel"].decode()
        if channel == self._reply_channel:
            self._listener.on_reply(message["data"])
        elif channel.startswith(f"{self._prefix}:topic:"):
            self._listener.on_event(channel[len(self._prefix) + 7 :], message["data"])

    async def _read(self) -> None:
        delay = 0.1
        while True:
            try:
                message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            except (redis.RedisError, OSError) as exc:
                # redis-py reconnects and re-subscribes (replies, topics, presence) on the next read.
                if self.connected:
                    log.warning("Redis pub/sub lost, reconnecting: %s", exc)
                    self._listener.on_disconnect()
                self.connected = False
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._options.reconnect_backoff_max_s)
                continue
            delay = 0.1
            if not self.connected:
                self.connected = True
                self._listener.on_reconnect()
            if message is not None:
                self._dispatch(message)

    # --- taking requests ---------------------------------------------------------------

    async def _wake(self) -> None:
        """End this process's BLPOP now, so the next one waits on the queues as they are."""
        self._queues_changed.set()
        if self._taker is not None and not self._taker.done():
            with contextlib.suppress(redis.RedisError, OSError):
                async with self._client.pipeline(transaction=False) as pipe:
                    pipe.rpush(self._wake_key, b"")
                    pipe.pexpire(self._wake_key, 5000)
                    await pipe.execute()

    def _open_queues(self) -> list[str]:
        """The queues served here with room for one more request in hand."""
        return sorted(q for q in self._queues
                      if self._in_hand.get(q, 0) < self._prefetch.get(q, self._options.prefetch))

    async def _take_requests(self) -> None:
        delay = 0.1
        while True:
            self._queues_changed.clear()
            queues = self._open_queues()
            if self._stopping:
                return
            if not queues:
                await self._queues_changed.wait()
                continue
            keys = [self._request_key(q) for q in queues]
            try:
                popped = await self._client.blpop([*keys, self._wake_key], timeout=REQUEST_WAIT_S)  # type: ignore[misc]  # one type for the sync and async clients
            except (redis.RedisError, OSError) as exc:
                log.debug("waiting for requests failed, retrying in %.1fs: %s", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._options.reconnect_backoff_max_s)
                continue
            delay = 0.1
            if popped is None:
                continue
            key, frame = popped[0].decode(), popped[1]
            if key == self._wake_key:
                continue
            queue = key[len(self._prefix) + len(":requests:") :]
            if queue not in self._queues:
                # Withdrawn while this BLPOP waited: back to the head, for another consumer.
                with contextlib.suppress(redis.RedisError, OSError):
                    await self._client.lpush(key, frame)  # type: ignore[misc]
                continue
            self._in_hand[queue] = self._in_hand.get(queue, 0) + 1
            self._listener.on_request(queue, frame, self._done_callback(queue))

    def _done_callback(self, queue: str) -> Callable[[], None]:
        def done() -> None:
            left = self._in_hand.get(queue, 1) - 1
            self._in_hand[queue] = left
            if left + 1 >= self._prefetch.get(queue, self._options.prefetch) and not self._stopping:
                # It was full, so the waiting BLPOP leaves it out: wake it to serve it again.
                task = asyncio.get_running_loop().create_task(self._wake())
                self._wakers.add(task)
                task.add_done_callback(self._wakers.discard)
        return done
