"""RabbitMQ transport on pika.

How asyncio and pika meet: there is no pika thread. The transport drives pika's
`AsyncioConnection` adapter on the event loop it was started on, so every pika callback
(deliveries, confirms, channel and connection events, heartbeats) runs on that loop, and
handlers (coroutines) are plain tasks on the same loop. Nothing is ever handed across
threads, which keeps pika single-threaded as it requires and keeps the predict path free
of thread hops. The flip side: a handler must not block the loop (DESIGN.md already puts
blocking work such as training in a worker thread owned by the module), otherwise
heartbeats stall with everything else on the loop.

Topology, for a namespace `ns` and a logical queue `q` or topic `t`:
- `ns.q`: durable work queue; messages persistent, published with publisher confirms;
  each consumer has its own channel with `basic_qos(prefetch)`, and a delivery is acked
  only after its handler returned (and after its retry or dead letter is confirmed).
- `ns.q.retry.<ms>`: durable delay queue, one per distinct backoff delay, with a queue TTL
  of `<ms>` that dead-letters back into `ns.q`. A failed message is republished there with
  `attempt + 1`, confirmed, and only then acked, so a pending retry lives in the broker and
  survives a crash of this process. (One queue per delay, not a per-message expiration,
  because RabbitMQ only expires messages at the head of a queue: a long delay would hold
  back a short one.)
- `ns.q.dlq`: durable dead-letter queue: a message that failed `max_retries + 1` times lands
  there, and `Transport.dead_letter_report` is sent to the `dead_letters` queue.
- `ns.t`: fanout exchange; each subscriber binds its own exclusive, auto-delete,
  server-named queue and handles its messages in order.
- requests use direct reply-to (`amq.rabbitmq.reply-to`) on one channel per connection:
  no queue per request; the AMQP `correlation_id` is a per-request key (the envelope's own
  correlation id travels in the headers); the request carries an AMQP `expiration` equal
  to its timeout so a stale request is dropped rather than handled after the caller left.

Wire format: a dict body is JSON (`application/json`), a bytes body goes as it is
(`application/octet-stream`), never base64. The envelope rides in AMQP properties (`type`,
`message_id`, `timestamp`, `content_type`, `delivery_mode`) and headers (`x-correlation-id`,
`x-attempt`, `x-created-at` as a string, then the message's own headers). Header values an
AMQP table cannot carry through pika (floats, nested maps, huge ints) are JSON-encoded and
listed in `x-skipper-json`, so they come back as they went. Work-queue publishes are
`mandatory`: if a queue was deleted behind the per-connection declare cache, the broker
returns the message, and the transport declares the queue again and republishes.

`Message.attempt` travels in the `x-attempt` header. A work message the broker redelivers
because its consumer died before acking (the `redelivered` flag: a trainer killed mid-run)
counts as one more attempt. Classic queues do not count redeliveries, so the transport
re-stamps it: it republishes the message with `attempt + 1` (confirmed), acks the
redelivered copy, and the re-stamped message then runs like any other. Once a message has
used up every attempt this way (one that keeps killing its consumer) it is dead-lettered
instead of crashing consumers forever. Requests are never re-stamped: their caller waits.

`NoConsumers`: before a request is published, the target queue's consumer count comes from
a passive declare. A positive count is cached for `PRESENCE_TTL_S` and refreshed in the
background once older than `PRESENCE_REFRESH_S`, so the steady-state predict path costs no
extra round trip; a zero count or a missing queue is never cached. The request is also
published `mandatory`, so a queue deleted since the check comes back as `NoConsumers` too.

Reconnect: when the connection drops (broker restart, `rabbitmqctl close_connection`, a
channel error on a channel the transport relies on), everything tied to it is dropped at
once: in-flight requests and unconfirmed sends fail with `Unavailable`, and until a new
connection is up `send`/`publish`/`request` raise `Unavailable` immediately. A background
task reconnects with jittered exponential backoff (capped at
`BusOptions.reconnect_backoff_max_s`), re-declares the topology, restarts every consumer
and subscriber, then awaits `notify_connected()` on the loop.

Work handlers outlive a dropped link, and the transport never lets that lose a message. The
guarantee: a work message is acknowledged only after its handler's outcome (done, a retry, a
dead letter) is in the broker, and until then the broker holds a copy. When the link drops
mid-handler, the broker requeues the delivery and hands it back (flagged redelivered) once we
are reconnected, while the handler still runs here. That copy is not run again and not counted
as an attempt: it is parked unacknowledged, and when the handler finishes its outcome is settled
through the copy (the original delivery died with its channel). A second drop just parks the
next copy. If this process dies meanwhile, the parked copy goes back to the queue and another
consumer runs it as the next attempt (so a trainer killed after a drop loses no task). An
outcome reached while the link is down, with no copy back yet, waits `UNSETTLED_TTL_S` for the
copy; a copy the broker hands to another process instead is run there (at least once).

Broker configuration note: RabbitMQ closes a channel whose delivery stays unacked longer
than its `consumer_timeout` (30 minutes by default); set it above the longest training run
(`bus.time_limit_s`), or the run is redelivered while it is still going.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import random
import socket
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import pika
import pika.exceptions
from pika.adapters.asyncio_connection import AsyncioConnection

from skipper.core import contracts
from skipper.core.bus import BusOptions, Handler, HandlerOutcome, Transport
from skipper.core.errors import NoConsumers, RequestTimeout, Unavailable, from_payload
from skipper.core.messages import Message
from skipper.core.settings import BusSettings

log = logging.getLogger("skipper.transports.rabbitmq")

JSON_TYPE = "application/json"
BYTES_TYPE = "application/octet-stream"
REPLY_TO = "amq.rabbitmq.reply-to"

PRESENCE_TTL_S = 1.0  # how long a positive consumer count is trusted without a new check
PRESENCE_REFRESH_S = 0.25  # past this age a positive count is refreshed in the background
RPC_TIMEOUT_S = 5.0  # channel-level round trips (declare, qos, consume, cancel)
CONNECT_TIMEOUT_S = 10.0
RECONNECT_FIRST_S = 0.2
SPARE_CHANNELS = 4
UNSETTLED_TTL_S = 600.0  # how long an outcome waits for its message's copy to come back
UNSETTLED_MAX = 10_000
_COALESCE_MAX_BYTES = 64 * 1024  # above this, copying frames costs more than a syscall

# Header values AMQP tables cannot carry faithfully (pika cannot encode floats at all) are
# JSON-encoded; this header lists their keys so the receiver decodes them back.
_JSON_KEYS = "x-skipper-json"
_INT64 = (-(2**63), 2**63 - 1)
_IN_PROPERTIES = ("x-type", "x-id", "x-body-kind")


# --- wire format -------------------------------------------------------------------------


def _to_table(headers: dict[str, Any]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    json_keys: list[str] = []
    for key, value in headers.items():
        native = value is None or isinstance(value, str | bool | bytes)
        if native or (isinstance(value, int) and _INT64[0] <= value <= _INT64[1]):
            table[key] = value
        else:
            table[key] = json.dumps(value, separators=(",", ":"))
            json_keys.append(key)
    if json_keys:
        table[_JSON_KEYS] = json_keys
    return table


def _from_table(table: dict[str, Any] | None) -> dict[str, Any]:
    headers = dict(table or {})
    for key in headers.pop(_JSON_KEYS, None) or ():
        if isinstance(headers.get(key), str):
            headers[key] = json.loads(headers[key])
    return headers


def encode(
    msg: Message,
    *,
    persistent: bool,
    reply_to: str | None = None,
    correlation_id: str | None = None,
    expiration_ms: int | None = None,
    extra_headers: dict[str, Any] | None = None,
) -> tuple[bytes, pika.BasicProperties]:
    """The AMQP body and properties of `msg`: dicts as JSON, bytes as they are."""
    if isinstance(msg.body, bytes):
        body, content_type = msg.body, BYTES_TYPE
    else:
        body, content_type = json.dumps(msg.body, separators=(",", ":")).encode(), JSON_TYPE
    headers = msg.to_headers()
    # Type, id and body kind ride in AMQP properties (type, message_id, content_type); fewer
    # header entries is less work for pika on every message of the request path.
    for key in _IN_PROPERTIES:
        headers.pop(key, None)
    # A string, not a float: AMQP tables through pika cannot carry floats, and
    # `Message.from_headers` parses either.
    headers["x-created-at"] = repr(msg.created_at)
    if extra_headers:
        headers.update(extra_headers)
    props = pika.BasicProperties(
        content_type=content_type,
        headers=_to_table(headers),
        message_id=msg.id,
        type=msg.type[:255],
        timestamp=int(msg.created_at),
        delivery_mode=2 if persistent else 1,
        reply_to=reply_to,
        correlation_id=correlation_id,
        expiration=str(expiration_ms) if expiration_ms is not None else None,
    )
    return body, props


def decode(props: pika.BasicProperties, body: bytes) -> Message:
    """The envelope back from AMQP properties and body (tolerates foreign publishers)."""
    headers = _from_table(props.headers)
    headers.setdefault("x-type", props.type or "")
    if props.message_id:
        headers.setdefault("x-id", props.message_id)
    if props.content_type == BYTES_TYPE:
        payload: dict[str, Any] | bytes = bytes(body)
    else:
        payload = json.loads(body) if body else {}
        if not isinstance(payload, dict):
            payload = {"value": payload}
    return Message.from_headers(headers, payload, reply_to=props.reply_to)


# --- channels and connections ------------------------------------------------------------


class ChannelGone(Unavailable):
    """The channel an operation ran on closed (the broker refused it, or the link died)."""

    def __init__(self, reason: BaseException | None) -> None:
        super().__init__(f"channel closed: {reason!r}")
        self.reply_code = int(getattr(reason, "reply_code", 0) or 0)


class Unroutable(Unavailable):
    """A message published `mandatory` reached no queue (e.g. its queue was deleted)."""


class _Channel:
    """A pika channel whose RPCs and confirms are futures that fail when it closes."""

    def __init__(self, raw: Any, loop: asyncio.AbstractEventLoop, on_lost: Callable[[_Channel], None] | None) -> None:
        self.raw = raw
        self._loop = loop
        self._on_lost = on_lost
        self._waiters: set[asyncio.Future[Any]] = set()
        self._confirms: dict[int, asyncio.Future[None]] = {}
        self._mandatory: dict[int, str | None] = {}  # tag -> message id, for mandatory publishes
        self._returned: set[int] = set()
        self._published = 0
        self.closed_by_us = False
        raw.add_on_close_callback(self._on_close)

    @property
    def is_open(self) -> bool:
        return bool(self.raw.is_open)

    def expect(self) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._waiters.add(fut)
        fut.add_done_callback(self._waiters.discard)
        return fut

    def publish(self, exchange: str, routing_key: str, body: bytes, props: Any, *, mandatory: bool = False) -> None:
        try:
            self.raw.basic_publish(exchange, routing_key, body, props, mandatory=mandatory)
        except pika.exceptions.AMQPError as exc:
            raise Unavailable(f"cannot publish to RabbitMQ: {exc!r}") from exc

    def publish_confirmed(
        self, exchange: str, routing_key: str, body: bytes, props: Any, *, mandatory: bool = False
    ) -> asyncio.Future[None]:
        """Publish on a channel in confirm mode; the future settles with the broker's ack.

        With `mandatory`, a message no queue took fails with `Unroutable` instead.
        """
        self.publish(exchange, routing_key, body, props, mandatory=mandatory)
        self._published += 1
        fut: asyncio.Future[None] = self._loop.create_future()
        self._confirms[self._published] = fut
        if mandatory:
            self._mandatory[self._published] = props.message_id
        return fut

    def on_return(self, _raw: Any, _method: Any, props: Any, _body: bytes) -> None:
        # The broker sends basic.return just before the ack of the same message, which
        # names no delivery tag: match the oldest unconfirmed mandatory publish of that id.
        for tag, message_id in self._mandatory.items():
            if message_id == props.message_id and tag not in self._returned:
                self._returned.add(tag)
                return

    def on_confirm(self, frame: Any) -> None:
        method = frame.method
        ok = isinstance(method, pika.spec.Basic.Ack)
        if method.multiple:
            # Tags are inserted in increasing order, so the oldest come first.
            while self._confirms:
                tag = next(iter(self._confirms))
                if tag > method.delivery_tag:
                    break
                self._settle(tag, self._confirms.pop(tag), ok)
        else:
            fut = self._confirms.pop(method.delivery_tag, None)
            if fut is not None:
                self._settle(method.delivery_tag, fut, ok)

    def _settle(self, tag: int, fut: asyncio.Future[None], ok: bool) -> None:
        self._mandatory.pop(tag, None)
        returned = tag in self._returned
        self._returned.discard(tag)
        if fut.done():
            return
        if returned:
            fut.set_exception(Unroutable("no queue took the message"))
        elif ok:
            fut.set_result(None)
        else:
            fut.set_exception(Unavailable("RabbitMQ refused the message (nack)"))

    def ack(self, delivery_tag: int) -> None:
        """Ack on this channel if it is still open; a closed channel's deliveries were requeued."""
        if self.raw.is_open:
            with contextlib.suppress(pika.exceptions.AMQPError):
                self.raw.basic_ack(delivery_tag)

    def close(self) -> None:
        self.closed_by_us = True
        if self.raw.is_open:
            with contextlib.suppress(pika.exceptions.AMQPError):
                self.raw.close()

    def _on_close(self, _raw: Any, reason: BaseException) -> None:
        err = ChannelGone(reason)
        pending = [*self._waiters, *self._confirms.values()]
        self._confirms.clear()
        self._mandatory.clear()
        self._returned.clear()
        for fut in pending:
            if not fut.done():
                fut.set_exception(err)
        if self._on_lost is not None and not self.closed_by_us:
            self._on_lost(self)


