"""The serving module over a real memory bus: catch-up, fanout installs, rollbacks, batching, hot swap."""

from __future__ import annotations

import asyncio
import gc
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from skipper.core import contracts
from skipper.core.errors import ModelNotReady, NoConsumers, ValidationFailed
from skipper.core.events import EventEmitter
from skipper.core.messages import Message
from skipper.modules.serving import ServingModule
from skipper.transports.memory import MemoryTransport
from tests.conftest import eventually
from tests.modules.test_serving_support import (
    N_FEATURES,
    CountingPredictor,
    EventLog,
    FakeRegistry,
    built,
    headers,
    settings,
)

pytestmark = pytest.mark.tensorflow


def rows(n: int, start: int = 0) -> list[list[float]]:
    rng = np.random.default_rng(start)
    return rng.normal(size=(n, N_FEATURES)).round(3).tolist()  # type: ignore[no-any-return]


@dataclass
class Harness:
    bus: MemoryTransport
    module: ServingModule
    registry: FakeRegistry
    events: EventLog

    async def predict(self, instances: list[Any], model: str = "diabetes") -> dict[str, Any]:
        msg = Message(type=contracts.PREDICT_REQUEST, body={"model": model, "instances": instances})
        return (await self.bus.request(contracts.predict_queue(model), msg, timeout=10)).data

    async def publish(self, body: bytes | dict[str, Any], **fields: Any) -> None:
        await self.bus.publish(contracts.MODEL_PUBLISHED, Message(type="model.published", body=body, headers=fields))

    def version(self) -> int | None:
        loaded = self.module.loaded("diabetes")
        return loaded.version if loaded else None


Make = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def make(tmp_path: Path) -> AsyncIterator[Make]:
    """Builds a started bus with a serving module, a fake registry (optional) and an event log."""
    built_ones: list[Harness] = []

    async def build(*, registry: FakeRegistry | None = None, with_registry: bool = True, **options: Any) -> Harness:
        bus = MemoryTransport()
        module = ServingModule(settings=settings(tmp_path, **options), bus=bus, events=EventEmitter(bus, "serving"))
        module.register(bus)
        registry = registry or FakeRegistry()
        if with_registry:
            registry.register(bus)
        events = EventLog()
        events.register(bus)
        harness = Harness(bus, module, registry, events)
        built_ones.append(harness)
        await bus.start()
        return harness

    yield build
    for harness in built_ones:
        await harness.module.stop()
        await harness.bus.close()


async def serving(make: Make, **options: Any) -> Harness:
    """A harness whose registry has version 1 in production, caught up."""
    registry = FakeRegistry()
    registry.deploy(built(1), version=1, seq=1)
    harness = await make(registry=registry, **options)
    await eventually(harness.module.ready)
    return harness


# --- catch-up ---------------------------------------------------------------------------


async def test_catch_up_on_start_installs_the_production_versions_and_only_then_reports_ready(make: Make) -> None:
    # Given a registry with two models in production that is slow to answer
    registry = FakeRegistry()
    registry.deploy(built(1), version=3, seq=7)
    registry.deploy(built(2, "other"), model="other", version=1, seq=8)
    registry.gate.clear()
    # When the server starts
    harness = await make(registry=registry)
    await eventually(lambda: registry.production_requests == 1)
    # Then it is not ready until the catch-up has installed every production model
    assert not harness.module.ready()
    registry.gate.set()
    await eventually(harness.module.ready)
    assert harness.module.readiness() == {"models": {"diabetes": 3, "other": 1}}
    reply = await harness.predict(rows(2), model="other")
    assert reply["model_version"] == 1
    assert reply["predictions"] == pytest.approx(built(2, "other").expected(rows(2)), rel=1e-5, abs=1e-5)


async def test_catch_up_installs_models_side_by_side_so_a_slow_download_holds_back_no_other(make: Make) -> None:
    # Given two models in production, one of whose artifact downloads hangs
    registry = FakeRegistry()
    registry.deploy(built(1), version=3, seq=7)
    registry.deploy(built(2, "other"), model="other", version=1, seq=8)
    registry.held["diabetes"] = asyncio.Event()
    # When the server starts, the other model is served meanwhile (and the server is not ready yet)
    harness = await make(registry=registry)
    await eventually(lambda: harness.module.versions() == {"other": 1})
    assert (await harness.predict(rows(1), model="other"))["model_version"] == 1
    assert not harness.module.ready()
    # Then once the download goes through, both are served and the server is ready
    registry.held["diabetes"].set()
    await eventually(harness.module.ready)
    assert harness.module.readiness() == {"models": {"diabetes": 3, "other": 1}}


