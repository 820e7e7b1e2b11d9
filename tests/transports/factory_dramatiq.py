"""Conformance-suite factories for the Dramatiq transport, on its RabbitMQ and its Redis broker."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pika
import redis

from skipper.core.bus import BusOptions, Transport
from skipper.transports.dramatiq import DramatiqTransport
from tests.services import RABBITMQ_URL, REDIS_URL, require_rabbitmq, require_redis

MakeTransport = Callable[[BusOptions], Transport]

URLS = {"rabbitmq": RABBITMQ_URL, "redis": REDIS_URL}


def require(broker: str) -> None:
    """Skip locally (fail in CI) when `broker` is not running."""
    (require_rabbitmq if broker == "rabbitmq" else require_redis)()


def build(broker: str, options: BusOptions, **kwargs: Any) -> DramatiqTransport:
    """A transport on the test broker; idle threads wake every 50 ms so tests close quickly."""
    kwargs.setdefault("poll_interval_s", 0.05)
    return DramatiqTransport(options, url=URLS[broker], **kwargs)


async def close_and_clean(broker: str, built: list[DramatiqTransport]) -> None:
    """Close `built`, then delete their queues and exchanges (RabbitMQ) or their namespaces' keys (Redis)."""
    for transport in built:
        await transport.close()
    if broker == "rabbitmq":
        await asyncio.to_thread(_delete_amqp_objects, built)
    else:
        await asyncio.to_thread(_delete_redis_keys, {t.options.namespace for t in built})


def _delete_amqp_objects(built: list[DramatiqTransport]) -> None:
    queues: set[str] = set()
    exchanges: set[str] = set()
    for transport in built:
        q, x = transport.declared_names()
        queues |= q
        exchanges |= x
    connection = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
    try:
        channel = connection.channel()
        for queue in sorted(queues):
            channel.queue_delete(queue)
        for exchange in sorted(exchanges):
            channel.exchange_delete(exchange)
    finally:
        connection.close()


def _delete_redis_keys(namespaces: set[str]) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        for namespace in namespaces:
            keys = list(client.scan_iter(match=f"skipper:{namespace}:*", count=500))
            if keys:
                client.delete(*keys)
    finally:
        client.close()


def _factory(broker: str) -> Callable[[], contextlib.AbstractAsyncContextManager[MakeTransport]]:
    @contextlib.asynccontextmanager
    async def factory() -> AsyncIterator[MakeTransport]:
        require(broker)
        built: list[DramatiqTransport] = []

        def make(options: BusOptions) -> Transport:
            # A new transport per call: each is a separate "process" with its own broker and worker.
            built.append(build(broker, options))
            return built[-1]

        try:
            yield make
        finally:
            await close_and_clean(broker, built)

    return factory


FACTORIES: dict[str, Callable[[], contextlib.AbstractAsyncContextManager[MakeTransport]]] = {
    "dramatiq-rabbitmq": _factory("rabbitmq"),
    "dramatiq-redis": _factory("redis"),
}
