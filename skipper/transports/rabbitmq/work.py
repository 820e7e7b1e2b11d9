"""Work deliveries: run the handler, carry out its outcome in the broker, then ack; hold copies meanwhile.

The guarantee: a work message is acknowledged only after its handler's outcome (done, a retry,
a dead letter) is in the broker, and until then the broker holds a copy. When the link drops
mid-handler, the broker requeues the delivery and hands it back (flagged redelivered) once we
are reconnected, while the handler still runs here. That copy is not run again and not counted
as an attempt: it is parked unacknowledged, and when the handler finishes its outcome is
settled through the copy (the original delivery died with its channel). A second drop just
parks the next copy. If this process dies meanwhile, the parked copy goes back to the queue and
another consumer runs it as the next attempt. An outcome reached while the link is down, with
no copy back yet, waits `UNSETTLED_TTL_S` for the copy.

A delivery flagged `redelivered` that this process does not hold was left unacknowledged by a
consumer that stopped (a killed trainer): the base's `redelivery_outcome` decides (the next
attempt at once, or a dead letter once every attempt is used), carried out here by republishing
with `x-attempt` raised and acking the redelivered copy. Requests are never re-stamped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from skipper.core import contracts
from skipper.core.bus import Handler, HandlerOutcome
from skipper.core.errors import Unavailable
from skipper.core.messages import Message
from skipper.transports.amqp_async.channel import Channel
from skipper.transports.amqp_async.link import Link
from skipper.transports.rabbitmq.wire import decode, encode

if TYPE_CHECKING:
    from skipper.transports.rabbitmq.transport import RabbitMQTransport

log = logging.getLogger("skipper.transports.rabbitmq")

UNSETTLED_TTL_S = 600.0  # how long an outcome waits for its message's copy to come back
UNSETTLED_MAX = 10_000

Delivery = tuple[Channel, int]  # the channel a message came on, and its delivery tag


@dataclass(eq=False)
class Consumer:
    """One `consume` / `attach` call, and where it consumes on the current link."""

    queue: str
    handler: Handler
    prefetch: int
    link: Link | None = None
    channel: Channel | None = None
    tag: str | None = None


@dataclass(eq=False)
class _Handling:
    """A work message whose handler runs in this process, and the copies the broker handed back meanwhile."""

    copies: list[Delivery] = field(default_factory=list)


@dataclass(eq=False)
class _Unsettled:
    """A handler's outcome that found no open delivery to settle on: applied to the copy when it comes back."""

    msg: Message
    outcome: HandlerOutcome | None  # None: already carried out, only the ack is owed
    expires: float


