"""`AmqpSide`: replies, fanout and consumer counts beside Dramatiq on RabbitMQ.

A request goes through the work queue with `reply_to` naming this transport's exclusive reply
queue; `NoConsumers` comes from the work queue's `consumer_count`; fanout is a fanout exchange
`<ns>.fanout.<topic>` with one exclusive queue per subscribing transport.
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

    carries_requests = False  # requests are Dramatiq messages: RabbitMQ pushes them, nothing polls

    def __init__(self, listener: SideListener, url: str, options: BusOptions) -> None:
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
        """Nothing to do: RabbitMQ drops a consumer from `consumer_count` when its channel closes."""

    async def withdraw_queue(self, queue: str) -> None:
        """Nothing to do: RabbitMQ drops a consumer from `consumer_count` when it is cancelled."""

    async def consumers_attached(self, queues: list[str], *, wait: bool = True) -> None:
        """Wait until the broker counts a consumer on each queue (Dramatiq attaches them in threads)."""
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

    async def send_request(self, queue: str, frame: bytes, *, timeout: float) -> None:
        raise NotImplementedError("on RabbitMQ, requests are Dramatiq messages (RabbitMQ pushes them: no polling)")

    async def publish(self, topic: str, frame: bytes) -> None:
        await self._submit(lambda: self._publish(topic, frame))

    async def reply(self, address: str, frame: bytes) -> None:
        await self._submit(lambda: self._channel.basic_publish("", address, frame))

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
            if self._stop.wait(delay):
                break
            delay = min(delay * 2, self._options.reconnect_backoff_max_s)

    def _connect(self) -> None:
        conn = pika.BlockingConnection(self._params)
        channel = conn.channel()
        channel.confirm_delivery()
        self._reply_queue = channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
        channel.basic_consume(self._reply_queue, self._on_reply, auto_ack=True)
        with self._lock:
            self._conn, self._channel, self._probe = conn, channel, None
        self._exchanges.clear()
        self._bound.clear()
        for topic in list(self._topics):
            self._bind(topic)

    def _drop(self) -> None:
        with self._lock:
            conn, self._conn, self._channel, self._probe = self._conn, None, None, None
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


