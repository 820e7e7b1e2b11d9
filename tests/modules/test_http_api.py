"""The api role's HTTP contract: every error case, the registry flow, cancellation, the original Skipper contract.

Runs the real api module on the memory transport; the trainer and server sides are played
by small handlers on the same bus so these tests need no TensorFlow.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from skipper.app.runtime import Runtime
from skipper.core import contracts
from skipper.core.errors import Unavailable
from skipper.core.messages import Message
from tests.apphelpers import running_skipper

DIABETES_FEATURES = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    async with running_skipper(tmp_path, frozenset({"api"}), http={"max_body_bytes": 4096, "predict_timeout_s": 0.5},
                               bus={"retry_backoff_s": 0.01, "max_retries": 1}) as pair:
        yield pair


async def register_fake_model(client: httpx.AsyncClient, runtime: Runtime, data: bytes = b"fake-archive-v1") -> str:
    """Play the trainer: queue a diabetes task, claim it, deliver an artifact; returns the task id."""
    task_id = (await client.post("/workflows/diabetes/train", json={"params": {"epochs": 1}})).json()["task_id"]
    await deliver_artifact(client, runtime, task_id, data)
    return task_id


async def deliver_artifact(client: httpx.AsyncClient, runtime: Runtime, task_id: str,
                           data: bytes = b"fake-archive-v1") -> None:
    """Play the trainer of a queued diabetes task: claim it, deliver an artifact, wait for the task to succeed."""
    claim = await runtime.bus.request(contracts.REGISTRY, Message(type=contracts.TASK_CLAIM, body={"task_id": task_id}),
                                      timeout=5)
    assert claim.data == {"proceed": True}
    metadata = {"name": "diabetes", "features": DIABETES_FEATURES, "metrics": {"rmse": 55.0, "mae": 44.0}}
    await runtime.bus.send(contracts.REGISTRY, Message(
        type=contracts.MODEL_ARTIFACT, body=data,
        headers={"task_id": task_id, "model": "diabetes", "sha256": hashlib.sha256(data).hexdigest(), "metadata": metadata}))
    for _ in range(200):
        if (await client.get(f"/tasks/{task_id}")).json()["status"] == "succeeded":
            return
        await asyncio.sleep(0.02)
    raise AssertionError("task did not succeed")


def fake_server(runtime: Runtime, calls: list[list[list[float]]]) -> None:
    async def predict(msg: Message) -> Message:
        rows = msg.data["instances"]
        calls.append(rows)
        return msg.reply({"predictions": [sum(r) for r in rows], "model": msg.data["model"], "model_version": 1})

    runtime.bus.consume(contracts.predict_queue("diabetes"), predict)


def assert_error(response: httpx.Response, status: int, code: str, field: str | None = None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"]
    assert isinstance(error["details"], dict)
    if field is not None:
        assert error["details"].get("field") == field, error


async def test_health_and_ready_answer(api: tuple[httpx.AsyncClient, Runtime]) -> None:
    client, _ = api
    assert (await client.get("/health")).json() == {"status": "ok"}
    ready = await client.get("/ready")
    assert ready.status_code == 200 and ready.json()["role"] == "api" and ready.json()["models"] == {}


async def test_train_returns_202_with_a_queued_task_and_resolved_params(api: tuple[httpx.AsyncClient, Runtime]) -> None:
    client, _ = api
    response = await client.post("/workflows/diabetes/train", json={"params": {"epochs": 3, "hidden_units": [8]}},
                                 headers={"X-Correlation-ID": "req-42"})
    assert response.status_code == 202
    assert response.headers["x-correlation-id"] == "req-42"
    body = response.json()
    assert body["status"] == "queued" and body["workflow"] == "diabetes"
    assert body["params"]["epochs"] == 3 and body["params"]["hidden_units"] == [8]
    assert body["params"]["learning_rate"] == 0.01  # the workflow's default
    task = (await client.get(f"/tasks/{body['task_id']}")).json()
    assert task["status"] == "queued" and task["workflow"] == "diabetes"
    assert task["correlation_id"] == "req-42"  # the request's id follows the task into its events and logs
    assert len((await client.get("/health")).headers["x-correlation-id"]) == 32  # one is made when none is sent
    listed = (await client.get("/tasks", params={"workflow": "diabetes", "status": "queued"})).json()
    assert listed["total"] == 1 and listed["tasks"][0]["task_id"] == body["task_id"]
    for _ in range(100):  # events reach the log over the bus, a moment after the response
        events = (await client.get(f"/tasks/{body['task_id']}/events")).json()["events"]
        if events:
            break
        await asyncio.sleep(0.02)
    assert [e["kind"] for e in events] == ["task.queued"]
    assert events[0]["correlation_id"] == "req-42"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"params": {"epochs": 0}}, "params.epochs"),
        ({"params": {"epochs": "many"}}, "params.epochs"),
        ({"params": {"hidden_units": []}}, "params.hidden_units"),
        ({"params": {"learning_rate": -1}}, "params.learning_rate"),
        ({"params": {"test_size": 1.5}}, "params.test_size"),
        ({"params": {"optimizer": "sgd"}}, "params.optimizer"),
        ({"params": [1, 2]}, "params"),
        ({"parameters": {}}, "parameters"),
    ],
)
async def test_bad_train_params_are_422_naming_the_field(api: tuple[httpx.AsyncClient, Runtime], body: object,
                                                         field: str) -> None:
    client, _ = api
    assert_error(await client.post("/workflows/diabetes/train", json=body), 422, "validation_failed", field)
    assert (await client.get("/tasks")).json()["total"] == 0  # nothing was queued


async def test_malformed_json_is_400_and_unknown_things_are_404(api: tuple[httpx.AsyncClient, Runtime]) -> None:
    client, _ = api
    assert_error(await client.post("/workflows/diabetes/train", content=b"{not json"), 400, "bad_request")
    assert_error(await client.post("/models/diabetes/predict", content=b"[1, 2"), 400, "bad_request")
    assert_error(await client.post("/models/diabetes/predict", content=b'{"instances": [[NaN]]}'), 400, "bad_request")
    assert_error(await client.post("/workflows/nope/train", json={}), 404, "not_found")
    assert_error(await client.get("/tasks/0000"), 404, "not_found")
    assert_error(await client.delete("/tasks/0000"), 404, "not_found")
    assert_error(await client.get("/models/nope"), 404, "not_found")
    assert_error(await client.post("/models/nope/predict", json={"instances": [[1]]}), 404, "not_found")
    assert_error(await client.post("/models/diabetes/versions/7/deploy"), 404, "not_found")
    assert_error(await client.get("/models/diabetes/versions/7/artifact"), 404, "not_found")
    assert_error(await client.get("/no/such/route"), 404, "not_found")


async def test_a_body_over_the_limit_is_413(api: tuple[httpx.AsyncClient, Runtime]) -> None:
    client, _ = api
    big = {"instances": [[1.0] * 10] * 200}  # well over the 4 KiB limit of this fixture
    assert_error(await client.post("/models/diabetes/predict", json=big), 413, "payload_too_large")
    # a chunked body without Content-Length is measured while it streams
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b" " * 1024

    assert_error(await client.post("/workflows/diabetes/train", content=chunks()), 413, "payload_too_large")


async def test_predict_before_any_training_is_503_saying_so(api: tuple[httpx.AsyncClient, Runtime]) -> None:
    client, _ = api
    response = await client.post("/models/diabetes/predict", json={"instances": [[0.0] * 10]})
    assert_error(response, 503, "model_not_ready")
    assert "no trained version" in response.json()["error"]["message"]


async def test_an_artifact_from_the_trainer_becomes_version_1_in_production_and_is_announced(
    api: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, runtime = api
    announced: list[Message] = []

    async def on_published(msg: Message) -> None:
        announced.append(msg)

    runtime.bus.subscribe(contracts.MODEL_PUBLISHED, on_published)
    task_id = await register_fake_model(client, runtime, b"archive-bytes")
    task = (await client.get(f"/tasks/{task_id}")).json()
    assert task["result"] == {"model": "diabetes", "model_version": 1, "metrics": {"rmse": 55.0, "mae": 44.0}}
    assert task["attempts"] == 1
    model = (await client.get("/models/diabetes")).json()
    assert model["production_version"] == 1 and model["versions"][0]["metrics"]["rmse"] == 55.0
    assert (await client.get("/models")).json()["models"][0]["production_version"] == 1
    artifact = await client.get("/models/diabetes/versions/1/artifact")
    assert artifact.content == b"archive-bytes"
    assert artifact.headers["x-sha256"] == hashlib.sha256(b"archive-bytes").hexdigest()
    await asyncio.sleep(0.05)
    assert len(announced) == 1
    assert announced[0].body == b"archive-bytes"  # small: inline bytes
    assert announced[0].headers["version"] == 1 and announced[0].headers["metadata"]["features"] == DIABETES_FEATURES
    kinds = [e["kind"] for e in (await client.get(f"/tasks/{task_id}/events")).json()["events"]]
    assert kinds[0] == "task.queued" and "task.succeeded" in kinds and "model.published" in kinds


async def test_a_rollback_is_broadcast_with_a_newer_sequence(api: tuple[httpx.AsyncClient, Runtime]) -> None:
    client, runtime = api
    announced: list[Message] = []

    async def on_published(msg: Message) -> None:
        announced.append(msg)

    runtime.bus.subscribe(contracts.MODEL_PUBLISHED, on_published)
    await register_fake_model(client, runtime, b"v1")
    await register_fake_model(client, runtime, b"v2")
    response = await client.post("/models/diabetes/versions/1/deploy")
    assert response.status_code == 200 and response.json()["version"] == 1
    await asyncio.sleep(0.05)
    assert [(m.headers["version"], m.body) for m in announced] == [(1, b"v1"), (2, b"v2"), (1, b"v1")]
    assert announced[2].headers["seq"] > announced[1].headers["seq"]
    assert (await client.get("/models/diabetes")).json()["production_version"] == 1
    # a server catching up asks the registry: it gets the rolled-back version
    reply = await runtime.bus.request(contracts.REGISTRY, Message(type=contracts.REGISTRY_PRODUCTION), timeout=5)
    assert [(m["model"], m["version"]) for m in reply.data["models"]] == [("diabetes", 1)]
    fetched = await runtime.bus.request(contracts.REGISTRY, Message(type=contracts.REGISTRY_ARTIFACT,
                                                                    body={"model": "diabetes", "version": 2}), timeout=5)
    assert fetched.body == b"v2"


async def test_predict_validates_rows_against_the_feature_schema(api: tuple[httpx.AsyncClient, Runtime]) -> None:
    client, runtime = api
    calls: list[list[list[float]]] = []
    fake_server(runtime, calls)
    await register_fake_model(client, runtime)
    ok = await client.post("/models/diabetes/predict", json={"instances": [list(range(10)), [1.5] * 10]})
    assert ok.status_code == 200
    assert ok.json() == {"predictions": [45.0, 15.0], "model": "diabetes", "model_version": 1}
    by_name = await client.post("/models/diabetes/predict",
                                json={"instances": [{name: i for i, name in enumerate(reversed(DIABETES_FEATURES))}]})
    assert by_name.status_code == 200
    assert calls[-1] == [[float(9 - i) for i in range(10)]]  # reordered into schema order
    cases = [
        ({"instances": [[1.0, 2.0, 3.0]]}, "instances[0]"),
        ({"instances": [[0.0] * 10, [0.0] * 11]}, "instances[1]"),
        ({"instances": [[0.0] * 9 + ["x"]]}, "instances[0][9]"),
        ({"instances": [[0.0] * 9 + [True]]}, "instances[0][9]"),
        ({"instances": [[0.0] * 9 + [10**400]]}, "instances[0][9]"),
        ({"instances": [{"age": 1, "weight": 2}]}, "instances[0].weight"),
        ({"instances": [{"age": 1}]}, "instances[0].sex"),
        ({"instances": []}, "instances"),
        ({"rows": [[0.0] * 10]}, "instances"),
        ({"instances": ["row"]}, "instances[0]"),
    ]
    for body, field in cases:
        assert_error(await client.post("/models/diabetes/predict", json=body), 422, "validation_failed", field)
    assert len(calls) == 2  # no invalid request reached a server


async def test_predict_without_a_server_is_503_and_a_silent_server_is_504(api: tuple[httpx.AsyncClient, Runtime]) -> None:
    client, runtime = api
    await register_fake_model(client, runtime)
    assert_error(await client.post("/models/diabetes/predict", json={"instances": [[0.0] * 10]}), 503, "no_consumers")

    async def silent(msg: Message) -> Message:
        await asyncio.sleep(3)
        return msg.reply({})

    runtime.bus.consume(contracts.predict_queue("diabetes"), silent)
    assert_error(await client.post("/models/diabetes/predict", json={"instances": [[0.0] * 10]}), 504, "timeout")
    assert (await client.get("/health")).status_code == 200  # still serving


async def test_cancelling_a_queued_task_stops_it_from_running(api: tuple[httpx.AsyncClient, Runtime]) -> None:
    client, runtime = api
    cancels: list[str] = []

    async def on_cancel(msg: Message) -> None:
        cancels.append(msg.data["task_id"])

    runtime.bus.subscribe(contracts.TASK_CANCELLED, on_cancel)
    task_id = (await client.post("/workflows/wine/train", json={})).json()["task_id"]
    cancelled = await client.delete(f"/tasks/{task_id}")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert_error(await client.delete(f"/tasks/{task_id}"), 409, "conflict")
    claim = await runtime.bus.request(contracts.REGISTRY, Message(type=contracts.TASK_CLAIM, body={"task_id": task_id}),
                                      timeout=5)
    assert claim.data == {"proceed": False}
    await asyncio.sleep(0.05)
    assert cancels == [task_id]


async def test_a_train_command_that_exhausts_its_retries_fails_the_task_with_the_error(
    api: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, runtime = api

    async def crashing_trainer(msg: Message) -> None:
        raise RuntimeError("GPU on fire")

    runtime.bus.consume(contracts.TRAIN, crashing_trainer)
    task_id = (await client.post("/workflows/diabetes/train", json={})).json()["task_id"]
    for _ in range(200):
        task = (await client.get(f"/tasks/{task_id}")).json()
        if task["status"] == "failed":
            break
        await asyncio.sleep(0.02)
    assert task["status"] == "failed"
    assert task["error"]["code"] == "dead_lettered" and "GPU on fire" in task["error"]["message"]


async def test_the_original_skipper_contract_trains_polls_and_predicts(api: tuple[httpx.AsyncClient, Runtime]) -> None:
    client, runtime = api
    # execute_async trains compat.default_workflow (diabetes) with the params in the payload string
    queued = await client.post("/tasks/execute_async", json={"task_type": "training", "payload": '{"epochs": 2}',
                                                             "description": "nightly"})
    assert queued.status_code == 202
    task_id = queued.json()["task_id"]
    assert queued.json() == {"task_id": task_id, "task_status": "Processing"}
    # polled: 202 Processing (with Skipper's task document) until it finished
    polled = await client.get(f"/tasks/{task_id}")
    assert polled.status_code == 202
    body = polled.json()
    assert body["task_status"] == "Processing" and "outcome" not in body
    assert body["task_id"] == task_id and body["workflow"] == "diabetes" and body["params"]["epochs"] == 2
    await deliver_artifact(client, runtime, task_id)
    done = await client.get(f"/tasks/{task_id}")
    assert done.status_code == 200
    body = done.json()
    assert body["task_status"] == "Success" and body["status"] == "succeeded"
    assert isinstance(body["outcome"], str) and json.loads(body["outcome"]) == body["result"]
    assert body["result"]["model_version"] == 1

    # execute_sync: one row as {feature: value}; the outcome is the native route's answer as a JSON string
    calls: list[list[list[float]]] = []
    fake_server(runtime, calls)
    row = {name: float(i) for i, name in enumerate(DIABETES_FEATURES)}
    native = (await client.post("/models/diabetes/predict", json={"instances": [row]})).json()
    for url in ["/tasks/execute_sync", "/tasks/diabetes/execute_sync"]:
        predicted = await client.post(url, json={"task_type": "serving", "payload": "", "data": row})
        assert predicted.status_code == 202, predicted.text
        assert set(predicted.json()) == {"task_id", "task_status", "outcome"}
        assert predicted.json()["task_id"] == "-" and predicted.json()["task_status"] == "Success"
        assert json.loads(predicted.json()["outcome"]) == native == {"predictions": [45.0], "model": "diabetes",
                                                                     "model_version": 1}
    assert calls[-1] == [[float(i) for i in range(10)]]
    # the payload string may carry the row when data is absent
    from_payload = await client.post("/tasks/execute_sync", json={"task_type": "serving", "payload": json.dumps(row)})
    assert json.loads(from_payload.json()["outcome"]) == native

    # a task type the route does not run: the original's answer, nothing queued
    before = (await client.get("/tasks")).json()["total"]
    for url, body in [("/tasks/execute_sync", {"task_type": "training", "payload": "", "data": row}),
                      ("/tasks/execute_async", {"task_type": "serving", "payload": ""}),
                      ("/tasks/diabetes/execute_async", {"task_type": "mobilenet", "payload": ""})]:
        wrong = await client.post(url, json=body)
        assert wrong.status_code == 202 and wrong.json() == {"task_id": "-", "task_status": "Wrong task type"}, url
    assert (await client.get("/tasks")).json()["total"] == before

    # a named workflow, and an empty payload for its default params
    named = await client.post("/tasks/wine/execute_async", json={"task_type": "training", "payload": ""})
    assert named.status_code == 202
    task = (await client.get(f"/tasks/{named.json()['task_id']}")).json()
    assert task["workflow"] == "wine" and task["params"]["epochs"] == runtime.settings.workflows["wine"].params.epochs
    assert_error(await client.post("/tasks/nope/execute_async", json={"task_type": "training", "payload": ""}), 404,
                 "not_found")
    # a payload that is not JSON is invalid input, never a default training or prediction
    assert_error(await client.post("/tasks/execute_sync", json={"task_type": "serving", "payload": "{oops"}), 422,
                 "validation_failed", "payload")


async def test_the_original_contract_reports_a_failed_training_and_a_cancelled_one(
    api: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, runtime = api
    cancelled = (await client.post("/tasks/execute_async", json={"task_type": "training", "payload": ""})).json()
    assert (await client.delete(f"/tasks/{cancelled['task_id']}")).status_code == 200
    revoked = await client.get(f"/tasks/{cancelled['task_id']}")
    assert revoked.status_code == 200 and revoked.json()["task_status"] == "Revoked"
    assert revoked.json()["outcome"] == "cancelled by request"

    async def crashing_trainer(msg: Message) -> None:
        raise RuntimeError("GPU on fire")

    runtime.bus.consume(contracts.TRAIN, crashing_trainer)
    task_id = (await client.post("/tasks/execute_async", json={"task_type": "training", "payload": ""})).json()["task_id"]
    for _ in range(200):
        polled = await client.get(f"/tasks/{task_id}")
        if polled.status_code != 202:
            break
        assert polled.json()["task_status"] == "Processing"
        await asyncio.sleep(0.02)
    assert polled.status_code == 200
    assert polled.json()["task_status"] == "Failure" and "GPU on fire" in polled.json()["outcome"]


async def test_openapi_describes_every_endpoint(api: tuple[httpx.AsyncClient, Runtime]) -> None:
    client, _ = api
    paths = (await client.get("/openapi.json")).json()["paths"]
    for path in ["/health", "/ready", "/workflows", "/workflows/{workflow}/train", "/tasks", "/tasks/{task_id}",
                 "/tasks/{task_id}/events", "/models", "/models/{model}", "/models/{model}/predict",
                 "/models/{model}/versions/{version}/deploy", "/models/{model}/versions/{version}/artifact",
                 "/tasks/execute_async", "/tasks/{workflow}/execute_async", "/tasks/execute_sync",
                 "/tasks/{workflow}/execute_sync"]:
        assert f"/api/v1/skipper{path}" in paths, path
    assert "post" in paths["/api/v1/skipper/models/{model}/predict"]
    assert "422" in {str(k) for k in paths["/api/v1/skipper/models/{model}/predict"]["post"]["responses"]}


async def test_train_while_the_broker_is_down_is_503_and_the_task_is_recorded_failed_not_lost(
    api: tuple[httpx.AsyncClient, Runtime], monkeypatch: pytest.MonkeyPatch,
) -> None:
    client, runtime = api

    async def broker_down(queue: str, msg: Message) -> None:
        # What every broker transport raises while its connection is down (see test_rabbitmq.py).
        raise Unavailable("connection to the broker is down")

    monkeypatch.setattr(runtime.bus, "send", broker_down)
    response = await client.post("/workflows/diabetes/train", json={})
    assert_error(response, 503, "unavailable")
    task_id = response.json()["error"]["details"]["task_id"]
    task = (await client.get(f"/tasks/{task_id}")).json()
    assert task["status"] == "failed" and "broker" in task["error"]["message"]
