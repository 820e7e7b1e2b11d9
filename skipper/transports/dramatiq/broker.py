"""Dramatiq pieces the transport builds on: actor options, a shared TimeLimit, a RabbitMQ consumer that
requeues gracefully, and a Worker that consumes only its transport's queues.

Dramatiq internals this relies on (dramatiq 2.x): `Worker._add_consumer` (queue filter and
per-queue prefetch), `_RabbitmqConsumer.requeue`, `MessageProxy._message`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, ClassVar

import dramatiq
import pika.exceptions
from dramatiq.brokers.rabbitmq import RabbitmqBroker, _RabbitmqConsumer
from dramatiq.common import dq_name, q_name
from dramatiq.errors import BrokerConnectionError, ConnectionClosed
from dramatiq.middleware import TimeLimit

from skipper.core.bus import BusOptions
from skipper.transports.dramatiq.wire import actor_name

log = logging.getLogger("skipper.transports.dramatiq")


def limits(options: BusOptions) -> dict[str, int]:
    """Dramatiq's actor options from Skipper's settings (milliseconds; Retries treats 0 as unset)."""
    return {
        "max_retries": options.max_retries,
        "min_backoff": max(1, round(options.retry_backoff_s * 1000)),
        "max_backoff": max(1, round(options.retry_backoff_max_s * 1000)),
        "time_limit": max(1, round(options.time_limit_s * 1000)),
        "max_age": max(1, round(options.max_age_s * 1000)),
    }


def declare_actor(
    broker: dramatiq.Broker, namespace: str, queue: str, fn: Callable[[dict[str, Any]], None], *, options: BusOptions
) -> dramatiq.Actor[Any, Any]:
    """Declare the actor of a logical queue on `broker`, with the limits from Skipper's settings.

    The limits are actor options, so a broker with Dramatiq's default middleware (the CLI's)
    applies them too. `fn` receives the envelope dict; with the `CurrentMessage` middleware,
    `options["retries"]` of the current message is its attempt.
    """
    name = actor_name(namespace, queue)
    return dramatiq.Actor(fn, broker=broker, actor_name=name, queue_name=name, priority=0, options=limits(options))


class SharedTimeLimit(TimeLimit):
    """Dramatiq's TimeLimit whose watchdog thread is shared by every broker in the process.

    The watchdog never stops (the CLI starts one per process), and it tracks deadlines by
    thread id, so one per process serves every transport without leaking a thread each.
    """

    _manager: ClassVar[Any] = None
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, *, time_limit: float) -> None:
        super().__init__(time_limit=time_limit, interval=100)
        with SharedTimeLimit._lock:
            if SharedTimeLimit._manager is None:
                SharedTimeLimit._manager = self.manager
                self.manager.start()
        self.manager = SharedTimeLimit._manager

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        """Already started in `__init__`: there is no process boot when the worker is embedded."""


class FreshRequeueConsumer(_RabbitmqConsumer):
    """Gives back the messages a stopping worker prefetched but never started as fresh deliveries.

    Closing the channel would requeue them flagged `redelivered`, which `Redeliveries` reads
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
        self._settle(message, "ack", super().ack)

    def nack(self, message: Any) -> None:
        self._settle(message, "nack", super().nack)

    def _settle(self, message: Any, verb: str, settle: Callable[[Any], None]) -> None:
        """Ack or nack on the channel that delivered it; skip it once that channel is gone.

        The broker requeues a closed channel's unacked deliveries itself. Letting Dramatiq see
        the ConnectionClosed would make it sleep 5 s and retry an ack that can never succeed,
        holding a worker thread through the first seconds after a broker drop.
        """
        if self._stale(message):
            log.debug("not %sing message %s: its channel is gone and the broker requeued it", verb, message.message_id)
            return
        try:
            settle(message)
        except ConnectionClosed:
            log.debug("not %sing message %s: the connection closed and the broker requeues it", verb, message.message_id)

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


class SkipperRabbitmqBroker(RabbitmqBroker):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.detached: dict[str, threading.Event] = {}  # queue -> set once its consumer has cancelled
        self.consuming: dict[str, threading.Event] = {}  # queue -> set once this process's consumer is registered

    @property
    def consumer_class(self) -> type[_RabbitmqConsumer]:
        return FreshRequeueConsumer


class Worker(dramatiq.Worker):
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


