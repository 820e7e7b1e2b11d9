"""Metrics that help: predict latency resolved below a millisecond, micro-batch sizes and queue depth per
model, training duration, and a Grafana dashboard whose every query names a metric Skipper exports."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from pathlib import Path

import numpy as np
from prometheus_client import REGISTRY, generate_latest

from skipper.core import contracts
from skipper.core.bus import Transport
from skipper.core.messages import Message
from skipper.core.module import Module
from skipper.modules.serving.batching import Batcher
from tests.apphelpers import running_skipper, wait_for_task

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "docs" / "grafana" / "skipper-dashboard.json"
FEATURES = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]


def sample(name: str, **labels: str) -> float:
    value = REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


class InstantServer(Module):
    """Plays a server on the bus that answers at once: what is left is the api's own latency."""

    name = "instant-server"

    def register(self, bus: Transport) -> None:
        bus.consume(contracts.predict_queue("diabetes"), self.predict)

    async def predict(self, msg: Message) -> Message:
        return msg.reply({"predictions": [0.0] * len(msg.data["instances"]), "model": "diabetes", "model_version": 1})


async def test_predict_latency_buckets_resolve_sub_millisecond_predictions(tmp_path: Path) -> None:
    async with running_skipper(tmp_path, frozenset({"api"})) as (client, runtime):
        runtime.modules.append(instant := InstantServer())
        instant.register(runtime.bus)
        data = b"archive"
        sha = hashlib.sha256(data).hexdigest()
        path = runtime.container.artifact_store().put("diabetes", sha, data)
        runtime.container.registry().add_version(model="diabetes", sha256=sha, size=len(data), path=str(path),
                                                 metrics={}, metadata={"features": FEATURES}, task_id=None)
        before = sample("skipper_predict_seconds_count", model="diabetes")
        for _ in range(20):
            response = await client.post("/models/diabetes/predict", json={"instances": [[0.0] * 10]})
            assert response.status_code == 200, response.text
    bounds = [float(b) for b in re.findall(r'skipper_predict_seconds_bucket\{le="([0-9.e+-]+)",model="diabetes"}',
                                          generate_latest().decode())]
    assert len([b for b in bounds if b < 0.001]) >= 4  # 100, 250, 500, 750 microseconds
    assert sample("skipper_predict_seconds_count", model="diabetes") - before == 20
    # the observations spread over the buckets instead of all landing in the lowest one
    assert sample("skipper_predict_seconds_bucket", model="diabetes", le="0.0001") < 20 + before


async def test_the_batcher_reports_each_batch_size_and_its_queue_depth() -> None:
    sizes: list[int] = []
    release = asyncio.Event()
    calls = 0

    def run(rows: np.ndarray) -> list[float]:
        nonlocal calls
        calls += 1
        return [0.0] * len(rows)

    batcher = Batcher(run, max_rows=8, max_wait_ms=50, inline=True, on_batch=sizes.append)
    futures = [batcher.submit(np.zeros((1, 3), dtype=np.float32)) for _ in range(12)]
    assert batcher.queued_rows == 12  # nothing ran yet: the loop has not turned
    release.set()
    await asyncio.gather(*futures)
    assert sizes == [8, 4] and calls == 2 and batcher.queued_rows == 0


async def test_a_training_is_timed_by_workflow_and_outcome(tmp_path: Path) -> None:
    workflow = {"model": "slow", "kind": "regression", "dataset": {"source": "sklearn", "name": "diabetes"},
                "trainer": "tests.plugins:until_stopped"}
    labels = {"workflow": "slow", "outcome": "cancelled"}
    before = sample("skipper_training_seconds_count", **labels)
    async with running_skipper(tmp_path, frozenset({"api", "trainer"}), workflows={"slow": workflow}) as (client, _):
        task_id = (await client.post("/workflows/slow/train", json={})).json()["task_id"]
        for _ in range(200):
            if ((await client.get(f"/tasks/{task_id}")).json().get("progress") or {}).get("epoch", 0) >= 2:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        assert (await client.delete(f"/tasks/{task_id}")).status_code == 200
        await wait_for_task(client, task_id, {"cancelled"})
        for _ in range(100):
            if sample("skipper_training_seconds_count", **labels) > before:
                break
            await asyncio.sleep(0.05)
    assert sample("skipper_training_seconds_count", **labels) == before + 1
    assert sample("skipper_training_seconds_sum", **labels) > 0.1
    assert sample("skipper_training_seconds_bucket", **labels, le="7200.0") == before + 1


def test_every_query_of_the_grafana_dashboard_names_a_metric_skipper_exports() -> None:
    import skipper.modules.api.service
    import skipper.modules.serving.module
    import skipper.modules.training.module  # noqa: F401  (each registers its metrics)

    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(exprs) >= 8
    exported = set(re.findall(r"^# TYPE (\w+) ", generate_latest().decode(), flags=re.M))
    used = {re.sub(r"_(bucket|sum|count)$", "", name) for e in exprs for name in re.findall(r"\bskipper_\w+", e)}
    assert used <= exported, used - exported
    assert {"skipper_predict_seconds", "skipper_batch_rows", "skipper_batch_queue_rows",
            "skipper_training_seconds"} <= used
