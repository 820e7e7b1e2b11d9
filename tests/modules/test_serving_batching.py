"""The micro-batcher on its own, with plain Python "models" (no TensorFlow)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import numpy as np
import pytest

from skipper.modules.serving.batching import Batcher, rows_from_instances


class Model:
    """Doubles its input; refuses rows holding -1; records the size of every call."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.calls: list[int] = []
        self.delay_s = delay_s

    def __call__(self, rows: np.ndarray) -> list[Any]:
        self.calls.append(len(rows))
        if self.delay_s:
            time.sleep(self.delay_s)
        if (rows == -1).any():
            raise ValueError("the model cannot take -1")
        return (rows[:, 0] * 2).tolist()  # type: ignore[no-any-return]


def request(*values: float) -> np.ndarray:
    return np.asarray([[v, 0.0] for v in values], dtype=np.float32)


async def test_a_failing_request_fails_alone_and_the_rest_of_its_batch_is_answered() -> None:
    # Given a batcher in front of a model that fails on some rows
    model = Model()
    batcher = Batcher(model, max_rows=64, max_wait_ms=5, inline=True)
    # When a bad request is batched with good ones
    futures = [batcher.submit(request(i, i + 0.5)) for i in range(5)] + [batcher.submit(request(1, -1))]
    results = await asyncio.gather(*futures, return_exceptions=True)
    # Then the good ones get their own predictions and only the bad one fails
    assert results[:5] == [[2 * i, 2 * i + 1] for i in range(5)]
    assert isinstance(results[5], ValueError)
    assert model.calls[0] == 12  # tried together first


async def test_batches_never_exceed_max_rows_unless_one_request_is_larger() -> None:
    model = Model()
    batcher = Batcher(model, max_rows=8, max_wait_ms=5, inline=True)
    futures = [batcher.submit(request(*range(3))) for _ in range(10)] + [batcher.submit(request(*range(20)))]
    results = await asyncio.gather(*futures)
    assert all(r == [0, 2, 4] for r in results[:10]) and results[10] == [2 * i for i in range(20)]
    assert model.calls == [6, 6, 6, 6, 6, 20]


async def test_a_slow_model_runs_in_a_thread_and_requests_arriving_meanwhile_form_the_next_batch() -> None:
    # Given a model that takes 50 ms per call, run off the loop
    model = Model(delay_s=0.05)
    batcher = Batcher(model, max_rows=256, max_wait_ms=1, inline=False)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.005)

    tick_task = asyncio.create_task(ticker())
    # When one request starts a call and 20 more arrive while it runs
    first = batcher.submit(request(1))
    await asyncio.sleep(0.01)
    rest = [batcher.submit(request(i)) for i in range(20)]
    results = await asyncio.gather(first, *rest)
    tick_task.cancel()
    # Then the loop kept running during the calls, and the 20 were answered by one call
    assert ticks >= 10
    assert model.calls == [1, 20]
    assert results == [[2.0], *[[2.0 * i] for i in range(20)]]
    await batcher.drained()
    assert not batcher.busy


async def test_a_cancelled_request_is_skipped() -> None:
    model = Model()
    batcher = Batcher(model, max_rows=64, max_wait_ms=5, inline=True)
    gone = batcher.submit(request(7))
    kept = batcher.submit(request(3))
    gone.cancel()
    assert await kept == [6.0]
    assert model.calls == [1]


@pytest.mark.parametrize("inline", [True, False])
async def test_drained_waits_for_requests_in_flight(inline: bool) -> None:
    batcher = Batcher(Model(delay_s=0.01), max_rows=4, max_wait_ms=1, inline=inline)
    futures = [batcher.submit(request(i)) for i in range(10)]
    await batcher.drained()
    assert all(f.done() for f in futures) and batcher.calls == 3


async def test_a_model_too_slow_for_a_full_batch_inline_still_runs_small_batches_on_the_loop() -> None:
    # Given a batcher whose full batches run in a thread but batches of up to 2 rows on the loop
    threads: list[int] = []

    def model(rows: np.ndarray) -> list[Any]:
        threads.append(threading.get_ident())
        return (rows[:, 0] * 2).tolist()  # type: ignore[no-any-return]

    batcher = Batcher(model, max_rows=8, max_wait_ms=0, inline=False, inline_rows=2)
    # When a lone request of 1 row, then one of 3 rows, are answered
    assert await batcher.submit(request(1)) == [2]
    assert await batcher.submit(request(1, 2, 3)) == [2, 4, 6]
    # Then only the larger batch left the loop's thread
    assert threads[0] == threading.get_ident() and threads[1] != threading.get_ident()


@pytest.mark.parametrize("instances", [
    pytest.param([[0.5, -2.0, 3.25], [1, 2, 3]], id="floats-and-ints"),
    pytest.param([[3.4028234663852886e38, -3.4028234663852886e38, 0.0]], id="float32-extremes"),
    pytest.param([[True, 0.0, 1.5]], id="a-bool-as-before"),
    pytest.param([[1e-50, 2**60, -7]], id="tiny-and-large"),
])
def test_valid_rows_become_the_same_float32_array_on_either_path(instances: list[list[Any]]) -> None:
    # The usual rows skip numpy's checks; whatever path they take, the model sees numpy's own conversion.
    rows = rows_from_instances(instances, 3)
    assert rows.dtype == np.float32
    np.testing.assert_array_equal(rows, np.asarray(instances, dtype=np.float32))
