"""XlaSizes: a bucket runs the plain graph until its compile (in the background) proves faster."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

from skipper.modules.serving.xla import XlaSizes


class Out:
    """What a graph call returns: something with `.numpy()`."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def numpy(self) -> np.ndarray:
        return self.array


class Graph:
    """A graph call that takes `delay_s` (or raises `fail`)."""

    def __init__(self, delay_s: float, fail: Exception | None = None) -> None:
        self.delay_s = delay_s
        self.fail = fail

    def __call__(self, rows: np.ndarray) -> Any:
        if self.fail is not None:
            raise self.fail
        time.sleep(self.delay_s)
        return Out(np.zeros((rows.shape[0], 1), dtype=np.float32))


def test_a_bucket_faster_through_xla_is_adopted_after_its_first_batch_and_a_slower_one_is_not() -> None:
    fast_call, plain_call = Graph(0.0), Graph(0.002)
    sizes = XlaSizes(lambda: fast_call, plain_call, n_features=3, max_rows=8, name="m")
    assert sizes.call_for(1) is None  # the first batch of a size runs plain; its compile is queued
    assert sizes.call_for(3) is None
    assert sizes.settle(timeout=10)
    assert sizes.adopted == [1, 4]  # 3 rows pad up to the bucket of 4
    size, call = sizes.call_for(3) or (0, None)
    assert size == 4 and call is fast_call
    assert sizes.call_for(9) is None and sizes.settle(timeout=10) and 8 in sizes.adopted  # capped at max_rows

    slow_call = Graph(0.004)
    sizes = XlaSizes(lambda: slow_call, plain_call, n_features=3, max_rows=8, name="m")
    assert sizes.call_for(2) is None and sizes.settle(timeout=10)
    assert sizes.adopted == [] and sizes.enabled and sizes.call_for(2) is None  # tried once, plain it stays


def test_a_model_that_does_not_compile_turns_xla_off_for_good(caplog: pytest.LogCaptureFixture) -> None:
    broken_call, plain_call = Graph(0.0, fail=RuntimeError("op NumpyFunction not supported by XLA\nmore")), Graph(0.0)
    sizes = XlaSizes(lambda: broken_call, plain_call, n_features=3, max_rows=8, name="m")
    assert sizes.call_for(1) is None and sizes.settle(timeout=10)
    assert not sizes.enabled and sizes.adopted == []
    assert sizes.call_for(4) is None and sizes.settle(timeout=1)  # nothing more is queued
    (warning,) = [r for r in caplog.records if "cannot compile" in r.getMessage()]
    assert "NumpyFunction" in warning.getMessage() and "more" not in warning.getMessage()
