"""The bus interface every transport implements, and the semantics they share.

Three patterns (see DESIGN.md, "The bus"):
- work queues: `send` / `consume`; one consumer per message, at-least-once, ack after the
  handler returns, retries with backoff, then a dead letter and a `message.dead_lettered` report;
- requests: `request` over a work queue; `NoConsumers` at once, `RequestTimeout` after `timeout`;
- fanout: `publish` / `subscribe`; every live subscriber gets every message.

What a work message survives, on every transport: it is acknowledged only after its handler's
outcome (done, a retry, a dead letter) is recorded, so a broker that drops the connection
mid-handler still holds a copy. A copy handed back to the same process while its handler still
runs is held, not run again and not counted as an attempt, and settled with the handler's
outcome; if the process dies first, another consumer runs it as the next attempt. A dropped
connection therefore never loses a message; a dead consumer costs one attempt. (Details per
transport in their module docstrings; `memory` has no connection to lose, and nothing of it
survives its process.)

Queue and topic names given to a transport are logical (`train`, `model.published`); the
transport prefixes them with the namespace so deployments can share one broker.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from skipper.core import contracts
from skipper.core.errors import RemoteError, SkipperError
from skipper.core.messages import Message

Handler = Callable[[Message], Awaitable[Message | None]]

log = logging.getLogger("skipper.bus")


@dataclass(frozen=True, slots=True)
class BusOptions:
    """Transport-independent knobs, filled from `Settings.bus`."""

    namespace: str = "skipper"
    prefetch: int = 16
    max_retries: int = 3
    retry_backoff_s: float = 0.5
    retry_backoff_max_s: float = 30.0
    reconnect_backoff_max_s: float = 10.0
    role: str = "all"  # the process's roles; transports put it in their connection names

    def client_name(self, suffix: str = "") -> str:
        """How this process names its broker connections: `skipper:<namespace>:<role>[:suffix]`.

        Operators (and the fault tests) find one deployment's connections, or one role's, by it.
        """
        return ":".join(p for p in ("skipper", self.namespace, self.role, suffix) if p)

    def backoff(self, attempt: int) -> float:
        return float(min(self.retry_backoff_s * (2**attempt), self.retry_backoff_max_s))


class Transport(ABC):
    """A message bus. Build it without I/O; `start()` connects, `close()` drains and disconnects."""

    def __init__(self, options: BusOptions) -> None:
        self.options = options
        self._connect_listeners: list[Callable[[], Awaitable[None]]] = []

    def on_connected(self, listener: Callable[[], Awaitable[None]]) -> None:
        """Call `listener` after every (re)connection, e.g. to catch up on missed fanout."""
        self._connect_listeners.append(listener)

    async def notify_connected(self) -> None:
        """Transports call this on the event loop once connected, and again after each reconnect."""
        for listener in self._connect_listeners:
            try:
                await listener()
            except Exception:
                log.exception("connection listener failed")

    def qualified(self, name: str) -> str:
        """The broker-level name of a logical queue or topic."""
        return f"{self.options.namespace}.{name}"

    @property
    def connected(self) -> bool:
        """Whether the transport can currently reach its broker."""
        return True

    @abstractmethod
    async def start(self) -> None:
        """Connect and start every consumer and subscriber registered so far."""

    @abstractmethod
    async def close(self) -> None:
        """Stop consuming, let in-flight handlers finish, disconnect. Idempotent."""

    @abstractmethod
    async def send(self, queue: str, msg: Message) -> None:
        """Enqueue `msg` on a work queue; returns once the broker holds it."""

    @abstractmethod
    def consume(self, queue: str, handler: Handler, *, prefetch: int | None = None) -> None:
        """Register a competing consumer for `queue` (before or after `start`)."""

    @abstractmethod
    async def attach(self, queue: str, handler: Handler, *, prefetch: int | None = None) -> None:
        """Start consuming `queue` now (the transport may be running); returns once the broker has the consumer.

        The consumer is kept across reconnects like one from `consume`. Raises `Unavailable` when
        the broker cannot be reached now: the consumer then starts on the next (re)connection.
        """

    @abstractmethod
    async def detach(self, queue: str) -> None:
        """Stop taking new messages from `queue`; handlers already running finish and acknowledge.

        Messages this process took but had not started go back to the queue for other consumers.
        A detached queue stays detached for the life of the transport.
        """

    @abstractmethod
    async def request(self, queue: str, msg: Message, *, timeout: float) -> Message:
        """Send `msg` to `queue` and wait for the reply.

        Raises `NoConsumers` when nobody consumes `queue`, `RequestTimeout` when no reply
        comes within `timeout` seconds, and the remote's typed error when the handler failed.
        """

    @abstractmethod
    async def publish(self, topic: str, msg: Message) -> None:
        """Deliver `msg` to every live subscriber of `topic`."""

    @abstractmethod
    def subscribe(self, topic: str, handler: Handler) -> None:
        """Register a subscriber for `topic` (before or after `start`)."""

    # --- shared semantics -------------------------------------------------------------

    async def run_handler(self, queue: str, handler: Handler, msg: Message) -> HandlerOutcome:
        """Run a work-queue or request handler and decide what the transport does next.

        Requests never retry (the caller is waiting): a failure becomes an error reply.
        Work messages that fail are retried `max_retries` times, then dead-lettered.
        """
        try:
            reply = await handler(msg)
        except Exception as exc:
            if msg.reply_to is not None:
                err = exc if isinstance(exc, SkipperError) else RemoteError(f"{type(exc).__name__}: {exc}")
                if not isinstance(exc, SkipperError):
                    log.exception("request handler for %s failed", queue)
                return HandlerOutcome(reply=msg.error_reply(err))
            if msg.attempt < self.options.max_retries:
                delay = self.options.backoff(msg.attempt)
                log.warning(
                    "handler for %s failed (attempt %d), retrying in %.2fs: %s",
                    queue, msg.attempt + 1, delay, exc,
                    extra={"correlation_id": msg.correlation_id},
                )
                return HandlerOutcome(retry_after=delay, error=exc)
            log.error(
                "handler for %s failed %d times, dead-lettering: %s", queue, msg.attempt + 1, exc,
                extra={"correlation_id": msg.correlation_id},
            )
            return HandlerOutcome(dead_letter=True, error=exc)
        if msg.reply_to is not None and reply is None:
            reply = msg.reply({})
        return HandlerOutcome(reply=reply)

    def dead_letter_report(self, queue: str, msg: Message, error: BaseException | None) -> Message | None:
        """The report sent to the `dead_letters` queue, or None for the reports themselves."""
        if queue == contracts.DEAD_LETTERS:
            return None
        return Message(
            type=contracts.MESSAGE_DEAD_LETTERED,
            body={
                "queue": queue,
                "message_type": msg.type,
                "message_id": msg.id,
                "attempts": msg.attempt + 1,
                "error": f"{type(error).__name__}: {error}" if error else "unknown",
                "headers": dict(msg.headers),
                "body": msg.body if isinstance(msg.body, dict) else None,
            },
            correlation_id=msg.correlation_id,
        )


@dataclass(slots=True)
class HandlerOutcome:
    """What a transport does after a handler ran: ack (+reply), retry later, or dead-letter."""

    reply: Message | None = None
    retry_after: float | None = None
    dead_letter: bool = False
    error: BaseException | None = None
