"""In-process transport on asyncio queues: the embedded default.

Messages are passed by reference (no serialization on the hot path). Everything lives in
this process, so "durable" means "until the process exits"; retries, dead letters,
`NoConsumers` and `RequestTimeout` behave as on the brokers (the base class owns them). There
is no connection to drop: a handler's outcome is applied as soon as it returns; a crash of the
process loses what was queued (the tasks themselves are rows in the database).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict

from skipper.core import contracts
from skipper.core.bus import BusOptions, Handler, HandlerOutcome, Subscription, Transport
from skipper.core.messages import Message

log = logging.getLogger("skipper.transports.memory")

DIRECT_REPLY = "memory.direct"


class _Worker:
    """One consumer slot: pulls from a queue and runs the handler; cancellable only when idle."""

    def __init__(self, queue: str) -> None:
        self.queue = queue
        self.busy = False
        self.detached = False
        self.killed = False
        self.task: asyncio.Task[None] | None = None


class MemoryTransport(Transport):
    """A bus inside one event loop."""

    def __init__(self, options: BusOptions | None = None) -> None:
        super().__init__(options or BusOptions())
        self._queues: dict[str, asyncio.Queue[Message]] = defaultdict(asyncio.Queue)
        self._consumers: dict[str, list[tuple[Handler, int]]] = defaultdict(list)
        self._workers: list[_Worker] = []
        self._round_robin = 0
        self._requests_in_flight = 0
        self._requests_idle = asyncio.Event()
        self._requests_idle.set()
        self.dead_letters: dict[str, list[Message]] = defaultdict(list)

    async def _start(self) -> None:
        for queue, consumers in self._consumers.items():
            for handler, prefetch in consumers:
                self._spawn_workers(queue, handler, prefetch)

    async def _close(self) -> None:
        for worker in self._workers:
            if not worker.busy and worker.task is not None:
                worker.task.cancel()
        await asyncio.gather(*(w.task for w in self._workers if w.task is not None), return_exceptions=True)
        await self.drain_subscriptions()
        await self.finish_background(cancel=False)
        await self._requests_idle.wait()

    async def _send(self, queue: str, msg: Message) -> None:
        self._queues[queue].put_nowait(msg)

    def consume(self, queue: str, handler: Handler, *, prefetch: int | None = None) -> None:
        slots = prefetch or self.options.prefetch
        self._consumers[queue].append((handler, slots))
        if self.started and not self.closed:
            self._spawn_workers(queue, handler, slots)

    async def attach(self, queue: str, handler: Handler, *, prefetch: int | None = None) -> None:
        self.consume(queue, handler, prefetch=prefetch)

    async def detach(self, queue: str) -> None:
        self._consumers.pop(queue, None)  # requests see no consumer from now on
        for worker in self._workers:
            if worker.queue == queue:
                worker.detached = True
                if not worker.busy and worker.task is not None:
                    worker.task.cancel()

    async def _has_consumers(self, queue: str) -> bool:
        return bool(self._consumers.get(queue)) and self.started and not self.closed

    async def _send_request(self, queue: str, msg: Message, key: str, timeout: float) -> Message:
        # In-process, a request needs no queue hop: the handler runs in the caller's task
        # (round-robin over consumers), which keeps the predict path to one await.
        consumers = self._consumers[queue]
        self._round_robin += 1
        handler, _ = consumers[self._round_robin % len(consumers)]
        msg.reply_to = DIRECT_REPLY
        self._requests_in_flight += 1
        self._requests_idle.clear()
        try:
            outcome = await self.run_handler(queue, handler, msg)
        finally:
            self._requests_in_flight -= 1
            if not self._requests_in_flight:
                self._requests_idle.set()
        assert outcome.reply is not None  # run_handler always answers a request
        return outcome.reply

    async def _publish(self, topic: str, msg: Message) -> None:
        self.fan_out(topic, msg)

    def _subscribed(self, sub: Subscription, *, first: bool) -> None:
        """Nothing to set up: `publish` hands messages straight to the subscriptions."""

    def kill_consumers(self, queue: str) -> int:
        """Test-only: the consumers of `queue` that are mid-handler die, as a killed process's would.

        Their handlers are cancelled and their messages come back as the base class's
        `redelivery_outcome` says (the next attempt, or a dead letter), like a broker's
        redelivery. Returns how many died.
        """
        killed = 0
        for worker in self._workers:
            if worker.queue == queue and worker.busy and worker.task is not None:
                worker.killed = True
                worker.task.cancel()
                killed += 1
        return killed

    # --- internals -----------------------------------------------------------------------

    def _spawn_workers(self, queue: str, handler: Handler, slots: int) -> None:
        for _ in range(slots):
            worker = _Worker(queue)
            worker.task = asyncio.create_task(self._work(queue, handler, worker))
            self._workers.append(worker)

    async def _work(self, queue: str, handler: Handler, worker: _Worker) -> None:
        q = self._queues[queue]
        while not self.closed and not worker.detached:
            msg = await q.get()
            worker.busy = True
            try:
                self._apply(queue, msg, await self.run_handler(queue, handler, msg))
            except asyncio.CancelledError:
                if worker.killed:  # its consumer died mid-handler: that run was one attempt
                    self._apply(queue, msg, self.redelivery_outcome(queue, msg))
                raise
            finally:
                worker.busy = False

    def _apply(self, queue: str, msg: Message, outcome: HandlerOutcome) -> None:
        if outcome.retry_after is not None:
            asyncio.get_running_loop().call_later(outcome.retry_after, self._redeliver, queue, msg.retried())
        elif outcome.dead_letter:
            self.dead_letters[queue].append(msg)
            report = self.dead_letter_report(queue, msg, outcome.error)
            if report is not None:
                self._queues[contracts.DEAD_LETTERS].put_nowait(report)

    def _redeliver(self, queue: str, msg: Message) -> None:
        if not self.closed:
            self._queues[queue].put_nowait(msg)
