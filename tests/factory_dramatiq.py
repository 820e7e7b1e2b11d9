"""Conformance-suite factories for the Dramatiq transport, on its RabbitMQ and its Redis broker."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pika
import pika.exceptions
import redis

from skipper.core.bus import BusOptions, Transport
from skipper.core.settings import BusSettings
from skipper.transports.dramatiq import DramatiqTransport
from tests.services import RABBITMQ_URL, REDIS_URL, require_rabbitmq, require_redis

MakeTransport = Callable[[BusOptions], Transport]

URLS = {"rabbitmq": RABBITMQ_URL, "redis": REDIS_URL}


@contextlib.asynccontextmanager
async def dramatiq_factory(
    broker: str, *, settings: BusSettings | None = None, **transport_kwargs: Any
) -> AsyncIterator[Callable[[BusOptions], DramatiqTransport]]:
    """Yield `make(options)`: a new transport per call (a separate "process") on `broker`.

    On exit, deletes what the transports left on the broker: their queues and exchanges
    (RabbitMQ) or every key under their namespaces (Redis).
    """
    (require_rabbitmq if broker == "rabbitmq" else require_redis)()
    built: list[DramatiqTransport] = []

    def make(options: BusOptions) -> DramatiqTransport:
        transport = DramatiqTransport(
            options,
            url=URLS[broker],
            settings=settings or BusSettings(),
            **{"poll_interval_s": 0.05, **transport_kwargs},
        )
        built.append(transport)
        return transport

    try:
        yield make
    finally:
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
    def factory() -> contextlib.AbstractAsyncContextManager[MakeTransport]:
        return dramatiq_factory(broker)

    return factory


FACTORIES: dict[str, Callable[[], contextlib.AbstractAsyncContextManager[MakeTransport]]] = {
    "dramatiq-rabbitmq": _factory("rabbitmq"),
    "dramatiq-redis": _factory("redis"),
}
