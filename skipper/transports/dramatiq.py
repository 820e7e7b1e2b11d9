"""Dramatiq transport: work queues are Dramatiq actors on its RabbitMQ or Redis broker.

The URL scheme picks the broker: `amqp://` -> `RabbitmqBroker`, `redis://` -> `RedisBroker`.

Work queues (`send` / `consume`) are plain Dramatiq: one actor and one queue per logical queue,
both named `<namespace>.<queue>`, so Dramatiq's own middleware does the work:
- `Retries` retries a failing handler with exponential backoff (`BusOptions.max_retries`,
  `retry_backoff_s`, `retry_backoff_max_s`); `Message.attempt` is its `retries` counter;
- `TimeLimit` interrupts a handler after `BusSettings.time_limit_s`;
- `AgeLimit` drops messages older than `BusSettings.max_age_s`;
- a failed message is dead-lettered by the broker (`<queue>.XQ`), and `_DeadLetterReports`
  also sends `Transport.dead_letter_report(...)` to the `dead_letters` queue;
- a message whose consumer died mid-handler (a killed trainer) comes back: RabbitMQ requeues
  it at once, Dramatiq's Redis broker once the dead worker missed heartbeats for
  `BusSettings.heartbeat_s`. `_Redeliveries` counts that as one more attempt, as the other
  transports do: it re-enqueues the message with its attempt raised, and dead-letters a
  message that has used up `max_retries` this way (one that keeps killing its consumers).

A `Worker` (threads: `BusSettings.worker_threads`) runs inside the transport. Handlers are
coroutines and run on the event loop the transport was started on: the actor, in a worker
thread, submits the handler to that loop and waits, so a handler's exception reaches `Retries`.
A consumer's `prefetch` is its queue's broker prefetch (unacked messages in this process); the
worker threads bound how many handlers of all queues run at once, so a handler that awaits a
request served by the same transport needs a spare thread. Each transport owns its broker,
actors and worker; nothing touches `dramatiq.set_broker`.

Requests and fanout are built beside Dramatiq on the same broker:
- RabbitMQ (pika, one connection in one thread): a request goes through the work queue with
  `reply_to` naming this transport's exclusive reply queue; `NoConsumers` comes from the work
  queue's `consumer_count`; fanout is a fanout exchange `<ns>.fanout.<topic>` with one exclusive
  queue per subscribing transport;
- Redis (redis.asyncio on the loop): replies and fanout are PUBLISH/SUBSCRIBE channels under
  `skipper:<ns>:`; a consumer's pub/sub connection also subscribes to `presence:<queue>`, and
  `request` reads `PUBSUB NUMSUB` for `NoConsumers` (a killed process's subscriptions go with
  its socket, so a dead server is noticed at once).
Request and fanout frames carry the envelope as a JSON header followed by the raw body.

Bytes bodies on work queues: Dramatiq encodes whole messages with one process-wide encoder
(JSON by default), which cannot carry bytes. `SkipperEncoder` wraps the current encoder: a
message without bytes is encoded exactly as before; one with bytes gets a small binary frame
(the inner encoding with placeholders, then each byte string raw), so artifacts are never
base64-encoded. `install_encoder()` installs it; every `DramatiqTransport` calls it.

For the `dramatiq` CLI: messages are ordinary Dramatiq messages for actor `actor_name(ns, queue)`
on queue `<ns>.<queue>` with one argument, the envelope dict. A worker module can declare a
compatible actor with `declare_actor(broker, ...)` after `install_encoder()`.

Dramatiq internals this relies on (dramatiq 2.x): `Worker._add_consumer` (queue filter and
per-queue prefetch), `_RabbitmqConsumer.requeue`, `MessageProxy._message`/`._exception`.

Broker configuration note: RabbitMQ closes a channel whose delivery stays unacked longer than
its `consumer_timeout` (30 minutes by default); set it above `bus.time_limit_s`, or a long
training run is redelivered (as its next attempt) while it is still going.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import struct
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlsplit

import dramatiq
import pika
import pika.exceptions
import redis
import redis.asyncio
from dramatiq.brokers.rabbitmq import RabbitmqBroker, _RabbitmqConsumer
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import dq_name, q_name, xq_name
from dramatiq.encoder import Encoder, JSONEncoder
from dramatiq.errors import BrokerConnectionError, BrokerError, ConnectionClosed
from dramatiq.middleware import AgeLimit, CurrentMessage, Middleware, Retries, SkipMessage, TimeLimit

from skipper.core import contracts
from skipper.core.bus import BusOptions, Handler, Transport
from skipper.core.errors import ConfigError, NoConsumers, RequestTimeout, Unavailable, from_payload
from skipper.core.messages import Message, new_id
from skipper.core.settings import BusSettings

log = logging.getLogger("skipper.transports.dramatiq")

T = TypeVar("T")

_WAIT_SLICE_S = 0.05  # how often a waiting actor runs Python code, so TimeLimit's interrupt lands
_CONNECT_TIMEOUT_S = 10.0
_DEADLINE = "skipper_deadline_ms"  # message option: a request nobody waits for any more is dropped
_BROKER_ERRORS = (BrokerError, pika.exceptions.AMQPError, redis.RedisError, OSError)


def actor_name(namespace: str, queue: str) -> str:
    """The Dramatiq actor (and queue) name of a logical queue."""
    return f"{namespace}.{queue}"


# --- bytes-aware encoding -------------------------------------------------------------------

_BLOB_KEY = "__skipper_blob__"
_BLOB_MAGIC = b"\x00SKB1"  # neither JSON nor pickle output starts with a NUL byte


class SkipperEncoder(Encoder):
    """Wraps a Dramatiq encoder so that byte strings travel raw, after the encoded message."""

    def __init__(self, inner: Encoder | None = None) -> None:
        self.inner = inner or JSONEncoder()

    def encode(self, data: dict[str, Any]) -> bytes:
        blobs: list[bytes] = []
        head = self.inner.encode(_stash(data, blobs))
        if not blobs:
            return head
        parts = [_BLOB_MAGIC, struct.pack(">II", len(head), len(blobs)), head]
        for blob in blobs:
            parts += [struct.pack(">Q", len(blob)), blob]
        return b"".join(parts)

    def decode(self, data: bytes) -> dict[str, Any]:
        if not data.startswith(_BLOB_MAGIC):
            return self.inner.decode(data)
        view = memoryview(data)
        pos = len(_BLOB_MAGIC)
        head_len, count = struct.unpack_from(">II", view, pos)
        pos += 8
        head = self.inner.decode(bytes(view[pos : pos + head_len]))
        pos += head_len
        blobs: list[bytes] = []
        for _ in range(count):
            (size,) = struct.unpack_from(">Q", view, pos)
            pos += 8
            blobs.append(_Blob(view[pos : pos + size]))
            pos += size
        restored: dict[str, Any] = _restore(head, blobs)
        return restored


class _Blob(bytes):
    """Decoded raw bytes whose repr stays short: Dramatiq logs a failed message with its arguments."""

    def __repr__(self) -> str:
        return f"<{len(self)} bytes>"


def _stash(value: Any, blobs: list[bytes]) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        blobs.append(bytes(value))
        return {_BLOB_KEY: len(blobs) - 1}
    if isinstance(value, dict):
        return {k: _stash(v, blobs) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_stash(v, blobs) for v in value]
    return value


def _restore(value: Any, blobs: list[bytes]) -> Any:
    if isinstance(value, dict):
        if len(value) == 1 and isinstance(value.get(_BLOB_KEY), int):
            return blobs[value[_BLOB_KEY]]
        return {k: _restore(v, blobs) for k, v in value.items()}
    if isinstance(value, list):
        return [_restore(v, blobs) for v in value]
    return value


_encoder_lock = threading.Lock()


def install_encoder() -> None:
    """Make Dramatiq's process-wide encoder bytes-aware (idempotent; wraps the current one)."""
    with _encoder_lock:
        current = dramatiq.get_encoder()
        if not isinstance(current, SkipperEncoder):
            dramatiq.set_encoder(SkipperEncoder(current))


