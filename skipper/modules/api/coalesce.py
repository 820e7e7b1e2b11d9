"""Coalescing concurrent predict requests into fewer bus requests when the bus crosses a broker.

Over a broker every bus request costs serialization and a round trip through RabbitMQ or
Redis, so at high concurrency the hop, not the model, limits throughput. Requests for one
model (and version) are queued; a window of bus requests per model is in flight, and whatever
queued up while they were busy goes out as the next one (up to `max_rows` rows). A request that
finds nothing queued and room in the window goes out at once, from its own task (no hand-over
to a drain task: two loop iterations less for the lone requests of low concurrency); under load
batches grow by themselves. The server's own micro-batcher then runs each bus request's rows in
one model call.

The window is `pipeline(model)`, asked each time it matters (never below one): by default one
bus request per serving replica of the model. A server runs one model call at a time, so more
bus requests than servers only cut the batches smaller: more model calls, messages and
deliveries for the same rows (measured: with one server, a window of 4 instead of 1 cost 20%
of the throughput at 8 and at 64 concurrent requests, on every broker).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

# (model, rows, correlation_id, version or None for the production one) -> the server's reply
SendRows = Callable[[str, list[list[float]], str, int | None], Awaitable[dict[str, Any]]]
Window = Callable[[str], int]  # model -> bus requests it may have in flight
Key = tuple[str, int | None]  # requests for one model version share bus requests


def _fixed(size: int) -> Window:
    return lambda _model: size


@dataclass(slots=True)
class _Waiting:
    rows: list[list[float]]
    correlation_id: str
    future: asyncio.Future[dict[str, Any]]


class PredictCoalescer:
    """Merges concurrent predict requests per model version into bus requests (see the module docstring).

    `pipeline` is the window: a number, or a function of the model asked whenever a bus request
    would go out while others are in flight.
    """

    def __init__(self, send: SendRows, *, max_rows: int, pipeline: int | Window) -> None:
        self._send = send
        self._max_rows = max_rows
        self._window = pipeline if callable(pipeline) else _fixed(pipeline)
        self._queues: dict[Key, deque[_Waiting]] = defaultdict(deque)
        self._in_flight: dict[Key, int] = defaultdict(int)
        self._room_made: dict[Key, asyncio.Future[None]] = {}
        self._drains: dict[Key, asyncio.Task[None]] = {}
        self._sends: set[asyncio.Task[None]] = set()

    async def predict(self, model: str, rows: list[list[float]], correlation_id: str,
                      version: int | None = None) -> dict[str, Any]:
        key = (model, version)
        if not self._queues[key] and self._has_room(key):
            # Nothing waits before it and the window has room: queueing would only hand it to the drain task.
            self._in_flight[key] += 1
            try:
                return await self._send(model, rows, correlation_id, version)
            finally:
                self._done(key)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._queues[key].append(_Waiting(rows, correlation_id, future))
        if key not in self._drains:
            self._drains[key] = asyncio.create_task(self._drain(key))
        return await future

    async def _drain(self, key: Key) -> None:
        queue = self._queues[key]
        try:
            while queue:
                if not self._has_room(key):
                    room = self._room_made.get(key)
                    if room is None:
                        room = self._room_made[key] = asyncio.get_running_loop().create_future()
                    await room
                    continue
                batch = self._take(queue)
                if not batch:
                    continue
                self._in_flight[key] += 1
                task = asyncio.create_task(self._send_batch(key, batch))
                self._sends.add(task)
                task.add_done_callback(self._sends.discard)
        finally:
            del self._drains[key]

    def _has_room(self, key: Key) -> bool:
        in_flight = self._in_flight[key]
        return in_flight == 0 or in_flight < self._window(key[0])

    def _done(self, key: Key) -> None:
        """A bus request of `key` ended: its place in the window is free for the drain task."""
        self._in_flight[key] -= 1
        room = self._room_made.pop(key, None)
        if room is not None and not room.done():
            room.set_result(None)

    def _take(self, queue: deque[_Waiting]) -> list[_Waiting]:
        batch: list[_Waiting] = []
        rows = 0
        while queue and (not batch or rows + len(queue[0].rows) <= self._max_rows):
            waiting = queue.popleft()
            if not waiting.future.done():  # the client went away
                batch.append(waiting)
                rows += len(waiting.rows)
        return batch

    async def _send_batch(self, key: Key, batch: list[_Waiting]) -> None:
        try:
            rows = batch[0].rows if len(batch) == 1 else [row for waiting in batch for row in waiting.rows]
            reply = await self._send(key[0], rows, batch[0].correlation_id, key[1])
        except Exception as exc:
            for waiting in batch:
                if not waiting.future.done():
                    waiting.future.set_exception(exc)
            return
        finally:
            self._done(key)
        predictions = reply["predictions"]
        offset = 0
        for waiting in batch:
            n = len(waiting.rows)
            if not waiting.future.done():
                waiting.future.set_result({**reply, "predictions": predictions[offset : offset + n]})
            offset += n