async def test_catch_up_retries_with_backoff_until_the_registry_answers(make: Make) -> None:
    # Given no registry on the bus when the server starts
    registry = FakeRegistry()
    registry.deploy(built(1), version=1, seq=1)
    harness = await make(registry=registry, with_registry=False)
    await asyncio.sleep(0.2)
    assert not harness.module.ready() and harness.module.readiness() == {"models": {}}
    # When the registry comes up
    registry.register(harness.bus)
    # Then a retry catches up and the server becomes ready
    await eventually(harness.module.ready)
    assert harness.version() == 1


async def test_a_reconnection_catches_up_on_what_was_published_meanwhile(make: Make) -> None:
    # Given a server serving version 1
    harness = await serving(make)
    # When version 2 was deployed while it was disconnected, and it reconnects
    harness.registry.deploy(built(2), version=2, seq=2)
    await harness.bus.notify_connected()
    # Then it installs version 2
    await eventually(lambda: harness.version() == 2)


# --- self-healing ---------------------------------------------------------------------------


async def test_a_missed_announcement_heals_at_the_next_resync_without_a_reconnect(make: Make) -> None:
    # Given a server serving version 1 that re-checks the registry every 0.3 s
    harness = await serving(make, resync_s=0.3)
    checks = harness.registry.production_requests
    # When version 2 is deployed and its announcement never reaches the server
    harness.registry.deploy(built(2), version=2, seq=2)
    # Then the server installs it by itself, at its next re-check
    await eventually(lambda: harness.version() == 2, timeout=10)
    assert harness.registry.production_requests > checks
    assert (await harness.predict(rows(1)))["model_version"] == 2


async def test_an_install_that_failed_for_want_of_the_registry_is_retried_until_it_answers(make: Make) -> None:
    # Given a server that would re-check only in an hour, and version 2 announced by reference
    # while the registry cannot hand out its bytes
    harness = await serving(make, resync_s=3600)
    harness.registry.deploy(built(2), version=2, seq=2)
    del harness.registry.artifacts[("diabetes", 2)]
    fetches = harness.registry.artifact_requests
    await harness.publish({"ref": True}, **headers(built(2), version=2, seq=2))
    await eventually(lambda: harness.registry.artifact_requests >= fetches + 3)  # the fetch, then retries
    assert harness.version() == 1  # still serving the old one meanwhile
    # When the registry can serve the bytes again
    harness.registry.artifacts[("diabetes", 2)] = built(2).data
    # Then the server converges without waiting for its next periodic re-check
    await eventually(lambda: harness.version() == 2, timeout=10)


async def test_a_rejected_version_is_not_retried_by_the_periodic_re_check(make: Make) -> None:
    harness = await serving(make, resync_s=0.1)
    bad = headers(built(2), version=2, seq=2, sha256="f" * 64)
    harness.registry.production = [bad]  # the registry announces a version whose bytes do not match
    harness.registry.artifacts[("diabetes", 2)] = built(2).data
    checks = harness.registry.production_requests
    await eventually(lambda: harness.registry.production_requests >= checks + 5)
    assert harness.version() == 1
    assert [e["version"] for e in harness.events.kinds("model.rejected")] == [2]  # reported once, not every re-check


# --- memory guard -----------------------------------------------------------------------------


async def test_a_version_too_big_for_the_memory_budget_is_refused_and_the_old_one_keeps_serving(make: Make) -> None:
    # Given a server with a 300 MiB budget for models, serving version 1 (a few KiB)
    harness = await serving(make, memory_budget_mb=300)
    fetches = harness.registry.artifact_requests
    # When version 2 is announced with 50M parameters (200 MiB of float32 weights: ~1.5 GiB to load)
    big = {**headers(built(2), version=2, seq=2), "metadata": {**built(2).metadata, "parameters": 50_000_000}}
    harness.registry.artifacts[("diabetes", 2)] = built(2).data
    await harness.publish({"ref": True}, **big)
    # Then it is refused with the reason, before its bytes were fetched
    await eventually(lambda: bool(harness.events.kinds("model.rejected")))
    rejected = harness.events.kinds("model.rejected")[0]
    assert rejected["version"] == 2
    assert "MiB to load" in rejected["reason"] and "the memory budget is 300 MiB" in rejected["reason"]
    assert harness.registry.artifact_requests == fetches
    # And version 1 keeps serving
    assert harness.version() == 1
    assert (await harness.predict(rows(2)))["model_version"] == 1
    # While a version that fits is installed as usual
    await harness.publish(built(3).data, **headers(built(3), version=3, seq=3))
    await eventually(lambda: harness.version() == 3)


