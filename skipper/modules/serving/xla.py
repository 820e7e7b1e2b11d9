"""XLA for the batch sizes where it pays, compiled in the background as each size is first used.

For a small model most of a plain graph call is TensorFlow's executor handing ops to its thread
pools; XLA fuses the graph into one compiled function that runs on the calling thread, about
twice as fast for the models Skipper trains. But XLA compiles once per input shape (tens to
hundreds of milliseconds each), which a server must not pay at start-up or on the event loop.

So batches are padded to a power of two (a bucket), and the first batch of a bucket runs the
plain graph while one background thread per process compiles that bucket, times it against
the plain graph on the same rows and adopts it only where it is faster (XLA on CPU can lose to
TensorFlow's oneDNN kernels on large convolutions). A model XLA cannot compile (an op it does
not support) is served by the plain graph, with one warning.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

log = logging.getLogger("skipper.serving")

GraphCall = Callable[[np.ndarray], Any]  # float32 [n, n_features] -> a tensor with .numpy()
TIMED_CALLS = 5

_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _compiler() -> ThreadPoolExecutor:
    """One thread for the whole process: compiles queue up instead of taking every core at once."""
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="skipper-xla")
        return _executor


class XlaSizes:
    """Which batch sizes of one model run through XLA; see the module docstring.

    Parameters:
      compile_graph: builds the XLA-compiled graph call (traced on first use, in the background).
      plain: the plain graph call, what every batch runs until its bucket is adopted.
      n_features: the model's input width.
      max_rows: the largest batch (the last bucket).
      name: the model, for logs.
    """

    def __init__(self, compile_graph: Callable[[], GraphCall], plain: GraphCall, *, n_features: int, max_rows: int,
                 name: str) -> None:
        self._compile_graph = compile_graph
        self._plain = plain
        self._n_features = n_features
        self._name = name
        self._buckets = _buckets(max_rows)
        self._xla: GraphCall | None = None
        self._adopted: dict[int, GraphCall] = {}  # written by the compile thread, read on the loop
        self._tried: set[int] = set()
        self._enabled = True
        self._pending = 0
        self._settled = threading.Condition()

    def call_for(self, n: int) -> tuple[int, GraphCall] | None:
        """The padded size and the XLA call for a batch of `n` rows, or None: run the plain graph.

        A bucket's first batch queues its compile; it is not waited for.
        """
        size = self._buckets[min(bisect.bisect_left(self._buckets, n), len(self._buckets) - 1)]
        call = self._adopted.get(size)
        if call is not None:
            return size, call
        if self._enabled and size not in self._tried:
            self._tried.add(size)
            with self._settled:
                self._pending += 1
            _compiler().submit(_try_bucket, weakref.ref(self), size)
        return None

    @property
    def adopted(self) -> list[int]:
        """The bucket sizes that run through XLA now."""
        return sorted(self._adopted)

    @property
    def enabled(self) -> bool:
        """False once XLA could not compile the model: every batch runs the plain graph."""
        return self._enabled

    def settle(self, timeout: float) -> bool:
        """Wait until no compile is queued or running; False on timeout (tests, benchmarks)."""
        with self._settled:
            return self._settled.wait_for(lambda: self._pending == 0, timeout)

    def _try(self, size: int) -> None:
        try:
            if not self._enabled:
                return
            if self._xla is None:
                self._xla = self._compile_graph()
            rows = np.zeros((size, self._n_features), dtype=np.float32)
            started = time.perf_counter()
            self._xla(rows).numpy()  # compiles this shape
            compile_s = time.perf_counter() - started
            xla_s, plain_s = _fastest(self._xla, rows), _fastest(self._plain, rows)
            if xla_s <= plain_s:
                self._adopted[size] = self._xla
            log.debug("XLA for %s, %d rows: compiled in %.0f ms, %.0f us a call against %.0f us plain: %s",
                      self._name, size, compile_s * 1000, xla_s * 1e6, plain_s * 1e6,
                      "adopted" if xla_s <= plain_s else "not adopted")
        except Exception as exc:  # an op XLA does not support, most often: the plain graph keeps serving
            self._enabled = False
            log.warning("XLA cannot compile %s (%s: %s); it is served without XLA", self._name, type(exc).__name__,
                        str(exc).splitlines()[0][:200] if str(exc) else "")
        finally:
            with self._settled:
                self._pending -= 1
                self._settled.notify_all()


def _try_bucket(ref: weakref.ref[XlaSizes], size: int) -> None:
    sizes = ref()
    if sizes is not None:  # else the model was swapped out before its turn came
        sizes._try(size)


def _fastest(call: GraphCall, rows: np.ndarray) -> float:
    best = float("inf")
    for _ in range(TIMED_CALLS):
        started = time.perf_counter()
        call(rows).numpy()
        best = min(best, time.perf_counter() - started)
    return best


def _buckets(max_rows: int) -> tuple[int, ...]:
    sizes = [1]
    while sizes[-1] < max_rows:
        sizes.append(min(sizes[-1] * 2, max_rows))
    return tuple(sizes)
