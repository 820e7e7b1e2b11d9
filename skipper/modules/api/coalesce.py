"""Coalescing concurrent predict requests into fewer bus requests when the bus crosses a broker.

Over a broker every bus request costs serialization and a round trip through RabbitMQ or
Redis, so at high concurrency the hop, not the model, limits throughput. Requests for one
model (and version) are queued; at most `pipeline` bus requests per model are in flight, and whatever
queued up while they were busy goes out as the next one (up to `max_rows` rows). A request that
finds nothing queued and a free slot goes out at once, from its own task (no hand-over to a
drain task: two loop iterations less for the lone requests of low concurrency); under load
batches grow by themselves. The server's own micro-batcher then runs each bus request's rows in
one model call.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

# (model, rows, correlation_id, version or None for the production one) -> the server's reply
SendRows = Callable[[str, list[list[float]], str, int | None], Awaitable[dict[str, Any]]]
Key = tuple[str, int | None]  # requests for one model version share bus requests


@dataclass(slots=True)
class _Waiting:
    rows: list[list[float]]
    correlation_id: str
    future: asyncio.Future[dict[str, Any]]


class PredictCoalescer:
    def __init__(self, send: SendRows, *, max_rows: int, pipeline: int) -> None:
        self._send = send
        self._max_rows = max_rows
        self._pipeline = pipeline
        self._queues: dict[Key, deque[_Waiting]] = defaultdict(deque)
        self._slots: dict[Key, asyncio.Semaphore] = {}
        self._drains: dict[Key, asyncio.Task[None]] = {}
        self._sends: set[asyncio.Task[None]] = set()

    async def predict(self, model: str, rows: list[list[float]], correlation_id: str,
                      version: int | None = None) -> dict[str, Any]:
        key = (model, version)
        slots = self._slot(key)
        if not slots.locked() and not self._queues[key]:
            # Nothing waits before it and a slot is free: queueing would only hand it to the drain task.
            await slots.acquire()  # free: returns at once
            try:
                return await self._send(model, rows, correlation_id, version)
            finally:
                slots.release()
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._queues[key].append(_Waiting(rows, correlation_id, future))
        if key not in self._drains:
            self._drains[key] = asyncio.create_task(self._drain(key))
        return await future

    async def _drain(self, key: Key) -> None:
        queue = self._queues[key]
        slots = self._slot(key)
        try:
            while queue:
                await slots.acquire()
                batch = self._take(queue)
                if not batch:
                    slots.release()
                    continue
                task = asyncio.create_task(self._send_batch(key, batch, slots))
                self._sends.add(task)
                task.add_done_callback(self._sends.discard)
        finally:
            del self._drains[key]

    def _slot(self, key: Key) -> asyncio.Semaphore:
        slots = self._slots.get(key)
        if slots is None:
            slots = self._slots[key] = asyncio.Semaphore(self._pipeline)
        return slots

    def _take(self, queue: deque[_Waiting]) -> list[_Waiting]:
        batch: list[_Waiting] = []
        rows = 0
        while queue and (not batch or rows + len(queue[0].rows) <= self._max_rows):
            waiting = queue.popleft()
            if not waiting.future.done():  # the client went away
                batch.append(waiting)
                rows += len(waiting.rows)
        return batch

    async def _send_batch(self, key: Key, batch: list[_Waiting], slots: asyncio.Semaphore) -> None:
        try:
            rows = batch[0].rows if len(batch) == 1 else [row for waiting in batch for row in waiting.rows]
            reply = await self._send(key[0], rows, batch[0].correlation_id, key[1])
        except Exception as exc:
            for waiting in batch:
                if not waiting.future.done():
                    waiting.future.set_exception(exc)
            return
        finally:
            slots.release()
        predictions = reply["predictions"]
        offset = 0
        for waiting in batch:
            n = len(waiting.rows)
            if not waiting.future.done():
                waiting.future.set_result({**reply, "predictions": predictions[offset : offset + n]})
            offset += n