async def test_a_swapped_out_version_is_released_once_its_requests_are_answered(make: Make) -> None:
    harness = await serving(make)
    loaded = harness.module.loaded("diabetes")
    assert loaded is not None
    old_predictor, old_model = weakref.ref(loaded.predictor), weakref.ref(loaded.predictor._model)  # type: ignore[attr-defined]
    del loaded
    await harness.publish(built(2).data, **headers(built(2), version=2, seq=2))
    await eventually(lambda: harness.version() == 2)
    # Nothing keeps the old version alive: its predictor and its Keras model are collected.
    await eventually(lambda: gc.collect() >= 0 and old_predictor() is None and old_model() is None, timeout=10)


# --- fanout ---------------------------------------------------------------------------------


async def test_a_published_inline_artifact_is_installed(make: Make) -> None:
    harness = await serving(make)
    await harness.publish(built(2).data, **headers(built(2), version=2, seq=2))
    await eventually(lambda: harness.version() == 2)
    assert harness.registry.artifact_requests == 1  # only the catch-up's fetch of version 1


async def test_a_published_artifact_by_reference_is_fetched_from_the_registry(make: Make) -> None:
    # Given a server serving version 1, and version 2 in the registry
    harness = await serving(make)
    harness.registry.artifacts[("diabetes", 2)] = built(2).data
    # When version 2 is announced by reference
    await harness.publish({"ref": True}, **headers(built(2), version=2, seq=2))
    # Then the server fetches its bytes and serves it
    await eventually(lambda: harness.version() == 2)
    assert harness.registry.artifact_requests == 2
    reply = await harness.predict(rows(3))
    assert reply["predictions"] == pytest.approx(built(2).expected(rows(3)), rel=1e-5, abs=1e-5)


