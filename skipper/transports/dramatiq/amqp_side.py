"""`AmqpSide`: requests, replies, fanout and consumer counts beside Dramatiq on RabbitMQ.

A request does not go through Dramatiq (its sender thread, consumer thread and worker thread
cost ~2 ms per request): it is published, confirmed and `mandatory`, on `<queue>.requests`, an
auto-delete queue that each consuming process declares and consumes here with its prefetch, so
the queue exists exactly while someone consumes it and a request nobody takes comes back as
`NoConsumers` with no separate check. It carries `reply_to` naming this transport's exclusive
reply queue and expires with its timeout. Fanout is a fanout exchange `<ns>.fanout.<topic>`
with one exclusive queue per subscribing transport.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pika
import pika.exceptions

from skipper.core.bus import BusOptions
from skipper.core.errors import Unavailable
from skipper.transports.dramatiq.side import ATTACH_TIMEOUT_S, SideListener

log = logging.getLogger("skipper.transports.dramatiq")

T = TypeVar("T")


class AmqpSide:
    """Fanout, replies and consumer counts on one pika connection owned by one thread.

    pika's BlockingConnection is not thread-safe: every operation is handed to that thread
    with `add_callback_threadsafe` and awaited through a future. The thread reconnects with
    backoff and re-declares its reply queue and subscriptions.
    """

    presence_on_send = True  # a mandatory publish finds out that nobody consumes the queue

    def __init__(self, listener: SideListener, url: str, options: BusOptions, *, prefetch: dict[str, int]) -> None:
        """`prefetch` (shared with the transport, by queue) bounds the requests a queue has in hand."""
        self._listener = listener
        self._options = options
        self._params = pika.URLParameters(url)
        self._params.heartbeat = options.heartbeat_s
        self._params.client_properties = {"connection_name": options.client_name("dramatiq-side")}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._conn: Any = None
        self._channel: Any = None
        self._probe: Any = None
        self._reply_queue: str | None = None
        self._topics: set[str] = set()
        self._bound: set[str] = set()
        self._exchanges: set[str] = set()
        self._known_exchanges: set[str] = set()
        self._calls: set[concurrent.futures.Future[Any]] = set()
        self._replies: Any = None  # a channel without confirms: a lost reply is a timeout anyway
        self._serving: set[str] = set()  # queues whose requests this process takes
        self._prefetch = prefetch
        # On the connection's thread: queue -> its request channel; channel -> deliveries in hand.
        self._request_channels: dict[str, Any] = {}
        self._in_hand: dict[Any, int] = {}
        self._cancelled: set[Any] = set()
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def connected(self) -> bool:
        conn = self._conn
        return conn is not None and conn.is_open

    def exchanges(self) -> set[str]:
        return set(self._known_exchanges)

    def _exchange(self, topic: str) -> str:
        return f"{self._options.namespace}.fanout.{topic}"

    async def start(self, loop: asyncio.AbstractEventLoop, *, topics: list[str]) -> None:
        self._loop = loop
        self._topics.update(topics)
        self._thread = threading.Thread(target=self._run, name="skipper-dramatiq-amqp", daemon=True)
        self._thread.start()
        # Its first connection shares a loaded machine with Dramatiq's consumer threads starting too.
        if not await asyncio.to_thread(self._ready.wait, ATTACH_TIMEOUT_S):
            await self.close()
            raise Unavailable(f"cannot reach RabbitMQ at {self._params.host}:{self._params.port}")

    async def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 10)

    async def withdraw(self) -> None:
        """Stop taking requests (RabbitMQ drops Dramatiq's consumers when their channels close)."""
        queues, self._serving = list(self._serving), set()
        with contextlib.suppress(Unavailable):
            await self._submit(lambda: self._each(self._stop_serving, queues))

    async def withdraw_queue(self, queue: str) -> None:
        """Stop taking requests for `queue`; those in hand are still answered."""
        self._serving.discard(queue)
        with contextlib.suppress(Unavailable):
            await self._submit(lambda: self._stop_serving(queue))

    async def consumers_attached(self, queues: list[str], *, wait: bool = True) -> None:
        """Take `queues`' requests from now on; with `wait`, also wait until the broker counts
        Dramatiq's consumer on each (Dramatiq attaches them in threads)."""
        self._serving.update(queues)
        with contextlib.suppress(Unavailable):  # the reconnect serves them
            await self._submit(lambda: self._each(self._serve, queues))
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
        return await self._submit(lambda: self._consumer_count(queue)) > 0

    async def send_request(self, queue: str, frame: bytes, *, timeout: float) -> bool:
        props = pika.BasicProperties(expiration=str(max(1, round(timeout * 1000))))

        def publish() -> bool:
            try:
                self._channel.basic_publish("", _request_queue(queue), frame, properties=props, mandatory=True)
            except pika.exceptions.UnroutableError:
                return False  # no such queue: nobody consumes it (it is deleted with its last consumer)
            return True

        return await self._submit(publish)

    async def publish(self, topic: str, frame: bytes) -> None:
        await self._submit(lambda: self._publish(topic, frame))

    async def reply(self, address: str, frame: bytes) -> None:
        await self._submit(lambda: self._replies.basic_publish("", address, frame))

    async def add_topic(self, topic: str) -> None:
        self._topics.add(topic)
        await self._submit(lambda: self._bind(topic))

    # --- on the connection's thread --------------------------------------------------------

    def _submit(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        cf: concurrent.futures.Future[T] = concurrent.futures.Future()

        def call() -> None:
            if not cf.set_running_or_notify_cancel():
                return
            try:
                cf.set_result(fn())
            except (pika.exceptions.AMQPError, OSError) as exc:
                # The connection dropped under this call: a typed, retryable failure for the caller.
                cf.set_exception(Unavailable(f"the RabbitMQ connection was lost: {exc!r}"))
            except BaseException as exc:
                cf.set_exception(exc)

        with self._lock:
            if self._conn is None or not self._conn.is_open:
                raise Unavailable("not connected to RabbitMQ")
            self._calls.add(cf)
            cf.add_done_callback(self._calls.discard)
            try:
                self._conn.add_callback_threadsafe(call)
            except pika.exceptions.AMQPError as exc:
                raise Unavailable(f"not connected to RabbitMQ: {exc}") from exc
        return asyncio.wrap_future(cf)

    def _run(self) -> None:
        delay = 0.1
        while not self._stop.is_set():
            try:
                self._connect()
                delay = 0.1
                if self._ready.is_set():
                    self._to_loop(self._listener.on_reconnect)
                self._ready.set()
                while not self._stop.is_set():
                    self._conn.process_data_events(time_limit=0.1)
            except Exception as exc:
                log.warning("RabbitMQ side channel lost, reconnecting in %.1fs: %s", delay, exc)
            finally:
                self._drop()
                if self._ready.is_set():
                    self._to_loop(self._listener.on_disconnect)
            if self._stop.wait(delay):
                break
            delay = min(delay * 2, self._options.reconnect_backoff_max_s)

    def _connect(self) -> None:
        conn = pika.BlockingConnection(self._params)
        channel = conn.channel()
        channel.confirm_delivery()
        self._reply_queue = channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
        channel.basic_consume(self._reply_queue, self._on_reply, auto_ack=True)
        replies = conn.channel()
        with self._lock:
            self._conn, self._channel, self._probe, self._replies = conn, channel, None, replies
        self._exchanges.clear()
        self._bound.clear()
        self._request_channels.clear()
        self._in_hand.clear()
        self._cancelled.clear()
        for topic in list(self._topics):
            self._bind(topic)
        for queue in list(self._serving):
            self._serve(queue)

    def _drop(self) -> None:
        with self._lock:
            conn, self._conn, self._channel, self._probe, self._replies = self._conn, None, None, None, None
            calls = list(self._calls)
        if conn is not None and conn.is_open:
            try:
                conn.close()
            except Exception:
                log.debug("closing the RabbitMQ side channel failed", exc_info=True)
        for cf in calls:
            if not cf.done():
                with contextlib.suppress(concurrent.futures.InvalidStateError):
                    cf.set_exception(Unavailable("the RabbitMQ connection was lost"))

    def _declare_exchange(self, topic: str) -> str:
        exchange = self._exchange(topic)
        if exchange not in self._exchanges:
            self._channel.exchange_declare(exchange, exchange_type="fanout", durable=True)
            self._exchanges.add(exchange)
            self._known_exchanges.add(exchange)
        return exchange

    def _bind(self, topic: str) -> None:
        if topic in self._bound:
            return
        exchange = self._declare_exchange(topic)
        queue = self._channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
        self._channel.queue_bind(queue, exchange)

        def deliver(ch: Any, method: Any, props: Any, body: bytes) -> None:
            self._to_loop(self._listener.on_event, topic, body)

        self._channel.basic_consume(queue, deliver, auto_ack=True)
        self._bound.add(topic)

    def _publish(self, topic: str, frame: bytes) -> None:
        self._channel.basic_publish(self._declare_exchange(topic), "", frame)

    @staticmethod
    def _each(fn: Callable[[str], None], queues: list[str]) -> None:
        for queue in queues:
            fn(queue)

    def _serve(self, queue: str) -> None:
        """Consume `queue`'s requests on a channel of their own, with the queue's prefetch."""
        if queue in self._request_channels or queue not in self._serving:
            return
        channel = self._conn.channel()
        channel.basic_qos(prefetch_count=self._prefetch.get(queue, self._options.prefetch))
        channel.queue_declare(_request_queue(queue), auto_delete=True)
        self._in_hand[channel] = 0

        def deliver(ch: Any, method: Any, props: Any, body: bytes) -> None:
            self._in_hand[channel] += 1
            tag = method.delivery_tag
            self._to_loop(self._listener.on_request, queue, body, lambda: self._call_soon(lambda: self._ack(channel, tag)))

        channel.basic_consume(_request_queue(queue), deliver)
        self._request_channels[queue] = channel

    def _stop_serving(self, queue: str) -> None:
        """Cancel `queue`'s request consumer; its channel closes once the requests in hand are acked."""
        channel = self._request_channels.pop(queue, None)
        if channel is None or not channel.is_open:
            return
        for tag in list(channel.consumer_tags):
            channel.basic_cancel(tag)
        self._cancelled.add(channel)
        self._close_if_idle(channel)

    def _ack(self, channel: Any, tag: int) -> None:
        if not channel.is_open:
            return  # its connection went: RabbitMQ requeued the request (its reply, if sent, counts)
        channel.basic_ack(tag)
        self._in_hand[channel] = self._in_hand.get(channel, 1) - 1
        self._close_if_idle(channel)

    def _close_if_idle(self, channel: Any) -> None:
        if channel in self._cancelled and self._in_hand.get(channel, 0) <= 0:
            self._cancelled.discard(channel)
            self._in_hand.pop(channel, None)
            channel.close()

    def _call_soon(self, fn: Callable[[], None]) -> None:
        """Run `fn` on the connection's thread, if the connection is still up (fire and forget)."""
        with self._lock:
            conn = self._conn
            if conn is None or not conn.is_open:
                return

            def call() -> None:
                try:
                    fn()
                except (pika.exceptions.AMQPError, OSError) as exc:
                    log.debug("acking a request failed: %r", exc)

            with contextlib.suppress(pika.exceptions.AMQPError):
                conn.add_callback_threadsafe(call)

    def _consumer_count(self, queue: str) -> int:
        if self._probe is None or not self._probe.is_open:
            self._probe = self._conn.channel()
        try:
            return int(self._probe.queue_declare(queue, passive=True).method.consumer_count)
        except pika.exceptions.ChannelClosedByBroker:
            self._probe = None  # 404: the queue does not exist, so nobody consumes it
            return 0

    def _on_reply(self, ch: Any, method: Any, props: Any, body: bytes) -> None:
        self._to_loop(self._listener.on_reply, body)

    def _to_loop(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            if self._loop is not None:
                self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:
            pass  # the loop is closed: nobody is waiting any more




def _request_queue(queue: str) -> str:
    """Where requests for (qualified) `queue` wait: an auto-delete queue that exists while someone consumes it."""
    return f"{queue}.requests"