class _Connection(AsyncioConnection):  # type: ignore[misc]  # pika is untyped
    """pika's asyncio connection, writing each published message as one buffer.

    pika hands the transport a message's method, header and body frames separately, and
    the transport then makes one `send()` system call per frame; joining the frames of one
    small message first roughly halves the syscalls on the request path.
    """

    def _output_marshaled_frames(self, marshaled_frames: list[bytes]) -> None:
        if len(marshaled_frames) > 1 and sum(map(len, marshaled_frames)) <= _COALESCE_MAX_BYTES:
            data = b"".join(marshaled_frames)
            self.bytes_sent += len(data)
            self.frames_sent += len(marshaled_frames)
            self._adapter_emit_data(data)
        else:
            super()._output_marshaled_frames(marshaled_frames)


class _Link:
    """One AMQP connection and everything that lives on it; replaced wholesale on reconnect."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.conn: Any = None
        self.publisher: _Channel | None = None  # confirm mode: send, publish, retries, dead letters
        self.rpc: _Channel | None = None  # direct reply-to consumer and request publishes
        self.spare: list[_Channel] = []  # short RPCs that may close a channel (passive declares)
        self.declared: dict[str, asyncio.Future[None]] = {}
        self.presence: dict[str, tuple[int, float]] = {}
        self.probes: dict[str, asyncio.Future[int]] = {}
        self.opening: set[asyncio.Future[Any]] = set()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.blocked = False
        self.closing = False

    @property
    def is_open(self) -> bool:
        return self.conn is not None and bool(self.conn.is_open) and not self.closing

    def on_closed(self, reason: BaseException | None) -> None:
        for fut in list(self.opening):
            if not fut.done():
                fut.set_exception(Unavailable(f"connection closed: {reason!r}"))
        if not self.closed.done():
            self.closed.set_result(None)

    def abort(self) -> None:
        """Close the connection, whatever state it is in."""
        self.closing = True
        if self.conn is not None and not (self.conn.is_closed or self.conn.is_closing):
            with contextlib.suppress(pika.exceptions.AMQPError):
                self.conn.close()


@dataclass(eq=False)
class _Consumer:
    queue: str
    handler: Handler
    prefetch: int
    link: _Link | None = None
    channel: _Channel | None = None
    tag: str | None = None


@dataclass(eq=False)
class _Handling:
    """A work message whose handler runs in this process, and the copies the broker handed back meanwhile."""

    copies: list[tuple[_Channel, int]] = field(default_factory=list)


@dataclass(eq=False)
class _Unsettled:
    """A handler's outcome that found no open delivery to settle on: applied to the copy when it comes back."""

    msg: Message
    outcome: HandlerOutcome | None  # None: already carried out, only the ack is owed
    expires: float


