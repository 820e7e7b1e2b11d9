"""`RabbitMQTransport`: the hooks of the base class over a link, and the link's life (connect, reconnect, close)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Coroutine
from typing import Any

import pika

from skipper.core.bus import BusOptions, Handler, Subscription, Transport
from skipper.core.errors import NoConsumers, Unavailable
from skipper.core.messages import Message
from skipper.transports.amqp_async.channel import RPC_TIMEOUT_S, rpc
from skipper.transports.amqp_async.link import CONNECT_TIMEOUT_S, Link
from skipper.transports.amqp_async.retry import backoff_s, connect_within, reconnect
from skipper.transports.rabbitmq.consumers import Binding, cancel_consumer, start_consumer, start_subscriber
from skipper.transports.rabbitmq.topology import Topology
from skipper.transports.rabbitmq.wire import decode, encode
from skipper.transports.rabbitmq.work import Consumer, WorkDeliveries

log = logging.getLogger("skipper.transports.rabbitmq")

REPLY_TO = "amq.rabbitmq.reply-to"
RECONNECT_FIRST_S = 0.2


class RabbitMQTransport(Transport):
    """The bus over RabbitMQ (see the package docstring for topology, wire format and threading)."""

    def __init__(
        self, options: BusOptions, *, url: str, connection_name: str | None = None, start_timeout_s: float = 30.0
    ) -> None:
        super().__init__(options)
        self.connection_name = connection_name or options.client_name(f"{socket.gethostname()}:{os.getpid()}")
        self._params = pika.URLParameters(url)
        if "heartbeat" not in url:
            self._params.heartbeat = options.heartbeat_s
        self._params.client_properties = {"connection_name": self.connection_name, "product": "skipper"}
        self._params.connection_attempts = 1
        self._params.socket_timeout = 5.0
        self._params.stack_timeout = CONNECT_TIMEOUT_S
        # Publishing while the broker blocks us (resource alarm) raises at once; if the alarm
        # lasts, pika drops the connection and the reconnect loop takes over.
        self._params.blocked_connection_timeout = max(30.0, options.request_timeout_s)
        self._start_timeout_s = start_timeout_s
        self.topology = Topology(confirm_timeout_s=options.request_timeout_s)
        self.deliveries = WorkDeliveries(self)
        self._link: Link | None = None
        self._consumers: list[Consumer] = []
        self._bindings: list[Binding] = []
        self._reconnect_task: asyncio.Task[None] | None = None
        self._connecting = False

    # --- state ---------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._link is not None and self._link.is_open and not self.closed

    @property
    def link(self) -> Link | None:
        """The current connection, if any."""
        return self._link

    @property
    def broker_objects(self) -> frozenset[tuple[str, str]]:
        """`("queue" | "exchange", name)` for every named object this transport declared."""
        return frozenset(self.topology.objects)

    def require_link(self) -> Link:
        """The open link; raises `Unavailable` when disconnected, closed, or blocked by a resource alarm."""
        link = self._link
        if link is None or not link.is_open or self.closed:
            raise Unavailable("not connected to RabbitMQ", details={"transport": "rabbitmq"})
        if link.blocked:
            raise Unavailable("RabbitMQ is blocking publishers (resource alarm)", details={"transport": "rabbitmq"})
        return link

    # --- hooks of the base -----------------------------------------------------------------

    async def _start(self) -> None:
        """Connect, retrying with backoff until `start_timeout_s`."""
        await connect_within(self._connect, timeout_s=self._start_timeout_s, backoff=self._backoff,
                             closed=lambda: self.closed, what="RabbitMQ", log=log)

    async def _send(self, queue: str, msg: Message) -> None:
        await self.topology.publish_to_queue(self.require_link(), self.qualified(queue), msg)

    async def _publish(self, topic: str, msg: Message) -> None:
        link = self.require_link()
        exchange = self.qualified(topic)
        await self.topology.declare_exchange(link, exchange)
        await self.topology.publish_confirmed(link, exchange, "", msg, persistent=False)

    async def _has_consumers(self, queue: str) -> bool:
        return await self.topology.has_consumer(self.require_link(), self.qualified(queue))

    async def _send_request(self, queue: str, msg: Message, key: str, timeout: float) -> None:
        # Direct reply-to: the AMQP correlation id is the request's key (the envelope's own
        # correlation id travels in the headers); the expiration drops a request nobody awaits.
        link = self.require_link()
        assert link.rpc is not None
        msg.reply_to = REPLY_TO
        body, props = encode(
            msg, persistent=False, reply_to=REPLY_TO, correlation_id=key, expiration_ms=max(1, int(timeout * 1000))
        )
        # `mandatory`: a queue deleted since the consumer check comes back (`_on_return`) as NoConsumers.
        link.rpc.publish("", self.qualified(queue), body, props, mandatory=True)

    def consume(self, queue: str, handler: Handler, *, prefetch: int | None = None) -> None:
        if self.closed:
            return
        consumer = Consumer(queue, handler, max(1, min(prefetch or self.options.prefetch, 65535)))
        self._consumers.append(consumer)
        link = self._link
        if link is not None and link.is_open:
            self.spawn(self._start_late(link, start_consumer(self, link, consumer)))

    async def attach(self, queue: str, handler: Handler, *, prefetch: int | None = None) -> None:
        if self.closed:
            raise Unavailable("the transport is closed", details={"transport": "rabbitmq"})
        consumer = Consumer(queue, handler, max(1, min(prefetch or self.options.prefetch, 65535)))
        self._consumers.append(consumer)
        if not self.started:
            return  # starts with the others
        link = self.require_link()  # if not, it starts on the reconnection
        try:
            await start_consumer(self, link, consumer)
        except Exception:
            if link.is_open and self._link is link:
                link.abort()  # a consumer half set up: rebuild the link, which starts it afresh
            raise

    async def detach(self, queue: str) -> None:
        gone = [c for c in self._consumers if c.queue == queue]
        self._consumers = [c for c in self._consumers if c.queue != queue]
        for consumer in gone:
            channel, tag = consumer.channel, consumer.tag
            if channel is None or tag is None or not channel.is_open:
                continue
            # Deliveries already here are tasks in flight: they finish and ack on this channel,
            # which then closes (closing it first would requeue them, flagged redelivered).
            await cancel_consumer(channel, tag)
            self.spawn(self._close_when_idle(channel))

    async def _close_when_idle(self, channel: Any) -> None:
        # Every delivery of this channel arrived before its cancel-ok: its task is in this snapshot.
        await asyncio.gather(*list(self.deliveries.inflight), return_exceptions=True)
        channel.close()

    def _subscribed(self, sub: Subscription, *, first: bool) -> None:
        binding = Binding(sub)
        self._bindings.append(binding)
        link = self._link
        if link is not None and link.is_open:
            self.spawn(self._start_late(link, start_subscriber(self, link, binding)))

    async def _start_late(self, link: Link, starting: Coroutine[Any, Any, None]) -> None:
        """Set up a consumer or subscriber registered after start; on failure, rebuild the link."""
        try:
            await starting
        except Exception as exc:
            if link.is_open and self._link is link:
                log.warning("could not start a consumer on RabbitMQ (%r); reconnecting", exc)
                link.abort()

    async def _close(self) -> None:
        if self._reconnect_task is not None:
            self._reconnect_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconnect_task
        link = self._link
        if link is not None and link.is_open:
            # Stop deliveries first; what was delivered already is handled below.
            live: list[Consumer | Binding] = [*self._consumers, *self._bindings]
            await asyncio.gather(
                *(cancel_consumer(c.channel, c.tag) for c in live if c.link is link and c.channel and c.tag),
                return_exceptions=True,
            )
        # Drain: every handler already running finishes (and acks while the link is up).
        await self.deliveries.drain()
        await self.drain_subscriptions()
        await self.finish_background(cancel=True)
        self.fail_requests(Unavailable("transport closed"))
        link, self._link = self._link, None
        if link is not None:
            link.abort()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(link.closed), RPC_TIMEOUT_S)

    # --- the link's life ---------------------------------------------------------------------

    def _backoff(self, attempt: int) -> float:
        return backoff_s(attempt, first_s=RECONNECT_FIRST_S, cap_s=self.options.reconnect_backoff_max_s)

    async def _connect(self) -> None:
        """Open a connection and set up everything on it (one attempt; callers retry)."""
        self._connecting = True
        try:
            await self._connect_once()
        finally:
            self._connecting = False

    async def _connect_once(self) -> None:
        link = await Link.open(self._params, asyncio.get_running_loop(), on_close=self._on_link_closed,
                               on_channel_lost=self._on_channel_lost)
        try:
            await link.open_publisher()
            link.rpc = rpc_channel = await link.open_channel(essential=True)
            rpc_channel.raw.add_on_return_callback(self._on_return)
            await rpc(rpc_channel, lambda cb: rpc_channel.raw.basic_consume(REPLY_TO, self._on_reply, auto_ack=True,
                                                                            callback=cb))
            if self.closed:
                raise Unavailable("transport closed while connecting")
            # Usable from here on: a handler that runs as soon as its consumer starts (a
            # message was waiting) may already send, reply, retry and dead-letter.
            self._link = link
            # Index loops: a consumer registered while we connect is picked up here.
            i = 0
            while i < len(self._consumers):
                await start_consumer(self, link, self._consumers[i])
                i += 1
            i = 0
            while i < len(self._bindings):
                await start_subscriber(self, link, self._bindings[i])
                i += 1
        except BaseException:
            if self._link is link:
                self._link = None  # the caller retries; no second reconnect from on-close
            link.abort()
            raise
        log.info("connected to RabbitMQ as %s", self.connection_name)

    def _on_link_closed(self, link: Link, reason: BaseException) -> None:
        if self._link is not link:
            return  # a connection that never finished setting up, or one we replaced
        self._link = None
        self.fail_requests(Unavailable(f"connection to RabbitMQ lost: {reason!r}"))
        if self.closed or self._connecting:
            return  # closing on purpose, or lost while still setting up: that attempt's caller retries
        log.warning("lost the connection to RabbitMQ (%r); reconnecting", reason)
        self._reconnect_task = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        if await reconnect(self._connect, backoff=self._backoff, closed=lambda: self.closed, what="RabbitMQ", log=log):
            self.spawn(self.notify_connected())

    def _on_channel_lost(self, link: Link) -> None:
        """A channel we rely on closed under us: rebuild the whole link (simple and complete)."""
        if link.is_open and self._link is link and not self.closed:
            log.warning("RabbitMQ closed a channel the transport needs; reconnecting")
            link.abort()

    # --- replies ---------------------------------------------------------------------------

    def _on_reply(self, _raw: Any, _method: Any, props: Any, body: bytes) -> None:
        try:
            reply = decode(props, body)
        except Exception as exc:  # a malformed reply fails its request, not the channel
            self.reply_failed(props.correlation_id, Unavailable(f"malformed reply: {exc!r}"))
            return
        self.reply_arrived(props.correlation_id, reply)

    def _on_return(self, _raw: Any, method: Any, props: Any, _body: bytes) -> None:
        # A mandatory request the broker could not route: its queue is gone.
        link = self._link
        if link is not None:
            link.presence.pop(method.routing_key, None)
        queue = method.routing_key.removeprefix(f"{self.options.namespace}.")
        self.reply_failed(props.correlation_id, NoConsumers(f"no consumer for queue {queue!r}", details={"queue": queue}))