# --- envelopes and frames -------------------------------------------------------------------


def _envelope(msg: Message) -> dict[str, Any]:
    """The actor's argument: the message without `attempt`, which Dramatiq's Retries counts."""
    return {
        "type": msg.type,
        "body": msg.body,
        "headers": msg.headers,
        "id": msg.id,
        "correlation_id": msg.correlation_id,
        "reply_to": msg.reply_to,
        "created_at": msg.created_at,
    }


def _from_envelope(env: dict[str, Any], attempt: int) -> Message:
    body = env.get("body", {})
    return Message(
        type=str(env.get("type", "")),
        body=bytes(body) if isinstance(body, bytes) else body,
        headers=dict(env.get("headers") or {}),
        id=str(env.get("id") or new_id()),
        correlation_id=env.get("correlation_id"),
        reply_to=env.get("reply_to"),
        created_at=float(env.get("created_at") or time.time()),
        attempt=attempt,
    )


_FRAME_MAGIC = b"SKF1"


def _pack(msg: Message, *, reply_for: str | None = None) -> bytes:
    """One request reply or fanout message: JSON header, then the raw body."""
    headers = msg.to_headers()
    if reply_for is not None:
        headers["x-reply-for"] = reply_for
    head = json.dumps(headers, separators=(",", ":")).encode()
    body = msg.body if isinstance(msg.body, bytes) else json.dumps(msg.body, separators=(",", ":")).encode()
    return b"".join((_FRAME_MAGIC, struct.pack(">I", len(head)), head, body))


def _unpack(data: bytes) -> tuple[Message, str | None]:
    """The message in a frame, and the request token it replies to (if any)."""
    if not data.startswith(_FRAME_MAGIC):
        raise ValueError("not a Skipper frame")
    (head_len,) = struct.unpack_from(">I", data, len(_FRAME_MAGIC))
    start = len(_FRAME_MAGIC) + 4
    headers = json.loads(data[start : start + head_len])
    raw = data[start + head_len :]
    body: bytes | dict[str, Any] = raw if headers.get("x-body-kind") == "bytes" else json.loads(raw)
    reply_for = headers.get("x-reply-for")
    return Message.from_headers(headers, body), reply_for


