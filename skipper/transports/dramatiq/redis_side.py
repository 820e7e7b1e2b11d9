"""`RedisSide`: replies, fanout and consumer presence beside Dramatiq on Redis (PUBLISH/SUBSCRIBE).

Replies and fanout are channels under `skipper:<ns>:`; a consumer's pub/sub connection also
subscribes to `presence:<queue>`, and `has_consumers` reads `PUBSUB NUMSUB`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import redis
import redis.asyncio

from skipper.core.bus import BusOptions
from skipper.core.errors import Unavailable
from skipper.core.messages import new_id
from skipper.transports.dramatiq.side import CONNECT_TIMEOUT_S, SideListener

log = logging.getLogger("skipper.transports.dramatiq")


class RedisSide:
    """Replies, fanout and consumer presence over PUBLISH/SUBSCRIBE, all on the event loop.

    A consumer's presence is its pub/sub connection's subscription to `presence:<queue>`:
    `PUBSUB NUMSUB` counts live consumers, and a killed process's subscriptions vanish with its
    socket, so requests get `NoConsumers` at once instead of waiting for a TTL to run out.
    """

    def __init__(self, listener: SideListener, url: str, options: BusOptions) -> None:
        self._listener = listener
        self._options = options
        self._client: redis.asyncio.Redis = redis.asyncio.Redis.from_url(
            url, client_name=options.client_name("dramatiq-side")
        )
        self._prefix = f"skipper:{options.namespace}"
        self._reply_channel = f"{self._prefix}:reply:{new_id()}"
        self._pubsub: Any = None
        self._queues: set[str] = set()
        self._reader: asyncio.Task[None] | None = None
        self.connected = False

    def exchanges(self) -> set[str]:
        return set()

    def _topic_channel(self, topic: str) -> str:
        return f"{self._prefix}:topic:{topic}"

    def _presence_channel(self, queue: str) -> str:
        return f"{self._prefix}:presence:{queue}"

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
            with contextlib.suppress(redis.RedisError, OSError):
                await self._pubsub.unsubscribe(self._presence_channel(queue))

    async def withdraw(self) -> None:
        queues, self._queues = self._queues, set()
        if queues and self._pubsub is not None:
            with contextlib.suppress(redis.RedisError, OSError):
                await self._pubsub.unsubscribe(*(self._presence_channel(q) for q in queues))

    async def consumers_attached(self, queues: list[str], *, wait: bool = True) -> None:
        """Announce this transport as a consumer of `queues` (Dramatiq's Redis consumers poll)."""
        self._queues.update(queues)
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
