"""With API keys configured, every flow still works for a fitting key: a real training, its model served,
a prediction, a rollback, an artifact download, a cancel; and each protected route refuses the wrong key.

Real TensorFlow on the memory transport, all roles in one process, driven through the HTTP app.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.apphelpers import SCOPES, bearer, running_skipper, scoped_keys

pytestmark = pytest.mark.tensorflow

ROW = [0.038, 0.050, 0.061, 0.021, -0.044, -0.034, -0.043, -0.002, 0.019, -0.017]


@pytest.fixture
async def keyed(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, str]]]:
    keys, entries = scoped_keys()
    async with running_skipper(tmp_path, frozenset({"api", "trainer", "server"}), auth={"keys": entries}) as (client, _):
        yield client, keys


async def wait(client: httpx.AsyncClient, key: str, task_id: str) -> dict[str, Any]:
    for _ in range(1200):
        task: dict[str, Any] = (await client.get(f"/tasks/{task_id}", headers=bearer(key))).json()
        if task["status"] in ("succeeded", "failed", "cancelled"):
            return task
        await asyncio.sleep(0.1)
    raise AssertionError(f"task {task_id} did not finish")


async def test_scoped_keys_train_serve_predict_and_roll_back_and_wrong_keys_are_refused(
    keyed: tuple[httpx.AsyncClient, dict[str, str]],
) -> None:
    client, keys = keyed
    train, read, predict, deploy = (bearer(keys[s]) for s in ("train", "read", "predict", "deploy"))

    # train: only with the train key
    assert (await client.post("/workflows/diabetes/train", json={"params": {"epochs": 2}})).status_code == 401
    assert (await client.post("/workflows/diabetes/train", json={"params": {"epochs": 2}}, headers=predict)).status_code == 403
    task_ids = []
    for _ in range(2):  # two versions, to roll back between them
        queued = await client.post("/workflows/diabetes/train", json={"params": {"epochs": 2}}, headers=train)
        assert queued.status_code == 202, queued.text
        task = await wait(client, keys["read"], queued.json()["task_id"])
        assert task["status"] == "succeeded", task
        task_ids.append(task["task_id"])

    # predict: only with the predict key, once the new version serves
    for _ in range(200):
        predicted = await client.post("/models/diabetes/predict", json={"instances": [ROW]}, headers=predict)
        if predicted.status_code == 200 and predicted.json()["model_version"] == 2:
            break
        await asyncio.sleep(0.05)
    assert predicted.status_code == 200 and len(predicted.json()["predictions"]) == 1, predicted.text
    assert (await client.post("/models/diabetes/predict", json={"instances": [ROW]}, headers=train)).status_code == 403
    original = await client.post("/tasks/diabetes/execute_sync", json={"payload": "", "data": ROW}, headers=predict)
    assert original.status_code == 202 and original.json()["task_status"] == "Success"

    # roll back and download: only with the deploy key
    assert (await client.post("/models/diabetes/versions/1/deploy", headers=read)).status_code == 403
    rolled = await client.post("/models/diabetes/versions/1/deploy", headers=deploy)
    assert rolled.status_code == 200 and rolled.json()["version"] == 1
    for _ in range(200):
        if (await client.get("/ready")).json()["models"].get("diabetes") == 1:
            break
        await asyncio.sleep(0.05)
    assert (await client.post("/models/diabetes/predict", json={"instances": [ROW]},
                              headers=predict)).json()["model_version"] == 1
    artifact = await client.get("/models/diabetes/versions/2/artifact", headers=deploy)
    assert artifact.status_code == 200 and artifact.content[:2] == b"\x1f\x8b"  # gzip
    assert (await client.get("/models/diabetes/versions/2/artifact", headers=read)).status_code == 403

    # cancel: the train key; a read key only reads
    queued = await client.post("/workflows/diabetes/train", json={"params": {"epochs": 1000}}, headers=train)
    cancel_id = queued.json()["task_id"]
    assert (await client.delete(f"/tasks/{cancel_id}", headers=read)).status_code == 403
    assert (await client.delete(f"/tasks/{cancel_id}", headers=train)).json()["status"] == "cancelled"

    # every protected route, with real resources in its path, refuses a key without its scope and no key
    document = (await client.get("/openapi.json")).json()
    real = {"workflow": "diabetes", "model": "diabetes", "version": "1", "task_id": task_ids[0]}
    checked = 0
    for path, operations in document["paths"].items():
        for method, op in operations.items():
            scope = op["x-skipper-scope"]
            if scope == "open":
                continue
            url = re.sub(r"{([^}]+)}", lambda m: real[m.group(1)], path)
            # Skipper's own routes relative to the client's base; the inference protocols' at the root
            url = url.removeprefix("/api/v1/skipper") if url.startswith("/api/v1/skipper") else f"http://127.0.0.1{url}"
            wrong = next(s for s in SCOPES if s not in (scope, "admin"))
            for headers, status in [({}, 401), (bearer(keys[wrong]), 403)]:
                response = await client.request(method.upper(), url, headers=headers,
                                                json={} if method in ("post", "delete") else None)
                assert response.status_code == status, f"{method.upper()} {url} ({scope}) with {headers}: {response.text}"
            checked += 1
    assert checked >= 16

    # the state changes were audited under the keys' names
    expected = {("train", "train-key"), ("deploy", "deploy-key"), ("cancel", "train-key")}
    for _ in range(200):  # events reach the log over the bus
        audit = (await client.get("/events", params={"kind": "audit"}, headers=read)).json()["events"]
        if {(e["fields"]["action"], e["fields"]["key"]) for e in audit} == expected:
            break
        await asyncio.sleep(0.05)
    assert {(e["fields"]["action"], e["fields"]["key"]) for e in audit} == expected
