"""The `Transport` base class: the bus contract, and the semantics every transport shares.

A transport implements small hooks (`_start`, `_close`, `_send`, `_publish`, `_has_consumers`,
`_send_request`, `_subscribed`, and `consume` / `attach` / `detach`); the base owns the rest:
lifecycle flags and idempotent close, the pending-reply table, request timeouts, `NoConsumers`,
decoding an error reply, the subscribers' inboxes (order and error isolation), background
tasks, and the retry / dead-letter policy (`skipper.core.bus.policy`).
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from skipper.core.bus import policy
from skipper.core.bus.fanout import Handler, Subscription
from skipper.core.bus.options import BusOptions
from skipper.core.bus.policy import HandlerOutcome
from skipper.core.bus.replies import PendingReplies
from skipper.core.errors import NoConsumers, RequestTimeout, Unavailable, from_payload
from skipper.core.messages import Message

log = logging.getLogger("skipper.bus")


class Transport(ABC):
    """A message bus. Build it without I/O; `start()` connects, `close()` drains and disconnects.

    Not thread-safe: call it on the event loop it was started on (handlers run there too).
    Queue and topic names are logical; `qualified` gives the broker-level name.
    """

    def __init__(self, options: BusOptions) -> None:
        self.options = options
        self._connect_listeners: list[Callable[[], Awaitable[None]]] = []
        self._replies = PendingReplies()
        self._subscriptions: dict[str, list[Subscription]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._started = False
        self._close_task: asyncio.Future[None] | None = None

    # --- lifecycle ---------------------------------------------------------------------

    @property
    def started(self) -> bool:
        return self._started

    @property
    def closed(self) -> bool:
        """True from the moment `close()` was first called."""
        return self._close_task is not None

    @property
    def connected(self) -> bool:
        """Whether the transport can currently reach its broker."""
        return True

    async def start(self) -> None:
        """Connect and start every consumer and subscriber registered so far.

        Idempotent; does nothing once closed.

        Raises:
          Unavailable: the broker cannot be reached (the transport may be started again).

        Returns:
          Once the consumers and subscribers are registered with the broker and the
          `on_connected` listeners have run.
        """
        if self._started or self.closed:
            return
        self._started = True
        try:
            await self._start()
        except BaseException:
            self._started = False
            raise
        for subs in self._subscriptions.values():
            for sub in subs:
                sub.start()
        await self.notify_connected()

    async def close(self) -> None:
        """Stop consuming, let in-flight handlers finish, disconnect.

        Work handlers already running finish and acknowledge; subscribers handle what they
        received; requests still waiting fail with `Unavailable`. From the first call on,
        `send`, `publish` and `request` fail (`Unavailable` / `NoConsumers`).

        Raises:
          Nothing.

        Returns:
          Once the first close has finished (idempotent, safe to call concurrently).
        """
        if self._close_task is None:
            self._close_task = asyncio.ensure_future(self._close_once())
        await asyncio.shield(self._close_task)

    async def _close_once(self) -> None:
        try:
            await self._close()
        finally:
            self._replies.fail_all(Unavailable("the transport was closed while waiting for a reply"))

    def on_connected(self, listener: Callable[[], Awaitable[None]]) -> None:
        """Call `listener` after every (re)connection, e.g. to catch up on missed fanout."""
        self._connect_listeners.append(listener)

    async def notify_connected(self) -> None:
        """Run the connection listeners (transports call it again after each reconnect); errors are logged."""
        for listener in self._connect_listeners:
            try:
                await listener()
            except Exception:
                log.exception("connection listener failed")

    def qualified(self, name: str) -> str:
        """The broker-level name of a logical queue or topic."""
        return f"{self.options.namespace}.{name}"

    # --- work queues -------------------------------------------------------------------

    async def send(self, queue: str, msg: Message) -> None:
        """Enqueue `msg` on the work queue `queue`; nobody needs to consume it yet.

        Parameters:
          queue: the logical queue name.
          msg: the message; its `attempt` travels with it.

        Raises:
          Unavailable: the transport is closed or cannot reach its broker now (nothing was
            enqueued as far as the caller can tell; the caller decides whether to retry).

        Returns:
          Once the broker holds the message (durably, on the broker transports).
        """
        if self.closed:
            raise Unavailable("the transport is closed", details={"queue": queue})
        await self._send(queue, msg)

    @abstractmethod
    def consume(self, queue: str, handler: Handler, *, prefetch: int | None = None) -> None:
        """Register a competing consumer for `queue` (before or after `start`).

        Each message goes to one consumer, at least once; it is acknowledged only after the
        handler's outcome (done, a retry, a dead letter) is recorded. A handler that raises is
        retried and then dead-lettered as `failure_outcome` decides; a message whose consumer
        stopped before acknowledging comes back as `redelivery_outcome` decides.

        Parameters:
          handler: the coroutine run per message; a returned message answers a request.
          prefetch: how many messages this consumer holds unacknowledged (default
            `options.prefetch`).

        Raises:
          Nothing (a consumer registered after `close` is ignored).
        """

    @abstractmethod
    async def attach(self, queue: str, handler: Handler, *, prefetch: int | None = None) -> None:
        """Start consuming `queue` now, as `consume` does, and wait for the broker to have it.

        Raises:
          Unavailable: the broker cannot be reached now; the consumer then starts on the next
            (re)connection, and is kept across reconnects like one from `consume`.

        Returns:
          Once requests to `queue` can reach this process's consumer.
        """

    @abstractmethod
    async def detach(self, queue: str) -> None:
        """Stop taking new messages from `queue`; handlers already running finish and acknowledge.

        Messages this process took but had not started go back to the queue for other
        consumers, without costing an attempt. A detached queue stays detached for the life of
        the transport.

        Raises:
          Nothing.

        Returns:
          Once the broker stopped delivering `queue` to this process; requests to `queue` no
          longer count this process as a consumer.
        """

    # --- requests ----------------------------------------------------------------------

    async def request(self, queue: str, msg: Message, *, timeout: float) -> Message:
        """Send `msg` to one consumer of `queue` and wait for its reply; never retried.

        Parameters:
          timeout: seconds for the whole call (consumer check, send, reply).

        Raises:
          NoConsumers: nobody consumes `queue` (checked before sending; also after the last
            consumer left or closed, once any cached consumer count expired).
          RequestTimeout: no reply within `timeout`.
          Unavailable: the broker cannot be reached, or the connection or the transport
            closed while waiting.
          SkipperError: the handler's own typed error, rebuilt from its error reply
            (`RemoteError` for an untyped exception).

        Returns:
          The reply; its `correlation_id` is the request's (the message id if it had none).
        """
        if msg.correlation_id is None:
            msg.correlation_id = msg.id
        key, reply_fut = self._replies.open()
        scope = asyncio.timeout(timeout)
        try:
            async with scope:
                if not await self._has_consumers(queue):
                    raise NoConsumers(f"no consumer for queue {queue!r}", details={"queue": queue})
                direct = await self._send_request(queue, msg, key, timeout)
                reply = direct if direct is not None else await reply_fut
        except TimeoutError:
            if not scope.expired():
                raise
            raise RequestTimeout(
                f"no reply from {queue!r} within {timeout:g}s", details={"queue": queue, "timeout_s": timeout}
            ) from None
        finally:
            self._replies.discard(key)
        if reply.is_error:
            raise from_payload(reply.data)
        return reply

    # --- fanout ------------------------------------------------------------------------

    async def publish(self, topic: str, msg: Message) -> None:
        """Deliver `msg` to every live subscriber of `topic`, in every process (none is not an error).

        Order (every transport keeps it; the conformance suite checks it): each subscriber
        handles a topic's messages one at a time, in the order its transport received them;
        for one publisher awaiting each `publish`, that is publish order. Nothing is ordered
        across topics or across publishers. Fanout is at most once: a subscriber that is not
        connected when `msg` is published misses it (`on_connected` listeners catch up).

        Raises:
          Unavailable: the transport is closed or cannot reach its broker now.

        Returns:
          Once the broker took the message (confirmed, on RabbitMQ); not when it was handled.
        """
        if self.closed:
            raise Unavailable("the transport is closed", details={"topic": topic})
        await self._publish(topic, msg)

    def subscribe(self, topic: str, handler: Handler) -> None:
        """Register a subscriber for `topic` (before or after `start`).

        The handler's exceptions are logged and never reach the publisher, the other
        subscribers, or its own next message. Raises nothing; ignored after `close`.
        """
        if self.closed:
            return
        first = topic not in self._subscriptions
        sub = Subscription(topic, handler)
        self._subscriptions.setdefault(topic, []).append(sub)
        if self._started:
            sub.start()
        self._subscribed(sub, first=first)

    def fan_out(self, topic: str, msg: Message) -> None:
        """Hand a received fanout message to every subscription of `topic` in this process."""
        for sub in self._subscriptions.get(topic, ()):
            sub.deliver(msg)

    async def drain_subscriptions(self) -> None:
        """Let every subscriber handle what it received, then stop them (for `_close`)."""
        await asyncio.gather(*(s.drain() for subs in self._subscriptions.values() for s in subs))

    # --- the retry policy and replies, for the hooks -----------------------------------

    async def run_handler(self, queue: str, handler: Handler, msg: Message) -> HandlerOutcome:
        """Run a work-queue or request handler and decide what the transport does next.

        Requests never retry (the caller is waiting): a failure becomes an error reply.
        Work messages that fail are retried `max_retries` times, then dead-lettered.
        """
        try:
            reply = await handler(msg)
        except Exception as exc:
            return self.failure_outcome(queue, msg, exc)
        if msg.reply_to is not None and reply is None:
            reply = msg.reply({})
        return HandlerOutcome(reply=reply)

    def failure_outcome(self, queue: str, msg: Message, exc: BaseException) -> HandlerOutcome:
        """What happens to `msg` after its handler raised `exc` (see `policy`)."""
        if msg.reply_to is not None:
            return policy.request_failed(queue, msg, exc)
        return policy.decide(self.options, queue, msg, exc)

    def redelivery_outcome(self, queue: str, msg: Message) -> HandlerOutcome:
        """What happens to a work message whose consumer stopped before acknowledging it."""
        return policy.redelivered(self.options, queue, msg)

    def dead_letter_report(self, queue: str, msg: Message, error: BaseException | None) -> Message | None:
        """The report sent to the `dead_letters` queue, or None for the reports themselves."""
        return policy.dead_letter_report(queue, msg, error)

    def reply_arrived(self, key: str | None, reply: Message) -> None:
        """Hand a reply to the request waiting on `key` (a late reply is dropped)."""
        self._replies.resolve(key, reply)

    def reply_failed(self, key: str | None, error: BaseException) -> None:
        """Fail the request waiting on `key`."""
        self._replies.fail(key, error)

    def fail_requests(self, error: BaseException) -> None:
        """Fail every request in flight (e.g. the connection dropped)."""
        self._replies.fail_all(error)

    # --- background tasks ---------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run `coro` in the background on the running loop; a failure is logged, `_close` waits or cancels."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background_done)
        return task

    def _background_done(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("background bus task failed: %r", task.exception())

    async def finish_background(self, *, cancel: bool) -> None:
        """Wait for (or cancel, then wait for) every background task."""
        while self._background:
            tasks = list(self._background)
            if cancel:
                for task in tasks:
                    task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # --- hooks --------------------------------------------------------------------------

    @abstractmethod
    async def _start(self) -> None:
        """Connect and start the consumers registered so far (subscriptions start after it)."""

    @abstractmethod
    async def _close(self) -> None:
        """Stop intake, drain handlers (`drain_subscriptions`, `finish_background`), disconnect."""

    @abstractmethod
    async def _send(self, queue: str, msg: Message) -> None:
        """Put `msg` on the broker's work queue; return once the broker holds it."""

    @abstractmethod
    async def _publish(self, topic: str, msg: Message) -> None:
        """Put `msg` on the broker's fanout for `topic` (receivers call `fan_out`)."""

    @abstractmethod
    async def _has_consumers(self, queue: str) -> bool:
        """Whether any process consumes `queue` now (raise `Unavailable` when unreachable)."""

    @abstractmethod
    async def _send_request(self, queue: str, msg: Message, key: str, timeout: float) -> Message | None:
        """Send the request; its reply must reach `reply_arrived(key, reply)`.

        An in-process transport that has the reply at once may return it instead (no round trip).
        """

    @abstractmethod
    def _subscribed(self, sub: Subscription, *, first: bool) -> None:
        """A subscription was added (`first`: the first for its topic); set up the broker side."""
