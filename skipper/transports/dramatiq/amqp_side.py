"""`AmqpSide`: requests, replies, fanout and consumer counts beside Dramatiq on RabbitMQ.

A request does not go through Dramatiq (its sender thread, consumer thread and worker thread
cost ~2 ms per request): it is published, confirmed and `mandatory`, on `<queue>.requests`, an
auto-delete queue that each consuming process declares and consumes here with its prefetch, so
the queue exists exactly while someone consumes it and a request nobody takes comes back as
`NoConsumers` with no separate check. It carries `reply_to` naming this transport's exclusive
reply queue and expires with its timeout. Fanout is a fanout exchange `<ns>.fanout.<topic>`
with one exclusive queue per subscribing transport.

pika's asyncio adapter runs on the transport's event loop (`skipper.transports.amqp_async`, as
the RabbitMQ transport does): a request, its delivery and its reply never cross a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import pika
import pika.exceptions

from skipper.core.bus import BusOptions
from skipper.core.errors import Unavailable
from skipper.core.messages import message_id
from skipper.transports.amqp_async import (
    CONNECT_TIMEOUT_S,
    RPC_TIMEOUT_S,
    Channel,
    Link,
    Unroutable,
    backoff_s,
    connect_within,
    reconnect,
    rpc,
)
from skipper.transports.dramatiq.side import ATTACH_TIMEOUT_S, SideListener

log = logging.getLogger("skipper.transports.dramatiq")

RECONNECT_FIRST_S = 0.1


class AmqpSide:
    """Fanout, replies and consumer counts on one pika connection driven by the event loop.

    The link's publisher channel (confirm mode) carries requests and fanout; its rpc channel
    consumes this transport's reply queue and carries replies (no confirms: a lost reply is a
    timeout anyway); each served queue's requests arrive on a channel of their own, with the
    queue's prefetch. A lost connection is rebuilt with backoff, subscriptions and served queues
    with it.
    """

    presence_on_send = True  # a mandatory publish finds out that nobody consumes the queue

    def __init__(self, listener: SideListener, url: str, options: BusOptions, *, prefetch: dict[str, int]) -> None:
        """`prefetch` (shared with the transport, by queue) bounds the requests a queue has in hand."""
        self._listener = listener
        self._options = options
        self._params = pika.URLParameters(url)
        self._params.heartbeat = options.heartbeat_s
        self._params.client_properties = {"connection_name": options.client_name("dramatiq-side")}
        self._params.connection_attempts = 1
        self._params.socket_timeout = 5.0
        self._params.stack_timeout = CONNECT_TIMEOUT_S
        self._loop: asyncio.AbstractEventLoop | None = None
        self._link: Link | None = None  # usable from its reply queue on
        self._restored: Link | None = None  # ... and with subscriptions and served queues set up again
        self._reply_queue: str | None = None
        self._topics: set[str] = set()
        self._known_exchanges: set[str] = set()
        self._serving: set[str] = set()  # queues whose requests this process takes
        self._prefetch = prefetch
        # On the current link: served queue -> its request channel; channel -> deliveries in hand.
        self._request_channels: dict[str, Channel] = {}
        self._starting: set[str] = set()
        self._in_hand: dict[Channel, int] = {}
        self._cancelled: set[Channel] = set()
        self._reconnect_task: asyncio.Task[None] | None = None
        self._connecting = False
        self._closed = False

    @property
    def connected(self) -> bool:
        """Connected, with its subscriptions and served queues restored (a server's requests are taken again)."""
        link = self._link
        return link is not None and link is self._restored and link.is_open

    def exchanges(self) -> set[str]:
        return set(self._known_exchanges)

    def _exchange(self, topic: str) -> str:
        return f"{self._options.namespace}.fanout.{topic}"

    # --- the SideChannel interface -----------------------------------------------------------

    async def start(self, loop: asyncio.AbstractEventLoop, *, topics: list[str]) -> None:
        self._loop = loop
        self._topics.update(topics)
        # Its first connection shares a loaded machine with Dramatiq's consumer threads starting too.
        await connect_within(self._connect, timeout_s=ATTACH_TIMEOUT_S, backoff=self._backoff,
                             closed=lambda: self._closed, what=f"RabbitMQ at {self._params.host}:{self._params.port}",
                             log=log)

    async def close(self) -> None:
        self._closed = True
        if self._reconnect_task is not None:
            self._reconnect_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconnect_task
        link, self._link = self._link, None
        if link is not None:
            link.abort()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(link.closed), RPC_TIMEOUT_S)

    async def withdraw(self) -> None:
        """Stop taking requests (RabbitMQ drops Dramatiq's consumers when their channels close)."""
        queues, self._serving = list(self._serving), set()
        for queue in queues:
            await self._stop_serving(queue)

    async def withdraw_queue(self, queue: str) -> None:
        """Stop taking requests for `queue`; those in hand are still answered."""
        self._serving.discard(queue)
        await self._stop_serving(queue)

    async def consumers_attached(self, queues: list[str], *, wait: bool = True) -> None:
        """Take `queues`' requests from now on; with `wait`, also wait until the broker counts
        Dramatiq's consumer on each (Dramatiq attaches them in threads)."""
        self._serving.update(queues)
        link = self._link
        if link is not None and link.is_open:
            with contextlib.suppress(Unavailable):  # the reconnect serves them
                for queue in queues:
                    await self._serve(link, queue)
        if not wait:
            return
        deadline = time.monotonic() + ATTACH_TIMEOUT_S
        for queue in queues:
            while not await self.has_consumers(queue):
                if time.monotonic() > deadline:
                    log.warning("no consumer attached to %s after %.0fs", queue, ATTACH_TIMEOUT_S)
                    return
                await asyncio.sleep(0.02)

    def reply_address(self) -> str:
        if self._reply_queue is None or not self.connected:
            raise Unavailable("not connected to RabbitMQ")
        return self._reply_queue

    async def has_consumers(self, queue: str) -> bool:
        return await self._require().consumer_count(queue) > 0

    async def send_request(self, queue: str, frame: bytes, *, timeout: float) -> bool:
        link = self._require()
        assert link.publisher is not None
        # The message id lets the broker's basic.return be matched to this publish.
        props = pika.BasicProperties(expiration=str(max(1, round(timeout * 1000))), message_id=message_id())
        try:
            await self._confirmed(link.publisher.publish_confirmed("", _request_queue(queue), frame, props,
                                                                   mandatory=True))
        except Unroutable:
            return False  # no such queue: nobody consumes it (it is deleted with its last consumer)
        return True

    async def publish(self, topic: str, frame: bytes) -> None:
        link = self._require()
        exchange = await self._declare_exchange(link, topic)
        assert link.publisher is not None
        await self._confirmed(link.publisher.publish_confirmed(exchange, "", frame, pika.BasicProperties()))

    async def reply(self, address: str, frame: bytes) -> None:
        link = self._require()
        assert link.rpc is not None
        link.rpc.publish("", address, frame, pika.BasicProperties())

    async def add_topic(self, topic: str) -> None:
        self._topics.add(topic)
        link = self._require()
        await self._bind(link, topic)

    async def _confirmed(self, confirm: asyncio.Future[None]) -> None:
        try:
            await asyncio.wait_for(confirm, self._options.request_timeout_s)
        except TimeoutError as exc:
            raise Unavailable(f"RabbitMQ did not confirm within {self._options.request_timeout_s:g}s") from exc

    # --- the link's life ---------------------------------------------------------------------

    def _require(self) -> Link:
        link = self._link
        if link is None or not link.is_open:
            raise Unavailable("not connected to RabbitMQ")
        return link

    def _backoff(self, attempt: int) -> float:
        return backoff_s(attempt, first_s=RECONNECT_FIRST_S, cap_s=self._options.reconnect_backoff_max_s)

    async def _connect(self) -> None:
        """Open a connection, its reply queue, subscriptions and served queues (one attempt; callers retry)."""
        assert self._loop is not None
        self._connecting = True
        link = await Link.open(self._params, self._loop, on_close=self._on_link_closed,
                               on_channel_lost=self._on_channel_lost)
        try:
            await link.open_publisher()
            link.rpc = replies = await link.open_channel(essential=True)
            frame = await rpc(replies, lambda cb: replies.raw.queue_declare("", exclusive=True, auto_delete=True,
                                                                              callback=cb))
            reply_queue = frame.method.queue
            await rpc(replies, lambda cb: replies.raw.basic_consume(reply_queue, self._on_reply, auto_ack=True,
                                                                     callback=cb))
            if self._closed:
                raise Unavailable("the side channel closed while connecting")
            self._link, self._reply_queue = link, reply_queue
            self._request_channels.clear()
            self._starting.clear()
            self._in_hand.clear()
            self._cancelled.clear()
            for topic in list(self._topics):
                await self._bind(link, topic)
            for queue in list(self._serving):
                await self._serve(link, queue)
            self._restored = link
        except BaseException:
            if self._link is link:
                self._link = None
            link.abort()
            raise
        finally:
            self._connecting = False

    def _on_link_closed(self, link: Link, reason: BaseException) -> None:
        if self._link is not link:
            return  # one that never finished setting up (its caller retries), or one we replaced
        self._link = None
        # The reply queue went with the connection: requests in flight hear it now, not at their timeout.
        self._listener.on_disconnect()
        if self._closed or self._connecting:
            return
        log.warning("RabbitMQ side channel lost (%r); reconnecting", reason)
        self._reconnect_task = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        if await reconnect(self._connect, backoff=self._backoff, closed=lambda: self._closed,
                           what="RabbitMQ (side channel)", log=log):
            self._listener.on_reconnect()

    def _on_channel_lost(self, link: Link) -> None:
        """A channel the side channel relies on closed under us: rebuild the whole link."""
        if link.is_open and self._link is link and not self._closed:
            log.warning("RabbitMQ closed a side-channel channel; reconnecting")
            link.abort()

    # --- on the current link -----------------------------------------------------------------

    async def _declare_exchange(self, link: Link, topic: str) -> str:
        exchange = self._exchange(topic)
        self._known_exchanges.add(exchange)
        await link.declare(f"exchange:{exchange}", lambda ch, cb: ch.raw.exchange_declare(
            exchange, exchange_type="fanout", durable=True, callback=cb))
        return exchange

    async def _bind(self, link: Link, topic: str) -> None:
        """Subscribe to `topic` on `link` (once per link): an exclusive queue bound to its exchange."""

        async def bind() -> None:
            exchange = await self._declare_exchange(link, topic)
            channel = await link.open_channel(essential=True)
            frame = await rpc(channel, lambda cb: channel.raw.queue_declare("", exclusive=True, auto_delete=True,
                                                                              callback=cb))
            queue = frame.method.queue
            await rpc(channel, lambda cb: channel.raw.queue_bind(queue, exchange, callback=cb))

            def deliver(_raw: Any, _method: Any, _props: Any, body: bytes) -> None:
                self._listener.on_event(topic, body)

            await rpc(channel, lambda cb: channel.raw.basic_consume(queue, deliver, auto_ack=True, callback=cb))

        await link.once(f"bound:{topic}", bind)

    async def _serve(self, link: Link, queue: str) -> None:
        """Consume `queue`'s requests on a channel of their own, with the queue's prefetch."""
        if queue in self._request_channels or queue in self._starting or queue not in self._serving:
            return
        self._starting.add(queue)
        try:
            channel = await link.open_channel(essential=True)
            prefetch = self._prefetch.get(queue, self._options.prefetch)
            await rpc(channel, lambda cb: channel.raw.basic_qos(prefetch_count=prefetch, callback=cb))
            await rpc(channel, lambda cb: channel.raw.queue_declare(_request_queue(queue), auto_delete=True,
                                                                      callback=cb))
            self._in_hand[channel] = 0

            def deliver(_raw: Any, method: Any, _props: Any, body: bytes) -> None:
                self._in_hand[channel] += 1
                tag = method.delivery_tag
                self._listener.on_request(queue, body, lambda: self._ack(channel, tag))

            await rpc(channel, lambda cb: channel.raw.basic_consume(_request_queue(queue), deliver, callback=cb))
        finally:
            self._starting.discard(queue)
        if self._link is not link:
            channel.close()  # the link was replaced meanwhile; the new one serves the queue
            return
        self._request_channels[queue] = channel
        if queue not in self._serving:  # withdrawn while it started
            await self._stop_serving(queue)

    async def _stop_serving(self, queue: str) -> None:
        """Cancel `queue`'s request consumer; its channel closes once the requests in hand are acked."""
        channel = self._request_channels.pop(queue, None)
        if channel is None or not channel.is_open:
            return
        self._cancelled.add(channel)
        with contextlib.suppress(Unavailable, pika.exceptions.AMQPError):
            for tag in list(channel.raw.consumer_tags):
                await _cancel(channel, tag)
        self._close_if_idle(channel)

    def _ack(self, channel: Channel, tag: int) -> None:
        if not channel.is_open:
            return  # its connection went: RabbitMQ requeued the request (its reply, if sent, counts)
        channel.ack(tag)
        self._in_hand[channel] = self._in_hand.get(channel, 1) - 1
        self._close_if_idle(channel)

    def _close_if_idle(self, channel: Channel) -> None:
        if channel in self._cancelled and self._in_hand.get(channel, 0) <= 0:
            self._cancelled.discard(channel)
            self._in_hand.pop(channel, None)
            channel.close()

    def _on_reply(self, _raw: Any, _method: Any, _props: Any, body: bytes) -> None:
        self._listener.on_reply(body)


async def _cancel(channel: Channel, tag: str) -> None:
    """basic.cancel: deliveries stop; the ones in hand stay ours to ack."""
    await rpc(channel, lambda cb: channel.raw.basic_cancel(tag, callback=cb), timeout=2.0)


def _request_queue(queue: str) -> str:
    """Where requests for (qualified) `queue` wait: an auto-delete queue that exists while someone consumes it."""
    return f"{queue}.requests"

