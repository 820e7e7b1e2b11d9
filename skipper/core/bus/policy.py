"""The one retry and dead-letter policy, decided here for every transport.

A transport carries a decision out (a delay queue, Dramatiq's broker, an asyncio timer), but
never makes its own: `decide` says what happens to a work message whose attempt failed, for a
handler's exception and for a consumer that stopped before acknowledging alike.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from skipper.core import contracts
from skipper.core.bus.options import BusOptions
from skipper.core.errors import RemoteError, SkipperError
from skipper.core.messages import Message

log = logging.getLogger("skipper.bus")


@dataclass(slots=True)
class HandlerOutcome:
    """What a transport does after a handler ran: ack (+reply), retry later, or dead-letter."""

    reply: Message | None = None
    retry_after: float | None = None
    dead_letter: bool = False
    error: BaseException | None = None


class ConsumerStopped(RuntimeError):
    """A work message came back because its consumer stopped before acknowledging it."""


def request_failed(queue: str, msg: Message, exc: BaseException) -> HandlerOutcome:
    """A request never retries (its caller waits): the failure becomes a typed error reply."""
    err = exc if isinstance(exc, SkipperError) else RemoteError(f"{type(exc).__name__}: {exc}")
    if not isinstance(exc, SkipperError):
        log.exception("request handler for %s failed", queue, exc_info=exc)
    return HandlerOutcome(reply=msg.error_reply(err))


def decide(options: BusOptions, queue: str, msg: Message, exc: BaseException, *, delay: float | None = None) -> HandlerOutcome:
    """Retry a failed work message `max_retries` times (after `delay`, else the backoff), then dead-letter it.

    `msg.attempt` is the attempt that failed (0-based); the retried copy is `msg.retried()`.
    """
    if msg.attempt < options.max_retries:
        wait = options.backoff(msg.attempt) if delay is None else delay
        log.warning(
            "handler for %s failed (attempt %d), retrying in %.2fs: %s", queue, msg.attempt + 1, wait, exc,
            extra={"correlation_id": msg.correlation_id},
        )
        return HandlerOutcome(retry_after=wait, error=exc)
    log.error(
        "handler for %s failed %d times, dead-lettering: %s", queue, msg.attempt + 1, exc,
        extra={"correlation_id": msg.correlation_id},
    )
    return HandlerOutcome(dead_letter=True, error=exc)


def redelivered(options: BusOptions, queue: str, msg: Message) -> HandlerOutcome:
    """A work message whose consumer stopped mid-handler (a killed trainer): that run was attempt `msg.attempt`.

    It is retried at once as the next attempt, or dead-lettered once it has used every attempt
    this way (a message that keeps killing its consumers must not crash them forever).
    """
    error = ConsumerStopped(f"its consumer stopped before acknowledging it (attempt {msg.attempt + 1})")
    return decide(options, queue, msg, error, delay=0.0)


def dead_letter_report(queue: str, msg: Message, error: BaseException | None) -> Message | None:
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
