"""Consumers and subscribers on a link: declared, given a channel and a prefetch, then consuming.

Each work consumer has its own channel with `basic_qos(prefetch)`. Each subscriber binds its
own exclusive, auto-delete, server-named queue to the topic's fanout exchange, on its own
channel; its deliveries go to its `Subscription` inbox and are acked once handled, so a
subscriber handles a topic's messages one at a time, in publish order.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pika.exceptions

from skipper.core.bus import Subscription
from skipper.core.errors import Unavailable
from skipper.transports.amqp_async.channel import Channel, rpc
from skipper.transports.amqp_async.link import Link
from skipper.transports.rabbitmq.wire import decode
from skipper.transports.rabbitmq.work import Consumer

if TYPE_CHECKING:
    from skipper.transports.rabbitmq.transport import RabbitMQTransport

log = logging.getLogger("skipper.transports.rabbitmq")


@dataclass(eq=False)
class Binding:
    """A subscription and where it consumes on the current link."""

    sub: Subscription
    link: Link | None = None
    channel: Channel | None = None
    tag: str | None = None


def _new_tag() -> str:
    return f"skipper.{uuid.uuid4().hex[:16]}"


async def start_consumer(transport: RabbitMQTransport, link: Link, consumer: Consumer) -> None:
    """Consume `consumer.queue` on `link` (once per link)."""
    if consumer.link is link:
        return
    consumer.link = link
    name = transport.qualified(consumer.queue)
    await transport.topology.declare_queue(link, name)
    channel = await link.open_channel(essential=True)
    await rpc(channel, lambda cb: channel.raw.basic_qos(prefetch_count=consumer.prefetch, callback=cb))
    channel.raw.add_on_cancel_callback(lambda _frame: link.channel_lost(channel))
    tag = _new_tag()
    deliveries = transport.deliveries

    def on_message(_raw: Any, method: Any, props: Any, body: bytes) -> None:
        deliveries.on_delivery(consumer, channel, method, props, body)

    await rpc(channel, lambda cb: channel.raw.basic_consume(name, on_message, consumer_tag=tag, callback=cb))
    consumer.channel, consumer.tag = channel, tag


async def start_subscriber(transport: RabbitMQTransport, link: Link, binding: Binding) -> None:
    """Bind a fresh exclusive queue of `binding` to its topic's exchange and consume it (once per link)."""
    if binding.link is link:
        return
    binding.link = link
    sub = binding.sub
    exchange = transport.qualified(sub.topic)
    await transport.topology.declare_exchange(link, exchange)
    channel = await link.open_channel(essential=True)
    await rpc(channel, lambda cb: channel.raw.basic_qos(prefetch_count=transport.options.prefetch, callback=cb))
    frame = await rpc(channel, lambda cb: channel.raw.queue_declare("", exclusive=True, auto_delete=True, callback=cb))
    queue = frame.method.queue
    await rpc(channel, lambda cb: channel.raw.queue_bind(queue, exchange, callback=cb))
    tag = _new_tag()

    def on_message(_raw: Any, method: Any, props: Any, body: bytes) -> None:
        try:
            msg = decode(props, body)
        except Exception:
            log.exception("dropping a malformed event on %s", sub.topic)
            channel.ack(method.delivery_tag)
            return
        sub.deliver(msg, lambda: channel.ack(method.delivery_tag))

    await rpc(channel, lambda cb: channel.raw.basic_consume(queue, on_message, consumer_tag=tag, callback=cb))
    binding.channel, binding.tag = channel, tag


async def cancel_consumer(channel: Channel, tag: str) -> None:
    """basic.cancel, best effort: deliveries stop, the ones here stay ours to ack."""
    with contextlib.suppress(Unavailable, pika.exceptions.AMQPError):
        await rpc(channel, lambda cb: channel.raw.basic_cancel(tag, callback=cb), timeout=2.0)
