"""Dramatiq middleware that carries out the base class's retry and dead-letter policy.

The decisions are `Transport.failure_outcome` and `Transport.redelivery_outcome` (one policy for
every transport); Dramatiq's broker carries them out: a retry is the message re-enqueued with
`retries` raised and a delay (Dramatiq's delay queue), a dead letter is a failed message, which
the broker moves to `<queue>.XQ`, plus the `dead_letters` report.
"""

from __future__ import annotations

import logging
import time
import traceback
from typing import TYPE_CHECKING, Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import Middleware, SkipMessage

from skipper.core import contracts
from skipper.core.bus import HandlerOutcome
from skipper.core.messages import Message
from skipper.transports.dramatiq.wire import from_envelope

if TYPE_CHECKING:
    from skipper.transports.dramatiq.transport import DramatiqTransport

log = logging.getLogger("skipper.transports.dramatiq")

WAIT_SLICE_S = 0.05  # how often a waiting actor runs Python code, so TimeLimit's interrupt lands


class HandlerFailed(Exception):
    """Raised by the actor when a work handler failed: carries the base's decision to `Outcomes`."""

    def __init__(self, outcome: HandlerOutcome) -> None:
        super().__init__(f"{type(outcome.error).__name__}: {outcome.error}")
        self.outcome = outcome


class ConsumerStopped(SkipMessage):
    """A work message whose consumer stopped before acknowledging it more often than retries allow."""


def _message(message: dramatiq.MessageProxy, attempt: int) -> Message | None:
    try:
        return from_envelope(message.args[0], max(0, attempt))
    except Exception:
        log.exception("cannot read Dramatiq message %s", message.message_id)
        return None


class Outcomes(Middleware):
    """Retries or dead-letters a failed work message as the base decided (in place of Dramatiq's Retries)."""

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
        if exception is None:
            return
        attempt = int(message.options.get("retries", 0))
        msg = _message(message, attempt)
        if msg is None or msg.reply_to is not None:
            message.fail()  # unreadable, or a request: its caller got an error reply or times out
            return
        queue = self.transport.logical(message.queue_name)
        if isinstance(exception, HandlerFailed):
            outcome = exception.outcome
        else:  # the actor itself failed (e.g. TimeLimit interrupted it)
            outcome = self.transport.failure_outcome(queue, msg, exception)
        if outcome.retry_after is not None:
            # As Dramatiq's Retries does: the same message, `retries` raised, through the delay queue.
            message.options["retries"] = attempt + 1
            message.options["traceback"] = traceback.format_exc(limit=30)
            message.options["requeue_timestamp"] = int(time.time() * 1000)
            broker.enqueue(message._message, delay=max(1, round(outcome.retry_after * 1000)))
            return
        message.fail()
        self.report(message, msg, outcome.error)

    def after_skip_message(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        if message.failed:  # AgeLimit gave up on it, or its consumers kept stopping
            error = getattr(message, "_exception", None) or RuntimeError("message skipped")
            msg = _message(message, int(message.options.get("retries", 0)))
            if msg is not None and msg.reply_to is None:
                self.report(message, msg, error)

    def report(self, message: dramatiq.MessageProxy, msg: Message, error: BaseException | None) -> None:
        """Send the dead-letter report (Dramatiq's broker keeps the message in `<queue>.XQ`)."""
        report = self.transport.dead_letter_report(self.transport.logical(message.queue_name), msg, error)
        if report is not None:
            self.transport.broker.enqueue(self.transport.dramatiq_message(contracts.DEAD_LETTERS, report))


class Redeliveries(Middleware):
    """Counts a delivery whose consumer died before finishing it as one more attempt.

    RabbitMQ flags such a delivery `redelivered`. Dramatiq's Redis broker requeues it without a
    mark, so each delivery leaves a "started" key that is deleted once it is finished: a key
    already there means an earlier consumer started it and never finished. The base decides
    (`redelivery_outcome`): the message is re-enqueued with `retries` raised (so repeated deaths
    add up) and this copy is dropped, or it is dead-lettered once every attempt is used.

    A consumer that did not die but lost its connection (RabbitMQ requeues the delivery with its
    channel; the consumer thread reconnects and gets it back while the handler still runs here)
    must neither run it twice nor drop it: the copy is held unacknowledged, in its worker thread,
    until the handler finishes, then acknowledged (its retry, if any, is enqueued by then). If the
    process dies first, the broker still holds the copy and hands it to another worker as the next
    attempt. Dramatiq's Redis broker keeps an unacked message with its worker across a reconnect
    (only missed heartbeats requeue it), so there the copy rarely happens.
    """

    def __init__(self, transport: DramatiqTransport, started_ttl_ms: int) -> None:
        self.transport = transport
        self.started_ttl_ms = started_ttl_ms

    def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        env = message.args[0]
        if env.get("reply_to") is not None:
            return  # a request: its caller is waiting, just serve it
        attempt = int(message.options.get("retries", 0))
        done = self.transport.handler_done(str(env.get("id")), attempt)
        if done is not None:
            log.warning("message %s on %s came back while its handler still runs here; holding the copy until it ends",
                        message.message_id, message.queue_name)
            while not done.wait(WAIT_SLICE_S):
                pass
            raise SkipMessage("a copy of a message this process handled")
        if not self._started_before(broker, message):
            return  # first delivery
        msg = _message(message, attempt)
        if msg is None:
            return
        outcome = self.transport.redelivery_outcome(self.transport.logical(message.queue_name), msg)
        if outcome.dead_letter:
            message.fail()
            raise ConsumerStopped(str(outcome.error))
        broker.enqueue(message._message.copy(options={"retries": attempt + 1}))
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
