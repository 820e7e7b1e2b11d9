"""Resource limits: refused where a train request is accepted (422 naming the field and the limit, 429 when
too much is queued), enforced again where the training runs (a time limit on every transport), and predict
load shedding (503 with Retry-After, across a broker)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from skipper.app.container import bus_options
from skipper.app.runtime import Runtime
from skipper.core import contracts
from skipper.core.errors import LimitExceeded, Overloaded
from skipper.core.events import EventEmitter
from skipper.core.limits import dense_parameters
from skipper.core.messages import Message
from skipper.core.settings import Limits, TrainParams, load_settings
from skipper.modules.serving.batching import Batcher
from skipper.modules.training import TrainingModule
from skipper.modules.training.jobs import TrainJob
from skipper.transports import build_transport
from tests.apphelpers import running_skipper
from tests.conftest import BusFactory, eventually
from tests.services import RABBITMQ_URL, require_rabbitmq
from tests.transports.factory_rabbitmq import delete_broker_objects

UNTIL_STOPPED = {"model": "forever", "kind": "regression", "dataset": {"source": "sklearn", "name": "diabetes"},
                 "trainer": "tests.plugins:until_stopped"}


def assert_limit(response: httpx.Response, field: str, limit: str) -> None:
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "limit_exceeded" and error["details"]["field"] == field, error
    assert limit in error["message"] and error["details"]["limit"] == limit, error


# --- where work is accepted ---------------------------------------------------------------------------


def test_the_parameter_count_is_that_of_the_dense_network() -> None:
    # 10 features -> 64 -> 32 -> 1: (10+1)*64 + (64+1)*32 + (32+1)*1
    assert dense_parameters(10, [64, 32], 1) == 704 + 2080 + 33
    assert dense_parameters(1, [65536, 65536], 1) > 4_000_000_000  # the exhausting request


async def test_epochs_and_parameters_past_the_limits_are_422_naming_the_field_and_the_limit(tmp_path: Path) -> None:
    workflows = {"diabetes": {"model": "diabetes", "kind": "regression", "dataset": {"source": "sklearn", "name": "diabetes"}},
                 "small": {"model": "small", "kind": "regression", "dataset": {"source": "sklearn", "name": "diabetes"},
                           "limits": {"max_epochs": 5, "max_parameters": 1000}}}
    async with running_skipper(tmp_path, frozenset({"api"}), workflows=workflows) as (client, _):
        assert_limit(await client.post("/workflows/diabetes/train", json={"params": {"epochs": 1001}}), "params.epochs",
                     "limits.max_epochs")
        assert_limit(await client.post("/workflows/diabetes/train", json={"params": {"hidden_units": [65536, 65536]}}),
                     "params.hidden_units", "limits.max_parameters")
        assert_limit(await client.post("/tasks/diabetes/execute_async", json={"payload": '{"epochs": 5000}'}),
                     "params.epochs", "limits.max_epochs")
        # a workflow's own limits override the global ones
        assert_limit(await client.post("/workflows/small/train", json={"params": {"epochs": 6}}), "params.epochs",
                     "limits.max_epochs")
        assert_limit(await client.post("/workflows/small/train", json={"params": {"epochs": 5, "hidden_units": [64, 64]}}),
                     "params.hidden_units", "limits.max_parameters")
        assert (await client.get("/tasks")).json()["total"] == 0
        small = await client.post("/workflows/small/train", json={"params": {"epochs": 5, "hidden_units": [8]}})
        assert small.status_code == 202
        assert (await client.post("/workflows/diabetes/train", json={"params": {"epochs": 1000}})).status_code == 202


async def test_past_max_queued_tasks_train_is_429_with_retry_after(tmp_path: Path) -> None:
    async with running_skipper(tmp_path, frozenset({"api"}), limits={"max_queued_tasks": 3}) as (client, _):
        ids = [(await client.post("/workflows/diabetes/train", json={})).json()["task_id"] for _ in range(3)]
        refused = await client.post("/workflows/diabetes/train", json={})
        assert refused.status_code == 429 and refused.headers["retry-after"] == "5"
        assert refused.json()["error"]["code"] == "too_many_requests" and "limits.max_queued_tasks" in refused.text
        legacy = await client.post("/tasks/execute_async", json={"task_type": "training", "payload": ""})
        assert legacy.status_code == 429
        assert (await client.get("/tasks")).json()["total"] == 3
        await client.delete(f"/tasks/{ids[0]}")  # a slot frees up
        assert (await client.post("/workflows/diabetes/train", json={})).status_code == 202


# --- where the training runs ------------------------------------------------------------------------------


class Registry:
    """The api's side of the `registry` queue, as far as a trainer sees it."""

    def __init__(self) -> None:
        self.received: list[Message] = []

    async def handle(self, msg: Message) -> Message | None:
        self.received.append(msg)
        return msg.reply({"proceed": True}) if msg.type == contracts.TASK_CLAIM else None

    def of(self, kind: str) -> list[Message]:
        return [m for m in self.received if m.type == kind]


