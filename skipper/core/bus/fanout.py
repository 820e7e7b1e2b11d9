"""A subscriber's inbox: fanout messages handled one at a time, in arrival order, errors isolated."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from skipper.core.messages import Message

Handler = Callable[[Message], Awaitable[Message | None]]

log = logging.getLogger("skipper.bus")


class Subscription:
    """One `subscribe` call: its handler sees the topic's messages in the order they arrived.

    A transport hands each message to `deliver` (on the event loop), with an optional `done`
    callback run once the handler finished (a broker ack). A failing handler is logged and the
    next message is handled: one subscriber's error never reaches the publisher or the others.
    """

    def __init__(self, topic: str, handler: Handler) -> None:
        self.topic = topic
        self.handler = handler
        self._inbox: asyncio.Queue[tuple[Message, Callable[[], None] | None]] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None

    def deliver(self, msg: Message, done: Callable[[], None] | None = None) -> None:
        """Queue `msg` for the handler (it runs once the transport has started)."""
        self._inbox.put_nowait((msg, done))

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._run())

    async def drain(self) -> None:
        """Handle what has arrived, then stop the worker (the transport is closing)."""
        if self._worker is None:
            return
        await self._inbox.join()
        self._worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._worker

    async def _run(self) -> None:
        while True:
            msg, done = await self._inbox.get()
            try:
                await self.handler(msg)
            except Exception:
                log.exception("subscriber of %s failed", self.topic, extra={"correlation_id": msg.correlation_id})
            finally:
                self._inbox.task_done()
                if done is not None:
                    done()