def _split_reply_to(reply_to: str) -> tuple[str, str] | None:
    address, sep, token = reply_to.rpartition("#")
    return (address, token) if sep and address and token else None


# --- Dramatiq pieces ------------------------------------------------------------------------


def _limits(options: BusOptions, settings: BusSettings) -> dict[str, int]:
    """Dramatiq's actor options from Skipper's settings (milliseconds; Retries treats 0 as unset)."""
    return {
        "max_retries": options.max_retries,
        "min_backoff": max(1, round(options.retry_backoff_s * 1000)),
        "max_backoff": max(1, round(options.retry_backoff_max_s * 1000)),
        "time_limit": max(1, round(settings.time_limit_s * 1000)),
        "max_age": max(1, round(settings.max_age_s * 1000)),
    }


def declare_actor(
    broker: dramatiq.Broker,
    namespace: str,
    queue: str,
    fn: Callable[[dict[str, Any]], None],
    *,
    options: BusOptions,
    settings: BusSettings,
) -> dramatiq.Actor[Any, Any]:
    """Declare the actor of a logical queue on `broker`, with the limits from Skipper's settings.

    The limits are actor options, so a broker with Dramatiq's default middleware (the CLI's)
    applies them too. `fn` receives the envelope dict; with the `CurrentMessage` middleware,
    `options["retries"]` of the current message is its attempt.
    """
    name = actor_name(namespace, queue)
    return dramatiq.Actor(
        fn, broker=broker, actor_name=name, queue_name=name, priority=0, options=_limits(options, settings)
    )


class _SharedTimeLimit(TimeLimit):
    """Dramatiq's TimeLimit whose watchdog thread is shared by every broker in the process.

    The watchdog never stops (the CLI starts one per process), and it tracks deadlines by
    thread id, so one per process serves every transport without leaking a thread each.
    """

    _manager: ClassVar[Any] = None
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, *, time_limit: float) -> None:
        super().__init__(time_limit=time_limit, interval=100)
        with _SharedTimeLimit._lock:
            if _SharedTimeLimit._manager is None:
                _SharedTimeLimit._manager = self.manager
                self.manager.start()
        self.manager = _SharedTimeLimit._manager

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        """Already started in `__init__`: there is no process boot when the worker is embedded."""


class ConsumerStopped(SkipMessage):
    """A work message whose consumer stopped before acknowledging it more often than retries allow."""