async def test_a_training_past_max_train_seconds_fails_with_a_clear_error_on_every_transport(
    bus_factory: BusFactory, tmp_path: Path
) -> None:
    # Given a trainer whose workflow may run 1 s (the global limit is the default 30 minutes)
    settings = load_settings(environ={}, overrides={
        "data_dir": str(tmp_path), "bus": {"request_timeout_s": 10},
        "workflows": {"forever": {**UNTIL_STOPPED, "limits": {"max_train_seconds": 1}}}})
    api_bus, trainer_bus = bus_factory(), bus_factory()
    registry = Registry()
    api_bus.consume(contracts.REGISTRY, registry.handle)
    module = TrainingModule(settings=settings, bus=trainer_bus, events=EventEmitter(trainer_bus, "trainer"))
    module.register(trainer_bus)
    await api_bus.start()
    await trainer_bus.start()
    try:
        # When a training of a trainer that never finishes by itself is sent
        body = {"task_id": "t-limit", "workflow": "forever", "params": TrainParams(epochs=1000).model_dump()}
        await api_bus.send(contracts.TRAIN, Message(type=contracts.TRAIN_COMMAND, body=body))
        await eventually(lambda: bool(registry.of(contracts.TASK_FAILED)), timeout=60)
        # Then it was running, was stopped, and the task failed once with an error naming the limit
        assert registry.of(contracts.TASK_PROGRESS)
        error = registry.of(contracts.TASK_FAILED)[0].data["error"]
        assert error["code"] == "limit_exceeded"
        assert error["message"] == "training ran past limits.max_train_seconds (1 s) and was stopped"
        await asyncio.sleep(1.0)
        assert len(registry.of(contracts.TASK_FAILED)) == 1 and len(registry.of(contracts.TASK_CLAIM)) == 1  # no retry
        assert not registry.of(contracts.TASK_CANCEL_ACK) and not registry.of(contracts.MODEL_ARTIFACT)
    finally:
        await module.stop()


def test_the_built_in_trainer_checks_the_exact_parameter_count_before_building_anything(tmp_path: Path) -> None:
    from skipper.modules.training.keras_trainer import train

    settings = load_settings(environ={}, overrides={"data_dir": str(tmp_path)})
    workflow = settings.workflows["wine"]  # 13 features, 3 classes: more than the api's lower bound counts
    params = TrainParams(hidden_units=[100])  # (13+1)*100 + (100+1)*3 = 1703 parameters
    job = TrainJob(task_id="t", workflow_name="wine", workflow=workflow, params=params, data_dir=tmp_path,
                   model_path=tmp_path / "m.keras", report_epoch=lambda r: None, stop_requested=lambda: False,
                   limits=Limits(max_parameters=1700))
    with pytest.raises(LimitExceeded, match=r"1,703 parameters, over limits.max_parameters \(1,700\)"):
        train(job)
    assert not (tmp_path / "m.keras").exists()


@pytest.mark.tensorflow
async def test_a_keras_training_past_its_time_limit_fails_and_the_process_serves_on(tmp_path: Path) -> None:
    workflows = {"diabetes": {"model": "diabetes", "kind": "regression", "dataset": {"source": "sklearn", "name": "diabetes"},
                              "limits": {"max_train_seconds": 1}}}
    async with running_skipper(tmp_path, frozenset({"api", "trainer"}), workflows=workflows) as (client, _):
        queued = await client.post("/workflows/diabetes/train", json={"params": {"epochs": 1000, "batch_size": 1}})
        task_id = queued.json()["task_id"]
        for _ in range(600):
            task = (await client.get(f"/tasks/{task_id}")).json()
            if task["status"] in ("succeeded", "failed"):
                break
            await asyncio.sleep(0.1)
        assert task["status"] == "failed", task
        assert task["error"]["code"] == "limit_exceeded" and "limits.max_train_seconds (1 s)" in task["error"]["message"]
        assert (await client.get("/workflows")).status_code == 200