@dataclass(eq=False)
class _Subscriber:
    topic: str
    handler: Handler
    inbox: asyncio.Queue[tuple[_Channel, int, Message]] = field(default_factory=asyncio.Queue)
    link: _Link | None = None
    channel: _Channel | None = None
    tag: str | None = None
    worker: asyncio.Task[None] | None = None
    busy: bool = False


# --- the transport -----------------------------------------------------------------------


class RabbitMQTransport(Transport):
    """The bus over RabbitMQ (see the module docstring for topology and threading)."""

    def __init__(
        self,
        options: BusOptions,
        *,
        url: str,
        settings: BusSettings,
        connection_name: str | None = None,
        start_timeout_s: float = 30.0,
    ) -> None:
        super().__init__(options)
        self.settings = settings
        self.connection_name = connection_name or options.client_name(f"{socket.gethostname()}:{os.getpid()}")
        self._params = pika.URLParameters(url)
        if "heartbeat" not in url:
            self._params.heartbeat = settings.heartbeat_s
        self._params.client_properties = {"connection_name": self.connection_name, "product": "skipper"}
        self._params.connection_attempts = 1
        self._params.socket_timeout = 5.0
        self._params.stack_timeout = CONNECT_TIMEOUT_S
        # Publishing while the broker blocks us (resource alarm) raises at once; if the alarm
        # lasts, pika drops the connection and the reconnect loop takes over.
        self._params.blocked_connection_timeout = max(30.0, settings.request_timeout_s)
        self._start_timeout_s = start_timeout_s
        self._confirm_timeout_s = settings.request_timeout_s

        self._loop: asyncio.AbstractEventLoop | None = None
        self._link: _Link | None = None
        self._consumers: list[_Consumer] = []
        self._subscribers: list[_Subscriber] = []
        self._waiting: dict[str, asyncio.Future[Message]] = {}
        self._keys = itertools.count()
        self._key_prefix = uuid.uuid4().hex[:12]
        self._inflight: set[asyncio.Task[None]] = set()
        self._handling: dict[tuple[str, int], _Handling] = {}  # (message id, attempt) -> its copies
        self._unsettled: OrderedDict[tuple[str, int], _Unsettled] = OrderedDict()
        self._background: set[asyncio.Task[Any]] = set()
        self._reconnect_task: asyncio.Task[None] | None = None
        self._close_task: asyncio.Future[None] | None = None
        self._started = False
        self._connecting = False
        self._closing = False
        self._objects: set[tuple[str, str]] = set()

    # --- public surface ------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._link is not None and self._link.is_open and not self._closing

    @property
    def broker_objects(self) -> frozenset[tuple[str, str]]:
        """`("queue" | "exchange", name)` for every named object this transport declared."""
        return frozenset(self._objects)

    async def start(self) -> None:
        """Connect (retrying until `start_timeout_s`), start consumers, notify listeners."""
        if self._started or self._closing:
            return
        self._started = True
        loop = self._loop = asyncio.get_running_loop()
        deadline = loop.time() + self._start_timeout_s
        for attempt in itertools.count():
            try:
                await self._connect()
                break
            except Exception as exc:
                delay = self._backoff(attempt)
                if self._closing or loop.time() + delay > deadline:
                    self._started = False
                    raise Unavailable(f"cannot connect to RabbitMQ: {exc!r}") from exc
                log.warning("cannot connect to RabbitMQ (%r); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
        for sub in self._subscribers:
            self._ensure_worker(sub)
        await self.notify_connected()

    async def close(self) -> None:
        if self._close_task is None:
            self._close_task = asyncio.ensure_future(self._close())
        await asyncio.shield(self._close_task)

    async def send(self, queue: str, msg: Message) -> None:
        link = self._require_link()
        await self._publish_to_queue(link, self.qualified(queue), msg)

    def consume(self, queue: str, handler: Handler, *, prefetch: int | None = None) -> None:
        if self._closing:
            return
        consumer = _Consumer(queue, handler, max(1, min(prefetch or self.options.prefetch, 65535)))
        self._consumers.append(consumer)
        link = self._link
        if link is not None and link.is_open:
            self._spawn(self._start_late(link, self._start_consumer, consumer))

    async def attach(self, queue: str, handler: Handler, *, prefetch: int | None = None) -> None:
        if self._closing:
            raise Unavailable("the transport is closed", details={"transport": "rabbitmq"})
        consumer = _Consumer(queue, handler, max(1, min(prefetch or self.options.prefetch, 65535)))
        self._consumers.append(consumer)
        if not self._started:
            return  # starts with the others
        link = self._require_link()  # if not, it starts on the reconnection
        try:
            await self._start_consumer(link, consumer)
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
            await self._cancel_consumer(channel, tag)
            self._spawn(self._close_when_idle(channel))

    async def _close_when_idle(self, channel: _Channel) -> None:
        # Every delivery of this channel arrived before its cancel-ok: its task is in this snapshot.
        await asyncio.gather(*list(self._inflight), return_exceptions=True)
        channel.close()

    async def request(self, queue: str, msg: Message, *, timeout: float) -> Message:
        link = self._require_link()
        name = self.qualified(queue)
        if not await self._has_consumer(link, name):
            raise NoConsumers(f"no consumer for queue {queue!r}", details={"queue": queue})
        assert link.rpc is not None and self._loop is not None
        key = f"{self._key_prefix}.{next(self._keys)}"
        msg.reply_to = REPLY_TO
        if msg.correlation_id is None:
            msg.correlation_id = msg.id
        body, props = encode(
            msg, persistent=False, reply_to=REPLY_TO, correlation_id=key, expiration_ms=max(1, int(timeout * 1000))
        )
        fut: asyncio.Future[Message] = self._loop.create_future()
        self._waiting[key] = fut
        timer = self._loop.call_later(timeout, _expire, fut, queue, timeout)
        try:
            link.rpc.publish("", name, body, props, mandatory=True)
            reply = await fut
        finally:
            timer.cancel()
            self._waiting.pop(key, None)
        if reply.is_error:
            raise from_payload(reply.data)
        return reply

    async def publish(self, topic: str, msg: Message) -> None:
        link = self._require_link()
        exchange = self.qualified(topic)
        await self._declare_exchange(link, exchange)
        await self._publish_confirmed(link, exchange, "", msg, persistent=False)

    def subscribe(self, topic: str, handler: Handler) -> None:
        if self._closing:
            return
        sub = _Subscriber(topic, handler)
        self._subscribers.append(sub)
        if self._started:
            self._ensure_worker(sub)
        link = self._link
        if link is not None and link.is_open:
            self._spawn(self._start_late(link, self._start_subscriber, sub))

    # --- connection lifecycle --------------------------------------------------------------

    def _backoff(self, attempt: int) -> float:
        cap = self.options.reconnect_backoff_max_s
        return float(min(cap, RECONNECT_FIRST_S * 2**attempt) * random.uniform(0.5, 1.0))

    def _require_link(self) -> _Link:
        link = self._link
        if link is None or not link.is_open or self._closing:
            raise Unavailable("not connected to RabbitMQ", details={"transport": "rabbitmq"})
        if link.blocked:
            raise Unavailable("RabbitMQ is blocking publishers (resource alarm)", details={"transport": "rabbitmq"})
        return link

    async def _open_link(self) -> _Link:
        assert self._loop is not None
        loop = self._loop
        link = _Link(loop)
        opened: asyncio.Future[None] = loop.create_future()

        def on_open(_conn: Any) -> None:
            if not opened.done():
                opened.set_result(None)

        def on_open_error(_conn: Any, exc: BaseException) -> None:
            link.on_closed(exc)
            if not opened.done():
                opened.set_exception(exc if isinstance(exc, Exception) else Unavailable(repr(exc)))

        def on_close(_conn: Any, reason: BaseException) -> None:
            link.on_closed(reason)
            self._on_link_closed(link, reason)

        link.conn = _Connection(
            self._params,
            on_open_callback=on_open,
            on_open_error_callback=on_open_error,
            on_close_callback=on_close,
            custom_ioloop=loop,
        )
        try:
            await asyncio.wait_for(opened, CONNECT_TIMEOUT_S)
        except BaseException:
            link.abort()
            raise
        link.conn.add_on_connection_blocked_callback(lambda *_: setattr(link, "blocked", True))
        link.conn.add_on_connection_unblocked_callback(lambda *_: setattr(link, "blocked", False))
        return link

    async def _connect(self) -> None:
        """Open a connection and set up everything on it (one attempt; callers retry)."""
        self._connecting = True
        try:
            await self._connect_once()
        finally:
            self._connecting = False

    async def _connect_once(self) -> None:
        link = await self._open_link()
        try:
            link.publisher = publisher = await self._open_channel(link, essential=True)
            await self._rpc(publisher, lambda cb: publisher.raw.confirm_delivery(publisher.on_confirm, callback=cb))
            publisher.raw.add_on_return_callback(publisher.on_return)
            link.rpc = rpc = await self._open_channel(link, essential=True)
            rpc.raw.add_on_return_callback(self._on_return)
            await self._rpc(rpc, lambda cb: rpc.raw.basic_consume(REPLY_TO, self._on_reply, auto_ack=True, callback=cb))
            if self._closing:
                raise Unavailable("transport closed while connecting")
            # Usable from here on: a handler that runs as soon as its consumer starts (a
            # message was waiting) may already send, reply, retry and dead-letter.
            self._link = link
            # Index loops: a consumer registered while we connect is picked up here.
            i = 0
            while i < len(self._consumers):
                await self._start_consumer(link, self._consumers[i])
                i += 1
            i = 0
            while i < len(self._subscribers):
                await self._start_subscriber(link, self._subscribers[i])
                i += 1
        except BaseException:
            if self._link is link:
                self._link = None  # the caller retries; no second reconnect from on-close
            link.abort()
            raise
        log.info("connected to RabbitMQ as %s", self.connection_name)

    def _on_link_closed(self, link: _Link, reason: BaseException) -> None:
        if self._link is not link:
            return  # a connection that never finished setting up, or one we replaced
        self._link = None
        lost = Unavailable(f"connection to RabbitMQ lost: {reason!r}")
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(lost)
        if self._closing or self._connecting:
            return  # closing on purpose, or lost while still setting up: that attempt's caller retries
        log.warning("lost the connection to RabbitMQ (%r); reconnecting", reason)
        assert self._loop is not None
        self._reconnect_task = self._loop.create_task(self._reconnect())

    async def _reconnect(self) -> None:
        for attempt in itertools.count():
            if self._closing:
                return
            await asyncio.sleep(self._backoff(attempt))
            if self._closing:
                return
            try:
                await self._connect()
            except Exception as exc:
                log.warning("reconnect to RabbitMQ failed (attempt %d): %r", attempt + 1, exc)
                continue
            self._spawn(self.notify_connected())
            return

    def _on_channel_lost(self, link: _Link, channel: _Channel) -> None:
        """A channel we rely on closed under us: rebuild the whole link (simple and complete)."""
        if link.is_open and self._link is link and not self._closing:
            log.warning("RabbitMQ closed a channel the transport needs; reconnecting")
            link.abort()

    async def _close(self) -> None:
        self._closing = True
        if self._reconnect_task is not None:
            self._reconnect_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconnect_task
        link = self._link
        if link is not None and link.is_open:
            # Stop deliveries first; what was delivered already is handled below.
            live: list[_Consumer | _Subscriber] = [*self._consumers, *self._subscribers]
            cancels = [
                self._cancel_consumer(c.channel, c.tag)
                for c in live
                if c.link is link and c.channel is not None and c.tag is not None
            ]
            await asyncio.gather(*cancels, return_exceptions=True)
        # Drain: every handler already running finishes (and acks while the link is up).
        while self._inflight:
            await asyncio.gather(*list(self._inflight), return_exceptions=True)
        busy = []
        for sub in self._subscribers:
            if sub.worker is None:
                continue
            if sub.busy:
                busy.append(sub.worker)
            else:
                sub.worker.cancel()
        await asyncio.gather(*busy, return_exceptions=True)
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(Unavailable("transport closed"))
        link = self._link
        self._link = None
        if link is not None:
            link.abort()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(link.closed), RPC_TIMEOUT_S)

    async def _cancel_consumer(self, channel: _Channel, tag: str) -> None:
        with contextlib.suppress(Unavailable, pika.exceptions.AMQPError):
            await self._rpc(channel, lambda cb: channel.raw.basic_cancel(tag, callback=cb), timeout=2.0)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        assert self._loop is not None
        task = self._loop.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- channel plumbing ------------------------------------------------------------------

    async def _open_channel(self, link: _Link, *, essential: bool) -> _Channel:
        assert self._loop is not None
        loop = self._loop
        fut: asyncio.Future[_Channel] = loop.create_future()
        on_lost = (lambda ch: self._on_channel_lost(link, ch)) if essential else None

        def on_open(raw: Any) -> None:
            # Wrap at once, so a close right after the open is never missed.
            channel = _Channel(raw, loop, on_lost)
            if fut.done():
                channel.close()
            else:
                fut.set_result(channel)

        link.opening.add(fut)
        try:
            link.conn.channel(on_open_callback=on_open)
            return await asyncio.wait_for(fut, RPC_TIMEOUT_S)
        except pika.exceptions.AMQPError as exc:
            raise Unavailable(f"cannot open a RabbitMQ channel: {exc!r}") from exc
        except TimeoutError as exc:
            raise Unavailable("RabbitMQ did not open a channel in time") from exc
        finally:
            link.opening.discard(fut)

    async def _rpc(
        self, channel: _Channel, invoke: Callable[[Callable[[Any], None]], object], *, timeout: float = RPC_TIMEOUT_S
    ) -> Any:
        """Run one synchronous AMQP method; fails with `ChannelGone` if the channel closes."""
        fut = channel.expect()

        def done(frame: Any) -> None:
            if not fut.done():
                fut.set_result(frame)

        try:
            invoke(done)
        except pika.exceptions.AMQPError as exc:
            fut.cancel()
            raise Unavailable(f"RabbitMQ channel unusable: {exc!r}") from exc
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError as exc:
            raise Unavailable("RabbitMQ did not answer in time") from exc

    async def _borrow(self, link: _Link) -> _Channel:
        while link.spare:
            channel = link.spare.pop()
            if channel.is_open:
                return channel
        return await self._open_channel(link, essential=False)

    def _give_back(self, link: _Link, channel: _Channel) -> None:
        if channel.is_open and link.is_open and len(link.spare) < SPARE_CHANNELS:
            link.spare.append(channel)
        else:
            channel.close()

    async def _declare(self, link: _Link, key: str, invoke: Callable[[_Channel, Callable[[Any], None]], object]) -> None:
        """Declare once per connection; concurrent callers share one round trip."""
        fut = link.declared.get(key)
        if fut is None:
            fut = asyncio.ensure_future(self._declare_now(link, invoke))
            link.declared[key] = fut

            def forget_failure(done: asyncio.Future[None]) -> None:
                if done.cancelled() or done.exception() is not None:
                    link.declared.pop(key, None)

            fut.add_done_callback(forget_failure)
            fut.add_done_callback(_retrieve)
        await asyncio.shield(fut)

    async def _declare_now(self, link: _Link, invoke: Callable[[_Channel, Callable[[Any], None]], object]) -> None:
        channel = await self._borrow(link)
        try:
            await self._rpc(channel, lambda cb: invoke(channel, cb))
        finally:
            self._give_back(link, channel)

    async def _declare_queue(self, link: _Link, name: str, arguments: dict[str, Any] | None = None) -> None:
        self._objects.add(("queue", name))
        await self._declare(
            link,
            f"queue:{name}",
            lambda ch, cb: ch.raw.queue_declare(name, durable=True, arguments=arguments, callback=cb),
        )

    async def _declare_exchange(self, link: _Link, name: str) -> None:
        self._objects.add(("exchange", name))
        await self._declare(
            link,
            f"exchange:{name}",
            lambda ch, cb: ch.raw.exchange_declare(name, exchange_type="fanout", durable=True, callback=cb),
        )

    async def _publish_to_queue(
        self,
        link: _Link,
        name: str,
        msg: Message,
        *,
        arguments: dict[str, Any] | None = None,
        extra_headers: dict[str, Any] | None = None,
    ) -> None:
        """Declare `name` (once per connection) and publish a persistent message to it, confirmed.

        Published `mandatory`: if the queue was deleted behind the declare cache, the message
        comes back, and the queue is declared again and the message republished once.
        """
        for last_try in (False, True):
            await self._declare_queue(link, name, arguments)
            try:
                await self._publish_confirmed(link, "", name, msg, mandatory=True, extra_headers=extra_headers)
                return
            except Unroutable:
                link.declared.pop(f"queue:{name}", None)
                if last_try:
                    raise

    async def _publish_confirmed(
        self,
        link: _Link,
        exchange: str,
        routing_key: str,
        msg: Message,
        *,
        persistent: bool = True,
        mandatory: bool = False,
        extra_headers: dict[str, Any] | None = None,
    ) -> None:
        assert link.publisher is not None
        body, props = encode(msg, persistent=persistent, extra_headers=extra_headers)
        confirmed = link.publisher.publish_confirmed(exchange, routing_key, body, props, mandatory=mandatory)
        try:
            await asyncio.wait_for(confirmed, self._confirm_timeout_s)
        except TimeoutError as exc:
            raise Unavailable(f"RabbitMQ did not confirm within {self._confirm_timeout_s:g}s") from exc

    # --- requests --------------------------------------------------------------------------

    async def _has_consumer(self, link: _Link, name: str) -> bool:
        seen = link.presence.get(name)
        if seen is not None and seen[0] > 0:
            age = time.monotonic() - seen[1]
            if age < PRESENCE_TTL_S:
                if age > PRESENCE_REFRESH_S and name not in link.probes:
                    self._probe_soon(link, name)
                return True
        return await self._consumer_count(link, name) > 0

    def _probe_soon(self, link: _Link, name: str) -> None:
        # Registered synchronously, so the requests of one loop tick start a single probe.
        self._start_probe(link, name)

    async def _consumer_count(self, link: _Link, name: str) -> int:
        return await asyncio.shield(link.probes.get(name) or self._start_probe(link, name))

    def _start_probe(self, link: _Link, name: str) -> asyncio.Future[int]:
        probe = asyncio.ensure_future(self._probe(link, name))
        link.probes[name] = probe
        probe.add_done_callback(lambda _: link.probes.pop(name, None))
        probe.add_done_callback(_retrieve)  # its awaiters may all have been cancelled
        return probe

    async def _probe(self, link: _Link, name: str) -> int:
        channel = await self._borrow(link)
        try:
            frame = await self._rpc(channel, lambda cb: channel.raw.queue_declare(name, passive=True, callback=cb))
            count = int(frame.method.consumer_count)
        except ChannelGone as gone:
            if gone.reply_code != 404:
                raise
            count = 0  # the queue does not exist: nobody consumes it
        finally:
            self._give_back(link, channel)
        if count > 0:
            link.presence[name] = (count, time.monotonic())
        else:
            link.presence.pop(name, None)
        return count

    def _on_reply(self, _raw: Any, _method: Any, props: Any, body: bytes) -> None:
        fut = self._waiting.get(props.correlation_id)
        if fut is None or fut.done():
            return  # the caller gave up already
        try:
            fut.set_result(decode(props, body))
        except Exception as exc:  # a malformed reply fails its request, not the channel
            fut.set_exception(Unavailable(f"malformed reply: {exc!r}"))

    def _on_return(self, _raw: Any, method: Any, props: Any, _body: bytes) -> None:
        # A mandatory request the broker could not route: its queue is gone.
        link = self._link
        if link is not None:
            link.presence.pop(method.routing_key, None)
        fut = self._waiting.get(props.correlation_id)
        if fut is not None and not fut.done():
            queue = method.routing_key.removeprefix(f"{self.options.namespace}.")
            fut.set_exception(NoConsumers(f"no consumer for queue {queue!r}", details={"queue": queue}))

    # --- consumers -------------------------------------------------------------------------

    async def _start_late(self, link: _Link, start: Callable[[_Link, Any], Coroutine[Any, Any, None]], what: Any) -> None:
        """Set up a consumer or subscriber registered after start; on failure, rebuild the link."""
        try:
            await start(link, what)
        except Exception as exc:
            if link.is_open and self._link is link:
                log.warning("could not start a consumer on RabbitMQ (%r); reconnecting", exc)
                link.abort()

    async def _start_consumer(self, link: _Link, consumer: _Consumer) -> None:
        if consumer.link is link:
            return
        consumer.link = link
        name = self.qualified(consumer.queue)
        await self._declare_queue(link, name)
        channel = await self._open_channel(link, essential=True)
        await self._rpc(channel, lambda cb: channel.raw.basic_qos(prefetch_count=consumer.prefetch, callback=cb))
        channel.raw.add_on_cancel_callback(lambda _frame: self._on_channel_lost(link, channel))
        tag = f"skipper.{uuid.uuid4().hex[:16]}"

        def on_message(_raw: Any, method: Any, props: Any, body: bytes) -> None:
            self._on_work(consumer, channel, method, props, body)

        await self._rpc(channel, lambda cb: channel.raw.basic_consume(name, on_message, consumer_tag=tag, callback=cb))
        consumer.channel, consumer.tag = channel, tag

    async def _start_subscriber(self, link: _Link, sub: _Subscriber) -> None:
        if sub.link is link:
            return
        sub.link = link
        exchange = self.qualified(sub.topic)
        await self._declare_exchange(link, exchange)
        channel = await self._open_channel(link, essential=True)
        await self._rpc(channel, lambda cb: channel.raw.basic_qos(prefetch_count=self.options.prefetch, callback=cb))
        frame = await self._rpc(channel, lambda cb: channel.raw.queue_declare("", exclusive=True, auto_delete=True, callback=cb))
        queue = frame.method.queue
        await self._rpc(channel, lambda cb: channel.raw.queue_bind(queue, exchange, callback=cb))
        tag = f"skipper.{uuid.uuid4().hex[:16]}"

        def on_message(_raw: Any, method: Any, props: Any, body: bytes) -> None:
            try:
                msg = decode(props, body)
            except Exception:
                log.exception("dropping a malformed event on %s", sub.topic)
                channel.ack(method.delivery_tag)
                return
            sub.inbox.put_nowait((channel, method.delivery_tag, msg))

        await self._rpc(channel, lambda cb: channel.raw.basic_consume(queue, on_message, consumer_tag=tag, callback=cb))
        sub.channel, sub.tag = channel, tag

    def _ensure_worker(self, sub: _Subscriber) -> None:
        if sub.worker is None and self._loop is not None:
            sub.worker = self._loop.create_task(self._deliver_events(sub))

    async def _deliver_events(self, sub: _Subscriber) -> None:
        # One worker per subscriber: events are handled in the order they were published.
        while not self._closing:
            channel, tag, msg = await sub.inbox.get()
            sub.busy = True
            try:
                await sub.handler(msg)
            except Exception:
                log.exception("subscriber of %s failed", sub.topic, extra={"correlation_id": msg.correlation_id})
            finally:
                sub.busy = False
                channel.ack(tag)

    def _on_work(self, consumer: _Consumer, channel: _Channel, method: Any, props: Any, body: bytes) -> None:
        assert self._loop is not None
        try:
            msg = decode(props, body)
        except Exception as exc:  # a foreign or corrupt message must not stop the consumer
            log.error("malformed message on %s, dead-lettering it raw: %r", consumer.queue, exc)
            self._track(self._dead_letter_raw(consumer, channel, method.delivery_tag, props, body))
            return
        if msg.reply_to is None and self._take_copy(consumer, channel, method.delivery_tag, msg):
            return
        if method.redelivered:
            # Delivered before and never acked: the consumer died (or its link did) mid-handler.
            msg.attempt += 1
        self._track(self._handle_work(consumer, channel, method.delivery_tag, props, msg, method.redelivered))

    def _take_copy(self, consumer: _Consumer, channel: _Channel, tag: int, msg: Message) -> bool:
        """Keep or settle a copy of a work message whose handling in this process is not settled yet.

        When the link drops mid-handler the broker requeues the delivery and, once we are back,
        hands it out again while the handler still runs here. That copy is parked unacknowledged
        (not run, not counted as an attempt) until the handler finishes, and the handler's outcome
        is settled on it; if this process dies first the broker still holds it. An outcome that
        found no open delivery at all waits here for the copy.
        """
        key = (msg.id, msg.attempt)
        handling = self._handling.get(key)
        if handling is not None:
            log.warning("message %s on %s came back while its handler still runs here; holding the copy until it ends",
                        msg.id, consumer.queue, extra={"correlation_id": msg.correlation_id})
            handling.copies.append((channel, tag))
            return True
        unsettled = self._unsettled.pop(key, None)
        if unsettled is not None and unsettled.expires > time.monotonic():
            self._track(self._settle_work(consumer.queue, unsettled.msg, unsettled.outcome, (channel, tag), _Handling()))
            return True
        return False

    def _track(self, coro: Coroutine[Any, Any, None]) -> None:
        assert self._loop is not None
        task = self._loop.create_task(coro)
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _handle_work(
        self, consumer: _Consumer, channel: _Channel, tag: int, props: Any, msg: Message, redelivered: bool
    ) -> None:
        queue = consumer.queue
        if redelivered and msg.reply_to is None:
            if msg.attempt > self.options.max_retries:
                error = RuntimeError(f"its consumer stopped {msg.attempt} times before acknowledging it")
                log.error("message %s on %s: %s; dead-lettering", msg.id, queue, error)
                msg.attempt -= 1  # the report counts attempts made, as run_handler's would
                await self._settle(channel, tag, self._dead_letter(queue, msg, error))
            else:
                log.warning(
                    "message %s on %s was redelivered (its consumer stopped before acking); requeued as attempt %d",
                    msg.id,
                    queue,
                    msg.attempt + 1,
                    extra={"correlation_id": msg.correlation_id},
                )
                await self._settle(channel, tag, self._retry(queue, msg, 0.0))
            return
        if msg.reply_to is not None:
            outcome = await self.run_handler(queue, consumer.handler, msg)
            if outcome.reply is not None and props.reply_to:
                self._send_reply(channel, props, outcome.reply)
            channel.ack(tag)
            return
        key = (msg.id, msg.attempt)
        handling = self._handling[key] = _Handling()
        try:
            outcome = await self.run_handler(queue, consumer.handler, msg)
        except BaseException:
            self._handling.pop(key, None)  # cancelled: the broker keeps every copy
            raise
        await self._settle_work(queue, msg, outcome, (channel, tag), handling)

    async def _settle_work(
        self, queue: str, msg: Message, outcome: HandlerOutcome | None, first: tuple[_Channel, int], handling: _Handling
    ) -> None:
        """Carry out a handler's outcome (retry, dead letter or nothing), then ack an open delivery of it.

        The guarantee: a work message is acked only after its outcome is in the broker, and as long
        as it is not acked the broker holds a copy (the original delivery, or the copy it handed back
        after a link drop). So a drop at any point costs at most a second run, never the message.
        """
        key = (msg.id, msg.attempt)
        step_done = outcome is None or (outcome.retry_after is None and not outcome.dead_letter)
        try:
            while True:
                live = next((d for d in reversed([first, *handling.copies]) if d[0].is_open), None)
                if live is None:
                    break  # the link is down: the broker hands the message back (here, or elsewhere)
                channel, tag = live
                if not step_done:
                    assert outcome is not None
                    try:
                        await self._outcome_step(queue, msg, outcome)
                    except Exception as exc:
                        log.warning("could not hand a failed message back to RabbitMQ (%r); it will be redelivered", exc)
                        if not any(d[0].is_open for d in [first, *handling.copies]):
                            break
                        continue
                    step_done = True
                if channel.is_open:
                    channel.ack(tag)
                    for other, other_tag in handling.copies:  # copies parked on a newer link: duplicates now
                        if other is not channel and other.is_open:
                            other.ack(other_tag)
                    return
            self._remember_unsettled(key, msg, None if step_done else outcome)
        finally:
            if self._handling.get(key) is handling:
                del self._handling[key]

    def _remember_unsettled(self, key: tuple[str, int], msg: Message, outcome: HandlerOutcome | None) -> None:
        now = time.monotonic()
        while self._unsettled and (len(self._unsettled) >= UNSETTLED_MAX or next(iter(self._unsettled.values())).expires < now):
            self._unsettled.popitem(last=False)
        self._unsettled[key] = _Unsettled(msg, outcome, now + UNSETTLED_TTL_S)

    def _outcome_step(self, queue: str, msg: Message, outcome: HandlerOutcome) -> Coroutine[Any, Any, None]:
        if outcome.retry_after is not None:
            return self._retry(queue, msg.retried(), outcome.retry_after)
        return self._dead_letter(queue, msg, outcome.error)

    async def _settle(self, channel: _Channel, tag: int, step: Coroutine[Any, Any, None]) -> None:
        """Run a retry or dead-letter step, then ack; if the delivery is already void, do neither."""
        if not channel.is_open:
            step.close()  # the broker requeued the delivery when its channel closed
            return
        try:
            await step
        except Unavailable as exc:
            log.warning("could not hand a failed message back to RabbitMQ (%r); it will be redelivered", exc)
            return
        except Exception:
            log.exception("could not hand a failed message back to RabbitMQ; it will be redelivered")
            return
        channel.ack(tag)

    async def _retry(self, queue: str, msg: Message, delay: float) -> None:
        link = self._require_link()
        main = self.qualified(queue)
        ms = round(delay * 1000)
        if ms <= 0:
            await self._publish_to_queue(link, main, msg)
            return
        delay_queue = {"x-message-ttl": ms, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": main}
        await self._publish_to_queue(link, f"{main}.retry.{ms}", msg, arguments=delay_queue)

    async def _dead_letter(self, queue: str, msg: Message, error: BaseException | None) -> None:
        link = self._require_link()
        reason = f"{type(error).__name__}: {error}" if error else "unknown"
        extra = {"x-skipper-error": reason[:2000]}
        await self._publish_to_queue(link, f"{self.qualified(queue)}.dlq", msg, extra_headers=extra)
        report = self.dead_letter_report(queue, msg, error)
        if report is not None:
            await self.send(contracts.DEAD_LETTERS, report)

    async def _dead_letter_raw(self, consumer: _Consumer, channel: _Channel, tag: int, props: Any, body: bytes) -> None:
        async def park() -> None:
            link = self._require_link()
            assert link.publisher is not None
            dlq = f"{self.qualified(consumer.queue)}.dlq"
            await self._declare_queue(link, dlq)
            try:
                await asyncio.wait_for(link.publisher.publish_confirmed("", dlq, body, props), self._confirm_timeout_s)
            except TimeoutError as exc:
                raise Unavailable("RabbitMQ did not confirm the dead letter") from exc

        await self._settle(channel, tag, park())

    def _send_reply(self, channel: _Channel, props: Any, reply: Message) -> None:
        body, reply_props = encode(reply, persistent=False, correlation_id=props.correlation_id)
        # Any channel may publish to a reply-to address; the delivery's own one is the cheapest.
        target: _Channel | None = channel if channel.is_open else (self._link.rpc if self._link else None)
        if target is None:
            log.warning("dropping a reply for %s: not connected", props.reply_to)
            return
        try:
            target.publish("", props.reply_to, body, reply_props)
        except Unavailable as exc:
            log.warning("dropping a reply for %s: %r", props.reply_to, exc)


def _retrieve(fut: asyncio.Future[Any]) -> None:
    """Mark a background future's failure as seen (it is logged where it matters)."""
    if not fut.cancelled():
        fut.exception()


def _expire(fut: asyncio.Future[Message], queue: str, timeout: float) -> None:
    if not fut.done():
        fut.set_exception(
            RequestTimeout(f"no reply from {queue!r} within {timeout:g}s", details={"queue": queue, "timeout_s": timeout})
        )