class _Redeliveries(Middleware):
    """Counts a delivery whose consumer died before finishing it as one more attempt.

    RabbitMQ flags such a delivery `redelivered`. Dramatiq's Redis broker requeues it without a
    mark, so each delivery leaves a "started" key that is deleted once it is finished: a key
    already there means an earlier consumer started it and never finished. A counted message is
    re-enqueued with `retries` raised (so repeated deaths add up) and this copy is dropped.

    A consumer that did not die but lost its connection (RabbitMQ requeues the delivery with its
    channel; the consumer thread reconnects and gets it back while the handler still runs here)
    must neither run it twice nor drop it: the copy is held unacknowledged, in its worker thread,
    until the handler finishes, then acknowledged (Dramatiq's Retries has enqueued any retry by
    then). If the process dies first, the broker still holds the copy and hands it to another
    worker as the next attempt. Dramatiq's Redis broker keeps an unacked message with its worker
    across a reconnect (only missed heartbeats requeue it), so there the copy rarely happens.
    """

    def __init__(self, transport: DramatiqTransport, started_ttl_ms: int) -> None:
        self.transport = transport
        self.started_ttl_ms = started_ttl_ms

    def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        env = message.args[0]
        if env.get("reply_to") is not None:
            return  # a request: its caller is waiting, just serve it
        done = self.transport.handler_done(str(env.get("id")), int(message.options.get("retries", 0)))
        if done is not None:
            log.warning("message %s on %s came back while its handler still runs here; holding the copy until it ends",
                        message.message_id, message.queue_name)
            while not done.wait(_WAIT_SLICE_S):
                pass
            raise SkipMessage("a copy of a message this process handled")
        if not self._started_before(broker, message):
            return  # first delivery
        attempt = int(message.options.get("retries", 0)) + 1
        max_retries = broker.get_actor(message.actor_name).options.get("max_retries", 0)
        if attempt > max_retries:
            message.fail()
            raise ConsumerStopped(f"its consumer stopped before acknowledging it {attempt} time(s)")
        log.warning("message %s on %s was not finished by its consumer; running it again as attempt %d",
                    message.message_id, message.queue_name, attempt + 1)
        broker.enqueue(message._message.copy(options={"retries": attempt}))
        raise SkipMessage("re-enqueued as the next attempt")  # acks this delivery

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: dramatiq.MessageProxy,
        *,
        result: Any | None = None,
        exception: BaseException | None = None,
    ) -> None:
        if isinstance(broker, RedisBroker):
            broker.client.delete(self._started_key(broker, message))

    def after_skip_message(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        self.after_process_message(broker, message)

    def _started_before(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> bool:
        if isinstance(broker, RedisBroker):
            key = self._started_key(broker, message)
            return not broker.client.set(key, b"1", nx=True, px=self.started_ttl_ms)
        return bool(getattr(message, "redelivered", False))

    @staticmethod
    def _started_key(broker: RedisBroker, message: dramatiq.MessageProxy) -> str:
        return f"{broker.namespace}:started:{message.options.get('redis_message_id')}"


class _FreshRequeueConsumer(_RabbitmqConsumer):
    """Gives back the messages a stopping worker prefetched but never started as fresh deliveries.

    Closing the channel would requeue them flagged `redelivered`, which `_Redeliveries` reads
    as "its consumer died mid-handler"; a graceful stop must not cost them an attempt.

    It also ignores acks for deliveries of a previous connection: Dramatiq sends a message's ack
    to its queue's current consumer, whose new channel numbers its deliveries from 1 again, so
    the stale tag would ack whichever new delivery has that number (a message never handled).
    """

    def __init__(self, broker: Any, queue_name: str, prefetch: int, timeout: int) -> None:
        super().__init__(broker, queue_name, prefetch, timeout)  # type: ignore[no-untyped-call]
        self._idle_s = timeout / 1000
        self._cancelled = False

    def __next__(self) -> Any:
        detached = self.broker.detached.get(q_name(self.queue_name))
        if detached is not None:
            return self._idle_detached(detached)
        message = super().__next__()  # type: ignore[no-untyped-call]
        # The first call sent basic.consume and had it confirmed: the broker now delivers here.
        self.broker.consuming.setdefault(q_name(self.queue_name), threading.Event()).set()
        if message is not None:
            message.skipper_consumer = self
        return message

    def _idle_detached(self, detached: threading.Event) -> None:
        """Consume nothing more, but keep the connection serving acks and heartbeats (this thread owns it)."""
        if not self._cancelled:
            self._cancelled = True
            try:
                # basic.cancel; what the broker sent that was not yet handed out goes back to the queue.
                self.channel.cancel()
            except (pika.exceptions.AMQPError, AssertionError) as exc:
                raise ConnectionClosed(exc) from None  # type: ignore[no-untyped-call]  # the channel is gone
            detached.set()
        try:
            self.connection.process_data_events(time_limit=self._idle_s)
        except (pika.exceptions.AMQPError, AssertionError) as exc:
            raise ConnectionClosed(exc) from None  # type: ignore[no-untyped-call]
        return None

    def _stale(self, message: Any) -> bool:
        """Delivered on a channel since closed: its tag means nothing (or another message) here."""
        return getattr(message, "skipper_consumer", self) is not self

    def ack(self, message: Any) -> None:
        if self._stale(message):
            log.debug("not acking message %s: its channel is gone and the broker requeued it", message.message_id)
            return
        super().ack(message)  # type: ignore[no-untyped-call]

    def nack(self, message: Any) -> None:
        if self._stale(message):
            log.debug("not nacking message %s: its channel is gone and the broker requeued it", message.message_id)
            return
        super().nack(message)  # type: ignore[no-untyped-call]

    def requeue(self, messages: Any) -> None:
        messages = [m for m in messages if not self._stale(m)]  # the broker requeued the others already
        if not messages:
            return
        try:
            # Stop deliveries to this channel first, or the copies come straight back to it.
            # (Called once the consumer thread has stopped, so this thread may use the channel.)
            self.channel.cancel()
        except (pika.exceptions.AMQPError, AssertionError):
            return  # the channel is gone: the broker requeues its unacked messages (flagged)
        for message in messages:
            try:
                self.broker.enqueue(message._message)
            except BrokerConnectionError:
                return
            self.ack(message)


class _RabbitmqBroker(RabbitmqBroker):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.detached: dict[str, threading.Event] = {}  # queue -> set once its consumer has cancelled
        self.consuming: dict[str, threading.Event] = {}  # queue -> set once this process's consumer is registered

    @property
    def consumer_class(self) -> type[_RabbitmqConsumer]:
        return _FreshRequeueConsumer


class _DeadLetterReports(Middleware):
    """Sends the dead-letter report once Dramatiq gives up on a work message.

    Declared before Retries, so its `after_*` hooks run after Retries has decided.
    """

    def __init__(self, transport: DramatiqTransport) -> None:
        self.transport = transport

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: dramatiq.MessageProxy,
        *,
        result: Any | None = None,
        exception: BaseException | None = None,
    ) -> None:
        if exception is not None and message.failed:
            # Retries has already counted this failure.
            self._report(message, exception, attempt=int(message.options.get("retries", 1)) - 1)

    def after_skip_message(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        if message.failed:  # AgeLimit gave up on it
            error = getattr(message, "_exception", None) or RuntimeError("message skipped")
            self._report(message, error, attempt=int(message.options.get("retries", 0)))

    def _report(self, message: dramatiq.MessageProxy, error: BaseException, *, attempt: int) -> None:
        try:
            env = message.args[0]
            msg = _from_envelope(env, max(0, attempt))
        except Exception:
            log.exception("cannot read dead-lettered message %s", message.message_id)
            return
        if msg.reply_to is not None:
            return  # a request: its caller got (or timed out waiting for) the answer
        queue = self.transport.logical(message.queue_name)
        log.error(
            "handler for %s failed %d times, dead-lettering: %s", queue, msg.attempt + 1, error,
            extra={"correlation_id": msg.correlation_id},
        )
        report = self.transport.dead_letter_report(queue, msg, error)
        if report is not None:
            self.transport.broker.enqueue(self.transport.dramatiq_message(contracts.DEAD_LETTERS, report))


class _Worker(dramatiq.Worker):
    """A Dramatiq Worker that consumes only the queues its transport consumes, each with its prefetch.

    Dramatiq's Worker consumes every queue its broker declares, and a broker declares the queues
    it merely sends to; `prefetch` maps the consumed queues to their prefetch.
    """

    def __init__(self, broker: dramatiq.Broker, *, prefetch: dict[str, int], threads: int, timeout_ms: int) -> None:
        super().__init__(broker, worker_threads=threads, worker_timeout=timeout_ms)
        self._prefetch = prefetch
        self._consumer_lock = threading.Lock()

    def _add_consumer(self, queue_name: str, *, delay: bool = False) -> None:
        canonical = q_name(queue_name)
        with self._consumer_lock:
            if canonical not in self._prefetch:
                return
            if not delay:
                self.queue_prefetch = self._prefetch[canonical]
            super()._add_consumer(queue_name, delay=delay)

    def watch(self, queue_name: str) -> None:
        """Consume `queue_name` (and its delay queue), even if the broker declared it earlier."""
        self._add_consumer(queue_name)
        self._add_consumer(dq_name(queue_name), delay=True)


# --- the transport --------------------------------------------------------------------------


class DramatiqTransport(Transport):
    """Work queues on Dramatiq actors; requests and fanout beside them on the same broker."""

    def __init__(
        self,
        options: BusOptions,
        *,
        url: str,
        settings: BusSettings,
        poll_interval_s: float = 0.2,
        redis_maintenance_chance: int = 100_000,
    ) -> None:
        """Build without I/O.

        `poll_interval_s` bounds how long idle Dramatiq threads sleep (close latency, retry-delay
        precision, Redis polling). `redis_maintenance_chance` (per million Redis commands) is how
        often Dramatiq's Redis broker looks for dead workers, whose unacked messages it requeues
        after `settings.heartbeat_s` without a heartbeat. It only requeues those of the queue the
        command was for, so Dramatiq's default (1,000) can leave a killed trainer's command
        waiting for minutes; a tenth of the commands costs two cheap sorted-set reads each.
        """
        super().__init__(options)
        scheme = urlsplit(url).scheme
        if scheme not in ("amqp", "amqps", "redis", "rediss"):
            raise ConfigError(f"the dramatiq transport needs an amqp:// or redis:// broker_url, not {scheme!r}://")
        self.kind = "rabbitmq" if scheme.startswith("amqp") else "redis"
        self.settings = settings
        self._timeout_ms = max(10, round(poll_interval_s * 1000))
        install_encoder()
        limits = _limits(options, settings)
        middleware: list[Middleware] = [
            _DeadLetterReports(self),
            AgeLimit(max_age=limits["max_age"]),
            _Redeliveries(self, started_ttl_ms=limits["max_age"]),
            _SharedTimeLimit(time_limit=limits["time_limit"]),
            CurrentMessage(),
            Retries(max_retries=options.max_retries, min_backoff=limits["min_backoff"],
                    max_backoff=limits["max_backoff"]),
        ]
        self.broker: RabbitmqBroker | RedisBroker
        self._side: _AmqpSide | _RedisSide
        if self.kind == "rabbitmq":
            self.broker = _RabbitmqBroker(url=url, confirm_delivery=True, middleware=middleware)
            if isinstance(self.broker.parameters, pika.connection.Parameters):
                self.broker.parameters.client_properties = {"connection_name": options.client_name("dramatiq")}
            self._side = _AmqpSide(self, url)
        else:
            self.broker = RedisBroker(  # type: ignore[no-untyped-call]
                client=redis.Redis.from_url(url, client_name=options.client_name("dramatiq")),
                namespace=f"skipper:{options.namespace}", middleware=middleware,
                heartbeat_timeout=settings.heartbeat_s * 1000 if settings.heartbeat_s > 0 else 60_000,
                maintenance_chance=redis_maintenance_chance,
            )
            self._side = _RedisSide(self, url)
        self._handlers: dict[str, list[Handler]] = {}
        self._turn: dict[str, int] = {}
        self._prefetch: dict[str, int] = {}
        self._subscribers: dict[str, list[Handler]] = {}
        self._pending: dict[str, asyncio.Future[Message]] = {}
        self._handling: dict[tuple[str, int], threading.Event] = {}  # (message id, attempt) -> set when handled
        self._handling_lock = threading.Lock()
        self._background: set[asyncio.Task[Any]] = set()
        self._worker: _Worker | None = None
        self._sender = ThreadPoolExecutor(1, thread_name_prefix="skipper-dramatiq-send")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = False
        self._closing: asyncio.Future[None] | None = None

    # --- lifecycle ----------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._started and self._closing is None and self._side.connected

    async def start(self) -> None:
        if self._started or self._closing is not None:
            return
        self._loop = asyncio.get_running_loop()
        await self._side.start(self._loop, topics=list(self._subscribers))
        self._started = True
        if self._handlers:
            self._ensure_worker()
            await self._side.consumers_attached(list(self._handlers))
        await self.notify_connected()

    async def close(self) -> None:
        if self._closing is not None:
            await asyncio.shield(self._closing)
            return
        self._closing = asyncio.get_running_loop().create_future()
        try:
            await self._shutdown()
        finally:
            self._closing.set_result(None)

    async def _shutdown(self) -> None:
        await self._side.withdraw()  # new requests get NoConsumers while in-flight ones finish
        if self._worker is not None:
            # Worker threads finish their messages (their handlers run on this loop), then ack.
            await asyncio.to_thread(self._worker.stop, round((self.settings.time_limit_s + 5) * 1000))
        await self._side.close()
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(Unavailable("the transport was closed while waiting for a reply"))
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        self._sender.shutdown(wait=True)
        await asyncio.to_thread(self._close_broker)

    def _close_broker(self) -> None:
        try:
            self.broker.close()
            if isinstance(self.broker, RedisBroker):
                self.broker.client.close()
        except Exception:
            log.debug("closing the dramatiq broker failed", exc_info=True)

    # --- work queues --------------------------------------------------------------------

    async def send(self, queue: str, msg: Message) -> None:
        await self._enqueue(self.dramatiq_message(queue, msg))

    def consume(self, queue: str, handler: Handler, *, prefetch: int | None = None) -> None:
        name = self.qualified(queue)
        if name not in self._handlers:
            self._handlers[name] = []
            declare_actor(self.broker, self.options.namespace, queue, self._actor_fn(queue),
                          options=self.options, settings=self.settings)
        self._handlers[name].append(handler)
        self._prefetch[name] = self._prefetch.get(name, 0) + (prefetch or self.options.prefetch)
        if self._started and self._closing is None:
            self._ensure_worker().watch(name)
            self._spawn(self._side.consumers_attached([name], wait=False))

    async def attach(self, queue: str, handler: Handler, *, prefetch: int | None = None) -> None:
        name = self.qualified(queue)
        if isinstance(self.broker, _RabbitmqBroker):
            consuming = self.broker.consuming.setdefault(name, threading.Event())
        self.consume(queue, handler, prefetch=prefetch)
        if not self._started or self._closing is not None:
            return
        if isinstance(self.broker, _RabbitmqBroker):
            # This process's own consumer, not just any: a peer consuming the queue proves nothing.
            if not await asyncio.to_thread(consuming.wait, _CONNECT_TIMEOUT_S):
                raise Unavailable(f"the consumer of {name} did not start within {_CONNECT_TIMEOUT_S:g}s")
        else:
            await self._side.consumers_attached([name])

    async def detach(self, queue: str) -> None:
        name = self.qualified(queue)
        await self._side.withdraw_queue(name)  # Redis: requests see no consumer here from now on
        if isinstance(self.broker, _RabbitmqBroker):
            cancelled = self.broker.detached.setdefault(name, threading.Event())
            # The queue's consumer thread cancels its consumer at its next poll.
            running = self._worker is not None and name in self._worker.consumers
            if running and not await asyncio.to_thread(cancelled.wait, _CONNECT_TIMEOUT_S):
                log.warning("the consumer of %s did not cancel within %.0fs", name, _CONNECT_TIMEOUT_S)
        # On Redis, Dramatiq's consumer keeps polling and serves what was already enqueued here;
        # what it prefetched but did not start goes back to the queue when the worker stops.

    def dramatiq_message(self, queue: str, msg: Message, **options: Any) -> dramatiq.Message[Any]:
        """The Dramatiq message carrying `msg` to the actor of `queue`."""
        name = actor_name(self.options.namespace, queue)
        return dramatiq.Message(queue_name=name, actor_name=name, args=(_envelope(msg),), kwargs={}, options=options)

    def logical(self, queue_name: str) -> str:
        """The logical queue of a Dramatiq queue name (the inverse of `qualified`)."""
        prefix = f"{self.options.namespace}."
        name = q_name(queue_name)
        return name[len(prefix) :] if name.startswith(prefix) else name

    async def _enqueue(self, message: dramatiq.Message[Any]) -> None:
        if self._closing is not None:
            raise Unavailable("the transport is closed")
        loop = asyncio.get_running_loop()
        try:
            # One sender thread: pika connections are per thread, and enqueue blocks on confirms.
            await loop.run_in_executor(self._sender, self.broker.enqueue, message)
        except _BROKER_ERRORS as exc:
            raise Unavailable(f"cannot enqueue on {message.queue_name}: {exc}") from exc

    def _ensure_worker(self) -> _Worker:
        if self._worker is None:
            self._worker = _Worker(self.broker, prefetch=self._prefetch, threads=self.settings.worker_threads,
                                   timeout_ms=self._timeout_ms)
            self._worker.start()
        return self._worker

    def _actor_fn(self, queue: str) -> Callable[[dict[str, Any]], None]:
        """The actor body: runs in a Dramatiq worker thread, runs the handler on the loop."""

        def run(envelope: dict[str, Any]) -> None:
            current = CurrentMessage.get_current_message()
            options = current.options if current is not None else {}
            deadline = options.get(_DEADLINE)
            if deadline is not None and time.time() * 1000 > deadline:
                log.info("dropping a request to %s whose caller stopped waiting", queue)
                return
            msg = _from_envelope(envelope, int(options.get("retries", 0)))
            loop = self._loop
            if loop is None or loop.is_closed():
                raise Unavailable("the transport's event loop is gone")
            with self._handling_message(msg):
                fut = asyncio.run_coroutine_threadsafe(self._serve(queue, msg), loop)
                try:
                    # Wait in slices: TimeLimit interrupts this thread only while it runs Python code.
                    while not fut.done():
                        concurrent.futures.wait([fut], timeout=_WAIT_SLICE_S)
                except BaseException:
                    fut.cancel()  # TimeLimitExceeded (or shutdown): stop the handler too
                    raise
                fut.result()

        run.__qualname__ = run.__name__ = f"consume_{queue}"
        return run

    @contextlib.contextmanager
    def _handling_message(self, msg: Message) -> Iterator[None]:
        """Record a work message as being handled here, for `wait_for_handler`."""
        if msg.reply_to is not None:
            yield
            return
        key, done = (msg.id, msg.attempt), threading.Event()
        with self._handling_lock:
            self._handling[key] = done
        try:
            yield
        finally:
            with self._handling_lock:
                if self._handling.get(key) is done:
                    del self._handling[key]
            done.set()

    def handler_done(self, message_id: str, attempt: int) -> threading.Event | None:
        """Set once this process's handler of that message has finished; None when none runs here."""
        with self._handling_lock:
            return self._handling.get((message_id, attempt))

    async def _serve(self, queue: str, msg: Message) -> None:
        name = self.qualified(queue)
        handlers = self._handlers[name]
        turn = self._turn.get(name, 0)
        self._turn[name] = turn + 1
        handler = handlers[turn % len(handlers)]
        if msg.reply_to is None:
            await handler(msg)  # raises into Dramatiq's Retries
            return
        outcome = await self.run_handler(queue, handler, msg)  # requests never retry: errors become replies
        target = _split_reply_to(msg.reply_to)
        if target is None or outcome.reply is None:
            log.warning("request on %s has an unusable reply_to %r", queue, msg.reply_to)
            return
        await self._side.reply(target[0], _pack(outcome.reply, reply_for=target[1]))

    # --- requests -----------------------------------------------------------------------

    async def request(self, queue: str, msg: Message, *, timeout: float) -> Message:
        if not self._started or self._closing is not None:
            raise NoConsumers(f"no consumer for queue {queue!r}", details={"queue": queue})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        token = new_id()
        fut: asyncio.Future[Message] = loop.create_future()
        try:
            async with asyncio.timeout_at(deadline):
                if not await self._side.has_consumers(self.qualified(queue)):
                    raise NoConsumers(f"no consumer for queue {queue!r}", details={"queue": queue})
                self._pending[token] = fut
                msg.reply_to = f"{self._side.reply_address()}#{token}"
                if msg.correlation_id is None:
                    msg.correlation_id = msg.id
                expires = round((time.time() + timeout) * 1000)
                await self._enqueue(self.dramatiq_message(queue, msg, max_retries=0, **{_DEADLINE: expires}))
                reply = await fut
        except TimeoutError:
            raise RequestTimeout(
                f"no reply from {queue!r} within {timeout:g}s", details={"queue": queue, "timeout_s": timeout}
            ) from None
        finally:
            self._pending.pop(token, None)
        if reply.is_error:
            raise from_payload(reply.data)
        return reply

    def _on_reply(self, data: bytes) -> None:
        try:
            reply, token = _unpack(data)
        except (ValueError, json.JSONDecodeError):
            log.warning("dropping an unreadable reply")
            return
        fut = self._pending.get(token or "")
        if fut is not None and not fut.done():
            fut.set_result(reply)

    # --- fanout -------------------------------------------------------------------------

    async def publish(self, topic: str, msg: Message) -> None:
        if self._closing is not None:
            raise Unavailable("the transport is closed")
        await self._side.publish(topic, _pack(msg))

    def subscribe(self, topic: str, handler: Handler) -> None:
        first = topic not in self._subscribers
        self._subscribers.setdefault(topic, []).append(handler)
        if first and self._started and self._closing is None:
            self._spawn(self._side.add_topic(topic))

    def _on_event(self, topic: str, data: bytes) -> None:
        try:
            msg, _ = _unpack(data)
        except (ValueError, json.JSONDecodeError):
            log.warning("dropping an unreadable message on topic %s", topic)
            return
        for handler in list(self._subscribers.get(topic, ())):
            self._spawn(self._deliver_event(topic, handler, msg))

    async def _deliver_event(self, topic: str, handler: Handler, msg: Message) -> None:
        try:
            await handler(msg)
        except Exception:
            log.exception("subscriber of %s failed", topic, extra={"correlation_id": msg.correlation_id})

    # --- plumbing -----------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("background bus task failed: %r", task.exception())

    def _on_reconnect(self) -> None:
        """Called on the loop when the side channel came back after a loss."""
        if self._closing is None:
            self._spawn(self.notify_connected())

    def declared_names(self) -> tuple[frozenset[str], frozenset[str]]:
        """Broker objects this transport declared: (queues with their .DQ/.XQ, exchanges). For cleanup tools."""
        queues = {n for q in self.broker.get_declared_queues() for n in (q, dq_name(q), xq_name(q))}
        return frozenset(queues), frozenset(self._side.exchanges())


# --- RabbitMQ side channel ------------------------------------------------------------------


class _AmqpSide:
    """Fanout, replies and consumer counts on one pika connection owned by one thread.

    pika's BlockingConnection is not thread-safe: every operation is handed to that thread
    with `add_callback_threadsafe` and awaited through a future. The thread reconnects with
    backoff and re-declares its reply queue and subscriptions.
    """

    def __init__(self, transport: DramatiqTransport, url: str) -> None:
        self._t = transport
        self._params = pika.URLParameters(url)
        self._params.heartbeat = transport.settings.heartbeat_s
        self._params.client_properties = {"connection_name": transport.options.client_name("dramatiq-side")}
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
        return f"{self._t.options.namespace}.fanout.{topic}"

    async def start(self, loop: asyncio.AbstractEventLoop, *, topics: list[str]) -> None:
        self._loop = loop
        self._topics.update(topics)
        self._thread = threading.Thread(target=self._run, name="skipper-dramatiq-amqp", daemon=True)
        self._thread.start()
        if not await asyncio.to_thread(self._ready.wait, _CONNECT_TIMEOUT_S):
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
        deadline = time.monotonic() + _CONNECT_TIMEOUT_S
        for queue in queues:
            while not await self.has_consumers(queue):
                if time.monotonic() > deadline:
                    log.warning("no consumer attached to %s after %.0fs", queue, _CONNECT_TIMEOUT_S)
                    return
                await asyncio.sleep(0.02)

    def reply_address(self) -> str:
        if self._reply_queue is None or not self.connected:
            raise Unavailable("not connected to RabbitMQ")
        return self._reply_queue

    async def has_consumers(self, queue: str) -> bool:
        return await self._submit(lambda: self._consumer_count(queue)) > 0

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
                    self._to_loop(self._t._on_reconnect)
                self._ready.set()
                while not self._stop.is_set():
                    self._conn.process_data_events(time_limit=0.1)
            except Exception as exc:
                log.warning("RabbitMQ side channel lost, reconnecting in %.1fs: %s", delay, exc)
            finally:
                self._drop()
            if self._stop.wait(delay):
                break
            delay = min(delay * 2, self._t.options.reconnect_backoff_max_s)

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
            self._to_loop(self._t._on_event, topic, body)

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
        self._to_loop(self._t._on_reply, body)

    def _to_loop(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            if self._loop is not None:
                self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:
            pass  # the loop is closed: nobody is waiting any more


# --- Redis side channel ---------------------------------------------------------------------


class _RedisSide:
    """Replies, fanout and consumer presence over PUBLISH/SUBSCRIBE, all on the event loop.

    A consumer's presence is its pub/sub connection's subscription to `presence:<queue>`:
    `PUBSUB NUMSUB` counts live consumers, and a killed process's subscriptions vanish with its
    socket, so requests get `NoConsumers` at once instead of waiting for a TTL to run out.
    """

    def __init__(self, transport: DramatiqTransport, url: str) -> None:
        self._t = transport
        self._client: redis.asyncio.Redis = redis.asyncio.Redis.from_url(
            url, client_name=transport.options.client_name("dramatiq-side")
        )
        self._prefix = f"skipper:{transport.options.namespace}"
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
        deadline = time.monotonic() + _CONNECT_TIMEOUT_S
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
            deadline = time.monotonic() + _CONNECT_TIMEOUT_S
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
            self._t._on_reply(message["data"])
        elif channel.startswith(f"{self._prefix}:topic:"):
            self._t._on_event(channel[len(self._prefix) + 7 :], message["data"])

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
                delay = min(delay * 2, self._t.options.reconnect_backoff_max_s)
                continue
            delay = 0.1
            if not self.connected:
                self.connected = True
                self._t._on_reconnect()
            if message is not None:
                self._dispatch(message)
