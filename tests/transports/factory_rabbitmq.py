"""Conformance-suite factory for the RabbitMQ transport, against the broker on this machine."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable

import pika
import pika.exceptions

from skipper.core.bus import BusOptions, Transport
from skipper.transports.rabbitmq import RabbitMQTransport
from tests.services import RABBITMQ_URL, require_rabbitmq

MakeTransport = Callable[[BusOptions], Transport]


def delete_broker_objects(objects: Iterable[tuple[str, str]], url: str = RABBITMQ_URL) -> None:
    """Delete the named queues and exchanges (blocking; run it in a thread)."""
    objects = sorted(set(objects))
    if not objects:
        return
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        for kind, name in objects:
            if not channel.is_open:
                channel = connection.channel()
            with contextlib.suppress(pika.exceptions.ChannelClosedByBroker):
                if kind == "queue":
                    channel.queue_delete(name)
                else:
                    channel.exchange_delete(name)
    finally:
        connection.close()


@contextlib.asynccontextmanager
async def rabbitmq_factory() -> AsyncIterator[MakeTransport]:
    # A new transport (a new connection) per call: each is one "process" of the test.
    require_rabbitmq()
    built: list[RabbitMQTransport] = []

    def make(options: BusOptions) -> Transport:
        transport = RabbitMQTransport(
            options, url=RABBITMQ_URL, connection_name=f"skipper-test:{options.namespace}"
        )
        built.append(transport)
        return transport

    try:
        yield make
    finally:
        for transport in built:
            await transport.close()
        objects = {obj for transport in built for obj in transport.broker_objects}
        await asyncio.to_thread(delete_broker_objects, objects)


FACTORIES = {"rabbitmq": rabbitmq_factory}
