"""The api's coalescer: concurrent predict requests share bus requests, each gets exactly its rows back."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from skipper.core.errors import RequestTimeout
from skipper.modules.api.coalesce import PredictCoalescer


class FakeBus:
    def __init__(self, delay: float = 0.01, fail: bool = False) -> None:
        self.sent: list[list[list[float]]] = []
        self.versions: list[int | None] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._delay = delay
        self._fail = fail

    async def send(self, model: str, rows: list[list[float]], correlation_id: str,
                   version: int | None = None) -> dict[str, Any]:
        self.sent.append(rows)
        self.versions.append(version)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self._delay)
            if self._fail:
                raise RequestTimeout("no reply")
            return {"predictions": [row[0] * 10 for row in rows], "model": model, "model_version": 3}
        finally:
            self.in_flight -= 1


async def test_concurrent_requests_share_bus_requests_and_each_gets_its_own_predictions() -> None:
    bus = FakeBus()
    coalescer = PredictCoalescer(bus.send, max_rows=256, pipeline=2)
    requests = [[[float(i)], [float(i) + 0.5]] for i in range(100)]
    replies = await asyncio.gather(*(coalescer.predict("m", rows, f"c{i}") for i, rows in enumerate(requests)))
    for i, reply in enumerate(replies):
        assert reply["predictions"] == [i * 10.0, (i + 0.5) * 10]
        assert reply["model_version"] == 3
    assert len(bus.sent) < 20  # far fewer bus requests than the 100 predict requests
    assert bus.max_in_flight <= 2
    assert sum(len(rows) for rows in bus.sent) == 200


async def test_a_lone_request_goes_out_alone_and_batches_respect_max_rows() -> None:
    bus = FakeBus(delay=0.001)
    coalescer = PredictCoalescer(bus.send, max_rows=4, pipeline=1)
    assert (await coalescer.predict("m", [[1.0]], "c"))["predictions"] == [10.0]
    assert bus.sent == [[[1.0]]]
    await asyncio.gather(*(coalescer.predict("m", [[float(i)]] * 3, "c") for i in range(10)))
    assert all(len(rows) <= 4 for rows in bus.sent)


async def test_a_failed_bus_request_fails_every_request_in_it_and_the_next_ones_still_flow() -> None:
    failing = FakeBus(fail=True)
    coalescer = PredictCoalescer(failing.send, max_rows=64, pipeline=1)
    results = await asyncio.gather(*(coalescer.predict("m", [[1.0]], "c") for _ in range(5)), return_exceptions=True)
    assert all(isinstance(r, RequestTimeout) for r in results)
    failing._fail = False
    assert (await coalescer.predict("m", [[2.0]], "c"))["predictions"] == [20.0]


async def test_models_are_coalesced_separately() -> None:
    bus = FakeBus()
    coalescer = PredictCoalescer(bus.send, max_rows=64, pipeline=1)
    a, b = await asyncio.gather(coalescer.predict("a", [[1.0]], "c"), coalescer.predict("b", [[2.0]], "c"))
    assert (a["model"], b["model"]) == ("a", "b")


async def test_requests_pinned_to_a_version_are_coalesced_only_with_requests_for_that_version() -> None:
    bus = FakeBus(delay=0.02)
    coalescer = PredictCoalescer(bus.send, max_rows=64, pipeline=1)
    versions = [None, 1, 2] * 6
    await asyncio.gather(*(coalescer.predict("m", [[float(i)]], "c", version) for i, version in enumerate(versions)))
    # each bus request carries the version its requests asked for, and only those requests' rows
    for rows, version in zip(bus.sent, bus.versions, strict=True):
        assert {versions[int(row[0])] for row in rows} == {version}
    assert set(bus.versions) == {None, 1, 2} and len(bus.sent) < len(versions)


@pytest.mark.parametrize("pipeline", [1, 4])
async def test_a_cancelled_caller_does_not_break_the_others(pipeline: int) -> None:
    bus = FakeBus(delay=0.05)
    coalescer = PredictCoalescer(bus.send, max_rows=64, pipeline=pipeline)
    first = asyncio.create_task(coalescer.predict("m", [[1.0]], "c"))
    await asyncio.sleep(0)
    doomed = asyncio.create_task(coalescer.predict("m", [[2.0]], "c"))
    survivor = asyncio.create_task(coalescer.predict("m", [[3.0]], "c"))
    await asyncio.sleep(0)
    doomed.cancel()
    assert (await first)["predictions"] == [10.0]
    assert (await survivor)["predictions"] == [30.0]


async def test_a_lone_request_is_sent_from_its_own_task_and_the_pipeline_bound_still_holds() -> None:
    bus = FakeBus(delay=0.02)
    senders: list[asyncio.Task[Any] | None] = []
    send = bus.send

    async def recording_send(model: str, rows: list[list[float]], correlation_id: str,
                             version: int | None = None) -> dict[str, Any]:
        senders.append(asyncio.current_task())
        return await send(model, rows, correlation_id, version)

    coalescer = PredictCoalescer(recording_send, max_rows=64, pipeline=2)
    lone = asyncio.create_task(coalescer.predict("m", [[1.0]], "c"))
    assert (await lone)["predictions"] == [10.0]
    assert senders == [lone]  # no hand-over to a drain task

    # Two slots: the first two go out alone at once, the rest wait and go out merged, in order.
    callers = [asyncio.create_task(coalescer.predict("m", [[float(i)]], "c")) for i in range(10)]
    replies = await asyncio.gather(*callers)
    assert [r["predictions"] for r in replies] == [[i * 10.0] for i in range(10)]
    assert bus.max_in_flight <= 2
    assert bus.sent[1:3] == [[[0.0]], [[1.0]]]
    assert senders[1:3] == callers[:2]
    assert sorted(row[0] for rows in bus.sent[3:] for row in rows) == [float(i) for i in range(2, 10)]
    assert len(bus.sent) < 11


async def test_the_window_follows_the_serving_replicas_and_never_closes() -> None:
    # The api's default: one bus request in flight per replica serving the model, asked as it goes.
    bus = FakeBus(delay=0.02)
    replicas = {"m": 0}
    coalescer = PredictCoalescer(bus.send, max_rows=1, pipeline=lambda model: replicas[model])

    # No server heard of yet: still one bus request at a time (a request must be able to go out).
    await asyncio.gather(*(coalescer.predict("m", [[float(i)]], "c") for i in range(4)))
    assert bus.max_in_flight == 1 and len(bus.sent) == 4

    # Three servers announce: three bus requests in flight, never more.
    replicas["m"] = 3
    bus.max_in_flight = 0
    replies = await asyncio.gather(*(coalescer.predict("m", [[float(i)]], "c") for i in range(12)))
    assert [r["predictions"] for r in replies] == [[i * 10.0] for i in range(12)]
    assert bus.max_in_flight == 3

    # One leaves while requests wait: the window narrows for the bus requests still to go out.
    bus.max_in_flight = 0
    callers = [asyncio.create_task(coalescer.predict("m", [[float(i)]], "c")) for i in range(12)]
    await asyncio.sleep(0)
    replicas["m"] = 1
    while bus.in_flight > 1:  # the three that went out at once come back (however slow the machine)
        await asyncio.sleep(0.001)
    bus.max_in_flight = bus.in_flight
    await asyncio.gather(*callers)
    assert bus.max_in_flight == 1
