"""`DramatiqTransport`: work queues on Dramatiq actors; replies and fanout on a side channel."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import dramatiq
import pika
import pika.exceptions
import redis
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import dq_name, q_name, xq_name
from dramatiq.errors import BrokerError
from dramatiq.middleware import AgeLimit, CurrentMessage, Middleware

from skipper.core.bus import BusOptions, Handler, Subscription, Transport
from skipper.core.errors import ConfigError, NoConsumers, Unavailable
from skipper.core.messages import Message
from skipper.transports.dramatiq.amqp_side import AmqpSide
from skipper.transports.dramatiq.broker import SharedTimeLimit, SkipperRabbitmqBroker, Worker, declare_actor, limits
from skipper.transports.dramatiq.encoding import install_encoder
from skipper.transports.dramatiq.middleware import WAIT_SLICE_S, HandlerFailed, Outcomes, Redeliveries
from skipper.transports.dramatiq.redis_side import RedisSide
from skipper.transports.dramatiq.side import ATTACH_TIMEOUT_S, CONNECT_TIMEOUT_S, SideChannel, TransportListener
from skipper.transports.dramatiq.wire import (
    DEADLINE,
    actor_name,
    from_envelope,
    pack_frame,
    pack_request,
    split_reply_to,
    to_envelope,
    unpack_request,
)

log = logging.getLogger("skipper.transports.dramatiq")

_BROKER_ERRORS = (BrokerError, pika.exceptions.AMQPError, redis.RedisError, OSError)


class DramatiqTransport(Transport):
    """Work queues on Dramatiq actors; requests and fanout beside them on the same broker."""

    def __init__(
        self, options: BusOptions, *, url: str, poll_interval_s: float = 0.2, redis_maintenance_chance: int = 100_000
    ) -> None:
        """Build without I/O.

        `poll_interval_s` bounds how long idle Dramatiq threads sleep (close latency, retry-delay
        precision, Redis polling). `redis_maintenance_chance` (per million Redis commands) is how
        often Dramatiq's Redis broker looks for dead workers, whose unacked messages it requeues
        after `options.heartbeat_s` without a heartbeat. It only requeues those of the queue the
        command was for, so Dramatiq's default (1,000) can leave a killed trainer's command
        waiting for minutes; a tenth of the commands costs two cheap sorted-set reads each.
        """
        super().__init__(options)
        scheme = urlsplit(url).scheme
        if scheme not in ("amqp", "amqps", "redis", "rediss"):
            raise ConfigError(f"the dramatiq transport needs an amqp:// or redis:// broker_url, not {scheme!r}://")
        self.kind = "rabbitmq" if scheme.startswith("amqp") else "redis"
        self._timeout_ms = max(10, round(poll_interval_s * 1000))
        install_encoder()
        limit = limits(options)
        middleware: list[Middleware] = [
            AgeLimit(max_age=limit["max_age"]),
            Redeliveries(self, started_ttl_ms=limit["max_age"]),
            SharedTimeLimit(time_limit=limit["time_limit"]),
            CurrentMessage(),
            Outcomes(self),
        ]
        self.broker: RabbitmqBroker | RedisBroker
        self._side: SideChannel
        self._prefetch: dict[str, int] = {}  # qualified queue -> its consumers' prefetch in this process
        listener = TransportListener(self, serve_request=self.serve_request)
        if self.kind == "rabbitmq":
            self.broker = SkipperRabbitmqBroker(url=url, confirm_delivery=True, middleware=middleware)
            if isinstance(self.broker.parameters, pika.connection.Parameters):
                self.broker.parameters.client_properties = {"connection_name": options.client_name("dramatiq")}
            self._side = AmqpSide(listener, url, options, prefetch=self._prefetch)
        else:
            self.broker = RedisBroker(  # type: ignore[no-untyped-call]
                client=redis.Redis.from_url(url, client_name=options.client_name("dramatiq")),
                namespace=f"skipper:{options.namespace}", middleware=middleware,
                heartbeat_timeout=options.heartbeat_s * 1000 if options.heartbeat_s > 0 else 60_000,
                maintenance_chance=redis_maintenance_chance,
            )
            self._side = RedisSide(listener, url, options, prefetch=self._prefetch)
        self._handlers: dict[str, list[Handler]] = {}
        self._turn: dict[str, int] = {}
        self._handling: dict[tuple[str, int], threading.Event] = {}  # (message id, attempt) -> set when handled
        self._handling_lock = threading.Lock()
        self._worker: Worker | None = None
        self._sender = ThreadPoolExecutor(1, thread_name_prefix="skipper-dramatiq-send")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._side_requests: set[asyncio.Task[Any]] = set()  # requests taken by the side channel, in hand

    # --- lifecycle ----------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self.started and not self.closed and self._side.connected

    async def _start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._side.start(self._loop, topics=list(self._subscriptions))
        if self._handlers:
            self._ensure_worker()
            await self._side.consumers_attached(list(self._handlers))

    async def _close(self) -> None:
        await self._side.withdraw()  # new requests get NoConsumers while in-flight ones finish
        if self._worker is not None:
            # Worker threads finish their messages (their handlers run on this loop), then ack.
            await asyncio.to_thread(self._worker.stop, round((self.options.time_limit_s + 5) * 1000))
        # Requests taken beside Dramatiq are answered over the side channel: before it closes.
        await asyncio.gather(*self._side_requests, return_exceptions=True)
        await self._side.close()
        self.fail_requests(Unavailable("the transport was closed while waiting for a reply"))
        await self.drain_subscriptions()
        await self.finish_background(cancel=False)
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

    async def _send(self, queue: str, msg: Message) -> None:
        await self._enqueue(self.dramatiq_message(queue, msg))

    def consume(self, queue: str, handler: Handler, *, prefetch: int | None = None) -> None:
        name = self.qualified(queue)
        if name not in self._handlers:
            self._handlers[name] = []
            declare_actor(self.broker, self.options.namespace, queue, self._actor_fn(queue), options=self.options)
        self._handlers[name].append(handler)
        self._prefetch[name] = self._prefetch.get(name, 0) + (prefetch or self.options.prefetch)
        if self.started and not self.closed:
            self._ensure_worker().watch(name)
            self.spawn(self._side.consumers_attached([name], wait=False))

    async def attach(self, queue: str, handler: Handler, *, prefetch: int | None = None) -> None:
        name = self.qualified(queue)
        if isinstance(self.broker, SkipperRabbitmqBroker):
            consuming = self.broker.consuming.setdefault(name, threading.Event())
        self.consume(queue, handler, prefetch=prefetch)
        if not self.started or self.closed:
            return
        if isinstance(self.broker, SkipperRabbitmqBroker):
            # This process's own consumer, not just any: a peer consuming the queue proves nothing.
            if not await asyncio.to_thread(consuming.wait, ATTACH_TIMEOUT_S):
                raise Unavailable(f"the consumer of {name} did not start within {ATTACH_TIMEOUT_S:g}s")
            await self._side.consumers_attached([name], wait=False)  # and its requests' consumer
        else:
            await self._side.consumers_attached([name])

    async def detach(self, queue: str) -> None:
        name = self.qualified(queue)
        await self._side.withdraw_queue(name)  # Redis: requests see no consumer here from now on
        if isinstance(self.broker, SkipperRabbitmqBroker):
            cancelled = self.broker.detached.setdefault(name, threading.Event())
            # The queue's consumer thread cancels its consumer at its next poll.
            running = self._worker is not None and name in self._worker.consumers
            if running and not await asyncio.to_thread(cancelled.wait, CONNECT_TIMEOUT_S):
                log.warning("the consumer of %s did not cancel within %.0fs", name, CONNECT_TIMEOUT_S)
        # On Redis, Dramatiq's consumer keeps polling and serves what was already enqueued here;
        # what it prefetched but did not start goes back to the queue when the worker stops.

    def dramatiq_message(self, queue: str, msg: Message, **options: Any) -> dramatiq.Message[Any]:
        """The Dramatiq message carrying `msg` to the actor of `queue`."""
        name = actor_name(self.options.namespace, queue)
        return dramatiq.Message(queue_name=name, actor_name=name, args=(to_envelope(msg),), kwargs={}, options=options)

    def logical(self, queue_name: str) -> str:
        """The logical queue of a Dramatiq queue name (the inverse of `qualified`)."""
        prefix = f"{self.options.namespace}."
        name = q_name(queue_name)
        return name[len(prefix) :] if name.startswith(prefix) else name

    async def _enqueue(self, message: dramatiq.Message[Any]) -> None:
        loop = asyncio.get_running_loop()
        try:
            # One sender thread: pika connections are per thread, and enqueue blocks on confirms.
            await loop.run_in_executor(self._sender, self.broker.enqueue, message)
        except _BROKER_ERRORS as exc:
            raise Unavailable(f"cannot enqueue on {message.queue_name}: {exc}") from exc
        except RuntimeError as exc:  # the sender was shut down: the transport is closed
            raise Unavailable("the transport is closed") from exc

    def _ensure_worker(self) -> Worker:
        if self._worker is None:
            self._worker = Worker(self.broker, prefetch=self._prefetch, threads=self.options.worker_threads,
                                  timeout_ms=self._timeout_ms)
            self._worker.start()
        return self._worker

    def _actor_fn(self, queue: str) -> Callable[[dict[str, Any]], None]:
        """The actor body: runs in a Dramatiq worker thread, runs the handler on the loop."""

        def run(envelope: dict[str, Any]) -> None:
            current = CurrentMessage.get_current_message()
            options = current.options if current is not None else {}
            deadline = options.get(DEADLINE)
            if deadline is not None and time.time() * 1000 > deadline:
                log.info("dropping a request to %s whose caller stopped waiting", queue)
                return
            msg = from_envelope(envelope, int(options.get("retries", 0)))
            loop = self._loop
            if loop is None or loop.is_closed():
                raise Unavailable("the transport's event loop is gone")
            with self._handling_message(msg):
                fut = asyncio.run_coroutine_threadsafe(self._serve(queue, msg), loop)
                try:
                    # Wait in slices: TimeLimit interrupts this thread only while it runs Python code.
                    while not fut.done():
                        concurrent.futures.wait([fut], timeout=WAIT_SLICE_S)
                except BaseException:
                    fut.cancel()  # TimeLimitExceeded (or shutdown): stop the handler too
                    raise
                fut.result()

        run.__qualname__ = run.__name__ = f"consume_{queue}"
        return run

    @contextlib.contextmanager
    def _handling_message(self, msg: Message) -> Iterator[None]:
        """Record a work message as being handled here, for `handler_done`."""
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
        outcome = await self.run_handler(queue, handler, msg)
        if msg.reply_to is None:
            if outcome.retry_after is not None or outcome.dead_letter:
                raise HandlerFailed(outcome)  # `Outcomes` carries the decision out
            return
        target = split_reply_to(msg.reply_to)
        if target is None or outcome.reply is None:
            log.warning("request on %s has an unusable reply_to %r", queue, msg.reply_to)
            return
        try:
            await self._side.reply(target[0], pack_frame(outcome.reply, reply_for=target[1]))
        except Unavailable as exc:
            # The caller's reply address went with the connection (or ours did): it gets its
            # timeout, and a request is never retried, so there is nothing more to do here.
            log.info("cannot reply to a request on %s: %s", queue, exc)

    # --- requests and fanout ------------------------------------------------------------

    async def _has_consumers(self, queue: str) -> bool:
        if not self.started or self.closed:
            return False
        if self._side.presence_on_send:
            return True  # sending finds out (and raises NoConsumers)
        return await self._side.has_consumers(self.qualified(queue))

    async def _send_request(self, queue: str, msg: Message, key: str, timeout: float) -> None:
        msg.reply_to = f"{self._side.reply_address()}#{key}"
        expires = round((time.time() + timeout) * 1000)
        # Beside Dramatiq (see the package docstring); the actor still serves requests that older
        # senders enqueued as Dramatiq messages (`DEADLINE` option), so servers can be rolled first.
        frame = pack_request(msg, deadline_ms=expires)
        if not await self._side.send_request(self.qualified(queue), frame, timeout=timeout):
            raise NoConsumers(f"no consumer for queue {queue!r}", details={"queue": queue})

    def serve_request(self, name: str, data: bytes, done: Callable[[], None]) -> None:
        """A request the side channel took for queue `name`: handle it on the loop, reply, then `done()`."""
        try:
            msg, deadline = unpack_request(data)
        except (ValueError, json.JSONDecodeError):
            log.warning("dropping an unreadable request on %s", name)
            done()
            return
        if deadline is not None and time.time() * 1000 > deadline:
            log.info("dropping a request to %s whose caller stopped waiting", name)
            done()
            return
        if name not in self._handlers:
            log.warning("dropping a request to %s: nothing consumes it here", name)
            done()
            return
        task = self.spawn(self._serve(self.logical(name), msg))
        self._side_requests.add(task)
        task.add_done_callback(self._side_requests.discard)
        task.add_done_callback(lambda _: done())

    async def _publish(self, topic: str, msg: Message) -> None:
        await self._side.publish(topic, pack_frame(msg))

    def _subscribed(self, sub: Subscription, *, first: bool) -> None:
        if first and self.started:
            self.spawn(self._side.add_topic(sub.topic))

    def declared_names(self) -> tuple[frozenset[str], frozenset[str]]:
        """Broker objects this transport declared: (queues with their .DQ/.XQ, exchanges). For cleanup tools."""
        queues = {n for q in self.broker.get_declared_queues() for n in (q, dq_name(q), xq_name(q))}
        return frozenset(queues), frozenset(self._side.exchanges())
