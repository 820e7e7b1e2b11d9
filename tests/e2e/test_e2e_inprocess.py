"""The all-in-one engine end to end: train -> registry -> fanout -> serve, in one process.

Real TensorFlow training and serving on the memory transport, driven through the HTTP app.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from skipper.app.runtime import Runtime
from skipper.core.messages import Message
from tests.apphelpers import running_skipper, wait_for_task

pytestmark = pytest.mark.tensorflow

ROW = [0.038, 0.050, 0.061, 0.021, -0.044, -0.034, -0.043, -0.002, 0.019, -0.017]


@pytest.fixture
async def skipper(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    async with running_skipper(tmp_path, frozenset({"api", "trainer", "server"})) as pair:
        yield pair


async def test_train_then_predict_through_the_http_api(skipper: tuple[httpx.AsyncClient, Runtime]) -> None:
    client, _ = skipper
    queued = await client.post("/workflows/diabetes/train", json={"params": {"epochs": 3}})
    assert queued.status_code == 202
    task = await wait_for_task(client, queued.json()["task_id"], {"succeeded", "failed"})
    assert task["status"] == "succeeded", task
    assert task["progress"] == {**task["progress"], "epoch": 3, "epochs": 3}
    assert task["result"]["model"] == "diabetes" and task["result"]["model_version"] == 1
    assert set(task["result"]["metrics"]) >= {"rmse", "mae"}

    async def serving() -> bool:
        return (await client.get("/ready")).json()["models"].get("diabetes") == 1

    for _ in range(100):
        if await serving():
            break
        await asyncio.sleep(0.05)
    ready = (await client.get("/ready")).json()
    assert ready["role"] == "all" and ready["models"] == {"diabetes": 1}

    predicted = await client.post("/models/diabetes/predict", json={"instances": [ROW, [0.0] * 10]})
    assert predicted.status_code == 200, predicted.text
    body = predicted.json()
    assert body["model"] == "diabetes" and body["model_version"] == 1
    assert len(body["predictions"]) == 2 and all(isinstance(p, float) for p in body["predictions"])
    assert (await client.post("/models/diabetes/predict", json={"instances": [[1.0, 2.0, 3.0]]})).status_code == 422
    assert (await client.post("/models/diabetes/predict", content=b'{"instances": [')).status_code == 400

    events = (await client.get(f"/tasks/{task['task_id']}/events")).json()["events"]
    kinds = [e["kind"] for e in events]
    assert kinds[0] == "task.queued" and "task.started" in kinds and kinds.count("task.progress") == 3
    assert "task.succeeded" in kinds and "model.published" in kinds
    assert all(e["correlation_id"] == task["correlation_id"] for e in events)


async def test_a_classification_workflow_predicts_labels(skipper: tuple[httpx.AsyncClient, Runtime]) -> None:
    client, _ = skipper
    queued = await client.post("/workflows/wine/train", json={"params": {"epochs": 5}})
    task = await wait_for_task(client, queued.json()["task_id"], {"succeeded", "failed"})
    assert task["status"] == "succeeded", task
    assert 0.0 <= task["result"]["metrics"]["accuracy"] <= 1.0
    for _ in range(100):
        response = await client.post("/models/wine/predict", json={"instances": [[13.0] + [1.0] * 12]})
        if response.status_code == 200:
            break
        await asyncio.sleep(0.05)
    prediction = response.json()["predictions"][0]
    assert prediction["label"] in prediction["probabilities"]
    assert abs(sum(prediction["probabilities"].values()) - 1.0) < 1e-4


async def test_a_new_version_swaps_in_under_concurrent_predictions_without_a_failure(
    skipper: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, _ = skipper
    first = await client.post("/workflows/diabetes/train", json={"params": {"epochs": 2}})
    await wait_for_task(client, first.json()["task_id"], {"succeeded"})
    while (await client.post("/models/diabetes/predict", json={"instances": [ROW]})).status_code != 200:
        await asyncio.sleep(0.05)

    second = (await client.post("/workflows/diabetes/train", json={"params": {"epochs": 2}})).json()["task_id"]
    statuses: list[int] = []
    versions: set[int] = set()
    stop = asyncio.Event()

    async def hammer() -> None:
        while not stop.is_set():
            response = await client.post("/models/diabetes/predict", json={"instances": [ROW]})
            statuses.append(response.status_code)
            if response.status_code == 200:
                versions.add(response.json()["model_version"])
            await asyncio.sleep(0)

    workers = [asyncio.create_task(hammer()) for _ in range(16)]
    await wait_for_task(client, second, {"succeeded"})
    deadline = time.monotonic() + 30
    while 2 not in versions and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)
    stop.set()
    await asyncio.gather(*workers)
    assert statuses and set(statuses) == {200}, f"{len(statuses)} requests, statuses {set(statuses)}"
    assert versions == {1, 2}


async def test_cancelling_a_running_task_stops_training_and_registers_nothing(
    skipper: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, _ = skipper
    task_id = (await client.post("/workflows/diabetes/train",
                                 json={"params": {"epochs": 500, "batch_size": 8, "early_stopping": None}})).json()["task_id"]
    for _ in range(600):
        task = (await client.get(f"/tasks/{task_id}")).json()
        if task["status"] == "running" and (task["progress"] or {}).get("epoch", 0) >= 1:
            break
        await asyncio.sleep(0.05)
    # health stays responsive while TensorFlow trains in its worker thread
    started = time.monotonic()
    assert (await client.get("/health")).status_code == 200
    assert time.monotonic() - started < 1.0
    cancelled = await client.delete(f"/tasks/{task_id}")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    for _ in range(200):
        kinds = [e["kind"] for e in (await client.get(f"/tasks/{task_id}/events")).json()["events"]]
        if "task.cancel_acknowledged" in kinds:
            break
        await asyncio.sleep(0.05)
    assert "task.cancel_acknowledged" in kinds
    task = (await client.get(f"/tasks/{task_id}")).json()
    assert task["status"] == "cancelled" and task["progress"]["epoch"] < 500
    assert (await client.get("/models")).json()["models"] == []


async def test_an_artifact_over_the_inline_limit_travels_in_chunks_both_ways(tmp_path: Path) -> None:
    # Given chunks of 4 KiB and nothing inline: every artifact goes trainer -> registry in chunks,
    # is announced by reference, and reaches the server in ranges
    bus = {"inline_artifact_max_bytes": 0, "artifact_chunk_bytes": 4096}
    async with running_skipper(tmp_path, frozenset({"api", "trainer", "server"}), bus=bus) as (client, runtime):
        transport = runtime.container.transport()
        sizes: dict[str, list[int]] = {}
        request = transport.request

        async def spy(queue: str, msg: Message, **kw: Any) -> Message:
            reply = await request(queue, msg, **kw)
            for m in (msg, reply):
                if isinstance(m.body, bytes):
                    sizes.setdefault(msg.type, []).append(len(m.body))
            return reply

        transport.request = spy  # type: ignore[method-assign]
        queued = await client.post("/workflows/diabetes/train", json={"params": {"epochs": 2}})
        task = await wait_for_task(client, queued.json()["task_id"], {"succeeded", "failed"})
        assert task["status"] == "succeeded", task
        for _ in range(200):
            if (await client.get("/ready")).json()["models"].get("diabetes") == 1:
                break
            await asyncio.sleep(0.05)
        predicted = await client.post("/models/diabetes/predict", json={"instances": [ROW]})
        assert predicted.status_code == 200, predicted.text
        # The stored artifact is whole (its checksum was checked at commit) and no upload part is left
        store = tmp_path / "artifacts" / "diabetes"
        stored = list(store.glob("*.tar.gz")) if store.exists() else list(tmp_path.rglob("*.tar.gz"))
        assert len(stored) == 1 and stored[0].stat().st_size > 4096
        assert not list(tmp_path.rglob(".upload-*")) and not list(tmp_path.rglob(".download-*"))
        assert not list((tmp_path / "training").glob("skipper-train-*"))  # the trainer's work dir is cleaned up
        # Both ways in pieces of at most one chunk, adding up to the artifact
        for kind in ("model.artifact.chunk", "registry.artifact"):
            assert len(sizes[kind]) > 1 and max(sizes[kind]) <= 4096, (kind, sizes.get(kind))
        assert sum(sizes["model.artifact.chunk"]) == stored[0].stat().st_size
