"""Micro-batching: concurrent requests for one loaded model share one model call.

Strategy (adaptive, no fixed delay): the first request starts a drain task. Before each
model call the drain task yields to the event loop once; if that iteration brought more
requests it yields again, and so on while requests keep arriving, for at most `max_wait_ms`
and until `max_batch_size` rows are queued. A lone request therefore waits one loop
iteration (microseconds), while under load the requests that arrive during a model call
(or the same loop iteration) form the next batch, so batches grow with concurrency.

The model call runs inline on the loop when a full batch is cheap (~0.2 ms for the small
models Skipper trains: a thread hop would cost more than the call), else in a worker thread
so the loop keeps accepting requests. A model too slow for a full batch inline still runs its
small batches inline (`inline_rows`: the lone requests of low concurrency), which saves them
the thread hop: a handful of microseconds of CPU and a context switch each. A failing batch is retried request by request, so
one bad request fails alone.

Load shedding (as TF Serving's `max_enqueued_batches`): when more than `max_queued_rows` rows
already wait for a model call, a new request fails at once with `Overloaded` (503 with
`Retry-After` at the api) instead of waiting behind them; the error crosses the bus typed.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from skipper.core import numbers
from skipper.core.errors import Overloaded, ValidationFailed

log = logging.getLogger("skipper.serving")

RunBatch = Callable[[np.ndarray], list[Any]]
SHED_RETRY_AFTER_S = 1.0


@dataclass(slots=True)
class _Pending:
    rows: np.ndarray
    future: asyncio.Future[list[Any]]


class Batcher:
    """Queues requests for one model version and runs them in merged batches, one at a time."""

    def __init__(self, run: RunBatch, *, max_rows: int, max_wait_ms: float, inline: bool,
                 max_queued_rows: int | None = None, on_batch: Callable[[int], None] | None = None,
                 inline_rows: int = 0) -> None:
        self._run = run
        self._on_batch = on_batch  # told the rows of each model call (the batch-size histogram)
        self._max_rows = max_rows
        self._max_queued_rows = max_queued_rows
        self._max_wait_s = max_wait_ms / 1000
        self.inline = inline
        self.inline_rows = max_rows if inline else inline_rows  # batches up to this many rows run on the loop
        self._queue: deque[_Pending] = deque()
        self._queued_rows = 0
        self._arrivals = 0
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        # Counters for tests and metrics.
        self.calls = 0
        self.requests = 0
        self.rows = 0
        self.shed = 0

    def submit(self, rows: np.ndarray) -> asyncio.Future[list[Any]]:
        """Queue `rows` (one request); the future resolves to exactly their predictions.

        Raises `Overloaded` at once when the queue already holds more than `max_queued_rows` rows.
        """
        if self._max_queued_rows is not None and self._queued_rows + len(rows) > self._max_queued_rows:
            self.shed += 1
            raise Overloaded(f"the model's queue is full ({self._queued_rows} rows waiting); retry shortly",
                             details={"queued_rows": self._queued_rows, "limit": self._max_queued_rows,
                                      "retry_after_s": SHED_RETRY_AFTER_S})
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(rows, future))
        self._queued_rows += len(rows)
        self._arrivals += 1
        if self._task is None:
            self._idle.clear()
            self._task = asyncio.create_task(self._drain(self._arrivals), name="skipper.serving.batch")
        return future

    @property
    def queued_rows(self) -> int:
        """Rows waiting for a model call now (the queue-depth gauge)."""
        return self._queued_rows

    @property
    def busy(self) -> bool:
        return self._task is not None

    async def drained(self) -> None:
        """Wait until every request submitted so far has been answered."""
        await self._idle.wait()

    # --- internals -----------------------------------------------------------------------

    async def _drain(self, arrivals_at_start: int) -> None:
        try:
            first: int | None = arrivals_at_start
            while self._queue:
                await self._gather(first)
                first = None
                batch = self._take()
                if batch:
                    await self._execute(batch)
        finally:
            self._task = None
            self._idle.set()

    async def _gather(self, arrivals_at_start: int | None = None) -> None:
        """Yield to the loop while more requests keep arriving, up to max_wait and max_rows.

        The first batch of a drain has already waited the loop iteration its task took to start:
        when that brought no other request, it goes at once (a lone request waits one iteration).
        """
        if arrivals_at_start is not None and self._arrivals == arrivals_at_start:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._max_wait_s
        while self._queued_rows < self._max_rows:
            seen = self._arrivals
            await asyncio.sleep(0)
            if self._arrivals == seen or loop.time() >= deadline:
                return

    def _take(self) -> list[_Pending]:
        batch: list[_Pending] = []
        rows = 0
        while self._queue:
            head = self._queue[0]
            if batch and rows + len(head.rows) > self._max_rows:
                break
            self._queue.popleft()
            self._queued_rows -= len(head.rows)
            if head.future.done():  # the caller gave up (cancelled): don't compute for it
                continue
            batch.append(head)
            rows += len(head.rows)
        return batch

    async def _execute(self, batch: list[_Pending]) -> None:
        rows = batch[0].rows if len(batch) == 1 else np.concatenate([p.rows for p in batch])
        try:
            predictions = await self._call(rows)
            if len(predictions) != len(rows):
                raise RuntimeError(f"predictor returned {len(predictions)} predictions for {len(rows)} rows")
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0].future, exc=exc)
                return
            log.warning("a batch of %d requests failed (%s); retrying them one by one", len(batch), exc)
            for pending in batch:
                await self._execute([pending])
            return
        offset = 0
        for pending in batch:
            n = len(pending.rows)
            _settle(pending.future, result=predictions[offset : offset + n])
            offset += n

    async def _call(self, rows: np.ndarray) -> list[Any]:
        self.calls += 1
        self.rows += len(rows)
        if self._on_batch is not None:
            self._on_batch(len(rows))
        if len(rows) <= self.inline_rows:
            return self._run(rows)
        return await asyncio.to_thread(self._run, rows)


def _settle(future: asyncio.Future[list[Any]], *, result: list[Any] | None = None, exc: Exception | None = None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result or [])


def rows_from_instances(instances: object, n_features: int) -> np.ndarray:
    """The request's rows as a `[n, n_features]` float32 array, or `ValidationFailed` naming the bad row."""
    if not isinstance(instances, list) or not instances:
        raise ValidationFailed("instances must be a non-empty list of rows", details={"field": "instances"})
    if _plain(instances, n_features):  # the usual request: checked in Python, converted without numpy's checks
        return np.array(instances, dtype=np.float32)
    try:
        with np.errstate(over="ignore"):  # values beyond float32 become inf, refused just below
            rows = np.asarray(instances, dtype=np.float32)
    except (ValueError, TypeError, OverflowError):
        rows = None
    if rows is None or rows.ndim != 2 or rows.shape[1] != n_features:
        raise _bad_row(instances, n_features)
    if not np.isfinite(rows).all():
        index = int(np.flatnonzero(~np.isfinite(rows).all(axis=1))[0])
        raise ValidationFailed(
            f"instances[{index}] holds a value that is not a finite number",
            details={"field": f"instances[{index}]"},
        )
    return rows


def _plain(instances: list[Any], n_features: int) -> bool:
    """Whether every row is a list of `n_features` plain numbers, all finite and within float32's range.

    Per request this costs less than numpy's error-state switch and finiteness check; anything
    else (a bool, an overflow, a short row) takes the checked path, which names the problem.
    """
    return all(type(row) is list and len(row) == n_features and numbers.plain(row)
               and numbers.finite_within(row, numbers.FLOAT32_MAX) for row in instances)


def _bad_row(instances: list[Any], n_features: int) -> ValidationFailed:
    for index, row in enumerate(instances):
        field = f"instances[{index}]"
        if not isinstance(row, list) or len(row) != n_features:
            got = f"{len(row)} values" if isinstance(row, list) else type(row).__name__
            return ValidationFailed(
                f"{field} must be a list of {n_features} numbers, got {got}",
                details={"field": field, "expected": n_features},
            )
        if not all(isinstance(v, (int, float)) for v in row):
            return ValidationFailed(f"{field} must hold only numbers", details={"field": field})
        if any(isinstance(v, int) and abs(v) > 2**127 for v in row):
            return ValidationFailed(f"{field} holds a number out of range", details={"field": field})
    return ValidationFailed("instances must be a list of rows of numbers", details={"field": "instances"})
