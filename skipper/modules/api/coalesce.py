"""Coalescing concurrent predict requests into fewer bus requests when the bus crosses a broker.

Over a broker every bus request costs serialization and a round trip through RabbitMQ or
Redis, so at high concurrency the hop, not the model, limits throughput. Requests for one
model are queued; at most `pipeline` bus requests per model are in flight, and whatever
queued up while they were busy goes out as the next one (up to `max_rows` rows). A lone
request goes out at once; under load batches grow by themselves. The server's own
micro-batcher then runs each bus request's rows in one model call.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

SendRows = Callable[[str, list[list[float]], str], Awaitable[dict[str, Any]]]


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
        self._queues: dict[str, deque[_Waiting]] = defaultdict(deque)
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._drains: dict[str, asyncio.Task[None]] = {}
        self._sends: set[asyncio.Task[None]] = set()

    async def predict(self, model: str, rows: list[list[float]], correlation_id: str) -> dict[str, Any]:
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._queues[model].append(_Waiting(rows, correlation_id, future))
        if model not in self._drains:
            self._drains[model] = asyncio.create_task(self._drain(model))
        return await future

    async def _drain(self, model: str) -> None:
        queue = self._queues[model]
        slots = self._slots.setdefault(model, asyncio.Semaphore(self._pipeline))
        try:
            while queue:
                await slots.acquire()
                batch = self._take(queue)
                if not batch:
                    slots.release()
                    continue
                task = asyncio.create_task(self._send_batch(model, batch, slots))
                self._sends.add(task)
                task.add_done_callback(self._sends.discard)
        finally:
            del self._drains[model]

    def _take(self, queue: deque[_Waiting]) -> list[_Waiting]:
        batch: list[_Waiting] = []
        rows = 0
        while queue and (not batch or rows + len(queue[0].rows) <= self._max_rows):
            waiting = queue.popleft()
            if not waiting.future.done():  # the client went away
                batch.append(waiting)
                rows += len(waiting.rows)
        return batch

    async def _send_batch(self, model: str, batch: list[_Waiting], slots: asyncio.Semaphore) -> None:
        try:
            rows = batch[0].rows if len(batch) == 1 else [row for waiting in batch for row in waiting.rows]
            reply = await self._send(model, rows, batch[0].correlation_id)
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