# --- predict load shedding -------------------------------------------------------------------------------


async def test_a_full_batch_queue_sheds_new_requests_at_once() -> None:
    release = threading.Event()

    def slow_model(rows: np.ndarray) -> list[Any]:
        release.wait(10)
        return [float(r.sum()) for r in rows]

    batcher = Batcher(slow_model, max_rows=4, max_wait_ms=0, inline=False, max_queued_rows=8)
    first = batcher.submit(np.ones((4, 2), dtype=np.float32))
    await asyncio.sleep(0.05)  # the first batch is running (blocked): everything after it queues
    waiting = [batcher.submit(np.ones((4, 2), dtype=np.float32)) for _ in range(2)]  # 8 rows wait: the limit
    with pytest.raises(Overloaded) as shed:
        batcher.submit(np.ones((1, 2), dtype=np.float32))
    assert shed.value.retry_after_s == 1.0 and shed.value.status == 503
    assert batcher.shed == 1
    release.set()
    assert [len(await f) for f in [first, *waiting]] == [4, 4, 4]
    assert len(await batcher.submit(np.ones((1, 2), dtype=np.float32))) == 1  # room again


@pytest.fixture
async def rabbitmq_api(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    require_rabbitmq()
    from tests.modules.test_http_security import trained

    namespace = f"shed-{tmp_path.name[-12:]}"
    settings = load_settings(environ={}, overrides={
        "data_dir": str(tmp_path), "transport": "rabbitmq", "broker_url": RABBITMQ_URL, "namespace": namespace,
        "http": {"predict_pipeline": 64, "predict_timeout_s": 10}})
    runtime = Runtime(settings, frozenset({"api"}))
    await runtime.start()
    await trained(runtime)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=runtime.app()),
                                     base_url="http://127.0.0.1/api/v1/skipper") as client:
            yield client, runtime
    finally:
        objects = set(getattr(runtime.bus, "broker_objects", set()))
        await runtime.stop()
        await asyncio.to_thread(delete_broker_objects, objects)


async def test_shed_predictions_reach_the_client_as_503_with_retry_after_across_rabbitmq(
    rabbitmq_api: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, runtime = rabbitmq_api
    # Given a server process on the broker whose model is busy and whose queue holds at most 2 rows
    release = threading.Event()

    def busy_model(rows: np.ndarray) -> list[Any]:
        release.wait(10)
        return [float(r.sum()) for r in rows]

    batcher = Batcher(busy_model, max_rows=1, max_wait_ms=0, inline=False, max_queued_rows=2)
    arrived: list[int] = []

    async def serve(msg: Message) -> Message:
        arrived.append(len(msg.data["instances"]))
        predictions = await batcher.submit(np.asarray(msg.data["instances"], dtype=np.float32))
        return msg.reply({"predictions": predictions, "model": "diabetes", "model_version": 1})

    server_bus = build_transport(runtime.settings, bus_options(runtime.settings))
    server_bus.consume(contracts.predict_queue("diabetes"), serve, prefetch=64)
    await server_bus.start()
    try:
        # When one-row requests arrive one after another (so the api does not merge them)
        pending: list[asyncio.Task[httpx.Response]] = []
        for n in range(1, 7):
            pending.append(asyncio.create_task(client.post("/models/diabetes/predict", json={"instances": [[0.5] * 10]})))
            await eventually(lambda n=n: len(arrived) == n, timeout=20)  # type: ignore[misc]
        release.set()
        responses = await asyncio.gather(*pending)
    finally:
        await server_bus.close()
        await asyncio.to_thread(delete_broker_objects, set(getattr(server_bus, "broker_objects", set())))
    # Then one ran, two waited, and the three after them were refused at once with 503 + Retry-After
    assert [r.status_code for r in responses] == [200] * 3 + [503] * 3, [r.text for r in responses]
    assert batcher.shed == 3
    for r in responses:
        if r.status_code == 503:
            assert r.headers["retry-after"] == "1"
            assert r.json()["error"]["code"] == "overloaded" and r.json()["error"]["details"]["limit"] == 2