class WorkDeliveries:
    """Handles the deliveries of every work queue of one transport (state survives reconnects)."""

    def __init__(self, transport: RabbitMQTransport) -> None:
        self._t = transport
        self.inflight: set[asyncio.Task[None]] = set()
        self._handling: dict[tuple[str, int], _Handling] = {}  # (message id, attempt) -> its copies
        self._unsettled: OrderedDict[tuple[str, int], _Unsettled] = OrderedDict()

    def on_delivery(self, consumer: Consumer, channel: Channel, method: Any, props: Any, body: bytes) -> None:
        """pika's callback for a work delivery (on the loop)."""
        try:
            msg = decode(props, body)
        except Exception as exc:  # a foreign or corrupt message must not stop the consumer
            log.error("malformed message on %s, dead-lettering it raw: %r", consumer.queue, exc)
            self._track(self._dead_letter_raw(consumer, channel, method.delivery_tag, props, body))
            return
        if msg.reply_to is None and self._take_copy(consumer, channel, method.delivery_tag, msg):
            return
        self._track(self._handle(consumer, channel, method.delivery_tag, props, msg, method.redelivered))

    def _track(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.inflight.add(task)
        task.add_done_callback(self.inflight.discard)

    async def drain(self) -> None:
        """Wait until every handler already running has finished (and acked while the link is up)."""
        while self.inflight:
            await asyncio.gather(*list(self.inflight), return_exceptions=True)

    def _take_copy(self, consumer: Consumer, channel: Channel, tag: int, msg: Message) -> bool:
        """Keep or settle a copy of a work message whose handling in this process is not settled yet."""
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

    async def _handle(
        self, consumer: Consumer, channel: Channel, tag: int, props: Any, msg: Message, redelivered: bool
    ) -> None:
        queue = consumer.queue
        if msg.reply_to is not None:
            outcome = await self._t.run_handler(queue, consumer.handler, msg)
            with channel.held():  # the reply and the ack in one write
                if outcome.reply is not None and props.reply_to:
                    self._send_reply(channel, props, outcome.reply)
                channel.ack(tag)
            return
        if redelivered:
            # Delivered before and never acked: the consumer died (or its link did) mid-handler.
            await self._settle(channel, tag, self._outcome_step(queue, msg, self._t.redelivery_outcome(queue, msg)))
            return
        key = (msg.id, msg.attempt)
        handling = self._handling[key] = _Handling()
        try:
            outcome = await self._t.run_handler(queue, consumer.handler, msg)
        except BaseException:
            self._handling.pop(key, None)  # cancelled: the broker keeps every copy
            raise
        await self._settle_work(queue, msg, outcome, (channel, tag), handling)

    async def _settle_work(
        self, queue: str, msg: Message, outcome: HandlerOutcome | None, first: Delivery, handling: _Handling
    ) -> None:
        """Carry out a handler's outcome (retry, dead letter or nothing), then ack an open delivery of it.

        A work message is acked only after its outcome is in the broker, and as long as it is not
        acked the broker holds a copy (the original delivery, or the copy it handed back after a
        link drop). So a drop at any point costs at most a second run, never the message.
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

    async def _settle(self, channel: Channel, tag: int, step: Coroutine[Any, Any, None]) -> None:
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
        link = self._t.require_link()
        main = self._t.qualified(queue)
        ms = round(delay * 1000)
        if ms <= 0:
            await self._t.topology.publish_to_queue(link, main, msg)
            return
        delay_queue = {"x-message-ttl": ms, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": main}
        await self._t.topology.publish_to_queue(link, f"{main}.retry.{ms}", msg, arguments=delay_queue)

    async def _dead_letter(self, queue: str, msg: Message, error: BaseException | None) -> None:
        link = self._t.require_link()
        reason = f"{type(error).__name__}: {error}" if error else "unknown"
        extra = {"x-skipper-error": reason[:2000]}
        await self._t.topology.publish_to_queue(link, f"{self._t.qualified(queue)}.dlq", msg, extra_headers=extra)
        report = self._t.dead_letter_report(queue, msg, error)
        if report is not None:
            await self._t.send(contracts.DEAD_LETTERS, report)

    async def _dead_letter_raw(self, consumer: Consumer, channel: Channel, tag: int, props: Any, body: bytes) -> None:
        async def park() -> None:
            link = self._t.require_link()
            assert link.publisher is not None
            dlq = f"{self._t.qualified(consumer.queue)}.dlq"
            await self._t.topology.declare_queue(link, dlq)
            await self._t.topology.confirm(link.publisher.publish_confirmed("", dlq, body, props))

        await self._settle(channel, tag, park())

    def _send_reply(self, channel: Channel, props: Any, reply: Message) -> None:
        body, reply_props = encode(reply, persistent=False, correlation_id=props.correlation_id)
        # Any channel may publish to a reply-to address; the delivery's own one is the cheapest.
        link = self._t.link
        target: Channel | None = channel if channel.is_open else (link.rpc if link else None)
        if target is None:
            log.warning("dropping a reply for %s: not connected", props.reply_to)
            return
        try:
            target.publish("", props.reply_to, body, reply_props)
        except Unavailable as exc:
            log.warning("dropping a reply for %s: %r", props.reply_to, exc)