async def test_a_large_artifact_is_fetched_in_ranges_streamed_to_disk(make: Make, tmp_path: Path) -> None:
    # Given a server whose artifact ranges are 1 KiB (a large model's would be megabytes)
    harness = await serving(make, bus={"artifact_chunk_bytes": 1024})
    harness.registry.artifacts[("diabetes", 2)] = built(2).data
    before = harness.registry.artifact_requests
    # When version 2 is announced by reference
    await harness.publish({"ref": True}, **headers(built(2), version=2, seq=2))
    # Then it arrives range by range, never in one message, and serves
    await eventually(lambda: harness.version() == 2)
    assert harness.registry.artifact_requests - before == -(-len(built(2).data) // 1024)
    assert harness.registry.largest_reply <= 1024 < len(built(2).data)
    reply = await harness.predict(rows(2))
    assert reply["predictions"] == pytest.approx(built(2).expected(rows(2)), rel=1e-5, abs=1e-5)
    assert not list((tmp_path / "serving").glob(".download-*"))  # the download is removed once extracted


async def test_a_rollback_is_installed_and_an_out_of_date_announcement_is_ignored(make: Make) -> None:
    # Given version 2 serving (seq 2)
    harness = await serving(make)
    await harness.publish(built(2).data, **headers(built(2), version=2, seq=2))
    await eventually(lambda: harness.version() == 2)
    # When version 1 is deployed again (a rollback: older version, newer seq)
    await harness.publish(built(1).data, **headers(built(1), version=1, seq=3))
    # Then it is installed
    await eventually(lambda: harness.version() == 1)
    # And a late announcement of version 2 with its old seq is ignored
    late = Message(type="model.published", body=built(2).data, headers=headers(built(2), version=2, seq=2))
    await harness.module.on_published(late)
    assert harness.version() == 1
    await eventually(lambda: len(harness.events.kinds("model.installed")) == 3)  # emitted just after each swap
    assert [e["version"] for e in harness.events.kinds("model.installed")] == [1, 2, 1]


async def test_a_tampered_announcement_is_refused_and_reported(make: Make) -> None:
    harness = await serving(make)
    await harness.publish(built(2).data, **headers(built(2), version=2, seq=2, sha256="f" * 64))
    await eventually(lambda: bool(harness.events.kinds("model.rejected")))
    assert harness.version() == 1
    assert harness.events.kinds("model.rejected")[0]["version"] == 2


# --- predictions -----------------------------------------------------------------------


async def test_concurrent_requests_are_micro_batched_and_each_gets_exactly_its_own_predictions(make: Make) -> None:
    # Given a server whose predictor records every model call
    workflow = {"model": "diabetes", "kind": "regression", "dataset": {"source": "sklearn", "name": "diabetes"},
                "predictor": "tests.modules.test_serving_support:CountingPredictor"}
    harness = await serving(make, workflows={"diabetes": workflow})
    CountingPredictor.batch_sizes.clear()
    # When 64 clients ask at once, each with its own rows
    requests = [rows(1 + i % 3, start=i) for i in range(64)]
    replies = await asyncio.gather(*(harness.predict(r) for r in requests))
    # Then far fewer model calls than requests were made
    assert 1 <= len(CountingPredictor.batch_sizes) < 64 // 4
    assert sum(CountingPredictor.batch_sizes) == sum(len(r) for r in requests)
    # And every client got the predictions of its own rows
    for request, reply in zip(requests, replies, strict=True):
        assert reply["model_version"] == 1
        assert reply["predictions"] == pytest.approx(built(1).expected(request), rel=1e-5, abs=1e-5)


async def test_a_lone_request_does_not_wait_for_a_batch_to_fill(make: Make) -> None:
    # Given a server allowed to wait up to 200 ms for a batch to fill
    harness = await serving(make, max_wait_ms=200)
    await harness.predict(rows(1))
    # When a single client sends requests one after the other
    started = time.perf_counter()
    for i in range(20):
        await harness.predict(rows(1, start=i))
    # Then none waited for the batch window
    assert (time.perf_counter() - started) / 20 < 0.05


async def test_a_swap_during_hundreds_of_concurrent_predictions_fails_none(make: Make) -> None:
    # Given a server serving version 1 under a steady load of 250 concurrent requests
    harness = await serving(make)
    replies: list[tuple[list[list[float]], dict[str, Any]]] = []
    swapped = asyncio.Event()

    async def client(i: int) -> None:
        after_swap = 0
        while after_swap < 3:
            request = rows(1 + i % 2, start=i)
            replies.append((request, await harness.predict(request)))
            after_swap += swapped.is_set()

    load = [asyncio.create_task(client(i)) for i in range(250)]
    await eventually(lambda: len(replies) > 500)
    # When version 2 is published and swapped in
    await harness.publish(built(2).data, **headers(built(2), version=2, seq=2))
    await eventually(lambda: harness.version() == 2)
    swapped.set()
    # Then no request failed and each answer came whole from the version it names
    await asyncio.gather(*load)
    versions = {reply["model_version"] for _, reply in replies}
    assert versions == {1, 2}
    for request, reply in replies[:: max(1, len(replies) // 300)]:
        art = built(reply["model_version"])
        assert reply["predictions"] == pytest.approx(art.expected(request), rel=1e-5, abs=1e-5)


async def test_a_row_of_the_wrong_width_is_refused_naming_it_without_failing_its_batch(make: Make) -> None:
    # Given a server serving version 1
    harness = await serving(make)
    good = [harness.predict(rows(2, start=i)) for i in range(8)]
    # When a request with a short row arrives among good ones
    bad = harness.predict([*rows(2), [1.0, 2.0]])
    results = await asyncio.gather(bad, *good, return_exceptions=True)
    # Then only that request fails, naming the row
    assert isinstance(results[0], ValidationFailed) and "instances[2]" in results[0].message
    assert results[0].details["field"] == "instances[2]"
    assert all(isinstance(r, dict) and r["model_version"] == 1 for r in results[1:])


@pytest.mark.parametrize(
    ("instances", "field"),
    [
        pytest.param([[0.0] * N_FEATURES, [float("nan")] * N_FEATURES], "instances[1]", id="nan"),
        pytest.param([[0.0] * N_FEATURES, [0.0] * (N_FEATURES - 1) + [1e300]], "instances[1]", id="overflow"),
        pytest.param([[0.0] * N_FEATURES, [0.0] * (N_FEATURES - 1) + [-3.5e38]], "instances[1]", id="beyond-float32"),
        pytest.param([[0.0] * N_FEATURES, [0.0] * (N_FEATURES - 1) + [float("inf")]], "instances[1]", id="infinity"),
        pytest.param([[0.0] * N_FEATURES, [0] * (N_FEATURES - 1) + [10**400]], "instances[1]", id="huge-int"),
        pytest.param([[0.0] * N_FEATURES, ["a"] * N_FEATURES], "instances[1]", id="not-numbers"),
        pytest.param([[0.0] * (N_FEATURES + 1)], "instances[0]", id="too-wide"),
        pytest.param([], "instances", id="empty"),
    ],
)
async def test_invalid_instances_are_refused_naming_the_row(make: Make, instances: list[Any], field: str) -> None:
    harness = await serving(make)
    with pytest.raises(ValidationFailed) as caught:
        await harness.predict(instances)
    assert caught.value.details["field"] == field


async def test_a_server_takes_predict_requests_only_for_the_models_it_holds(make: Make) -> None:
    # Given a server that has not loaded anything yet (its registry is slow to answer)
    registry = FakeRegistry()
    registry.deploy(built(1), version=1, seq=1)
    registry.gate.clear()
    harness = await make(registry=registry)
    await eventually(lambda: registry.production_requests == 1)
    # Then nobody takes requests for diabetes: a peer holding it would get them all
    with pytest.raises(NoConsumers):
        await harness.predict(rows(1))
    # And once it holds a version, it takes them
    registry.gate.set()
    await eventually(harness.module.ready)
    assert (await harness.predict(rows(1)))["model_version"] == 1
    # A model it never loaded still has no consumer here
    with pytest.raises(NoConsumers):
        await harness.predict(rows(1), model="nope")
    # and a request for it that reached this server anyway is refused, not guessed at
    with pytest.raises(ModelNotReady, match="no version of model 'nope' is loaded"):
        await harness.module.on_predict(Message(type=contracts.PREDICT_REQUEST, body={"model": "nope", "instances": rows(1)}))


async def test_a_server_answers_a_version_pinned_request_only_with_that_version_and_says_which_it_holds(
    make: Make,
) -> None:
    harness = await serving(make)

    async def ask(message_type: str, **body: Any) -> dict[str, Any]:
        msg = Message(type=message_type, body={"model": "diabetes", **body})
        return (await harness.bus.request(contracts.predict_queue("diabetes"), msg, timeout=10)).data

    # Given version 1 served: a status request names it, and a request pinned to it is answered by it
    assert await ask(contracts.PREDICT_STATUS) == {"model": "diabetes", "version": 1}
    pinned = await ask(contracts.PREDICT_REQUEST, instances=rows(2), version=1)
    assert pinned["model_version"] == 1 and pinned["predictions"] == (await harness.predict(rows(2)))["predictions"]
    # When version 2 replaces it, version 1 is refused naming the one held, never answered by version 2
    await harness.publish(built(2).data, **headers(built(2), version=2, seq=2))
    await eventually(lambda: harness.version() == 2)
    with pytest.raises(ModelNotReady, match=r"version 1 of model 'diabetes' is not loaded: .* production version, 2"):
        await ask(contracts.PREDICT_REQUEST, instances=rows(2), version=1)
    assert (await ask(contracts.PREDICT_REQUEST, instances=rows(1), version=2))["model_version"] == 2
    assert await ask(contracts.PREDICT_STATUS) == {"model": "diabetes", "version": 2}


async def test_on_shutdown_a_server_turns_unready_and_stops_taking_requests_but_answers_those_it_took(make: Make) -> None:
    harness = await serving(make)
    before = await harness.predict(rows(1))
    started = asyncio.create_task(harness.predict(rows(3)))
    await asyncio.sleep(0)  # the request is in the server's batcher when shutdown begins
    await harness.module.drain()
    assert not harness.module.ready()
    with pytest.raises(NoConsumers):
        await harness.predict(rows(1))
    assert (await started)["predictions"] == pytest.approx(built(1).expected(rows(3)), rel=1e-5, abs=1e-5)
    assert before["model_version"] == 1


async def test_the_package_does_not_import_tensorflow() -> None:
    import subprocess
    import sys

    code = "import sys, skipper.modules.serving; assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
