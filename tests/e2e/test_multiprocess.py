"""Skipper split by role into processes that share only a broker (and the api's PostgreSQL).

Marked `multiprocess`; run alone with `pytest -m multiprocess`. Parametrized over every
broker transport: each must give fanout to every server, catch-up, and no lost work.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from skipper.app.container import bus_options
from skipper.core import contracts
from skipper.core.messages import Message
from skipper.core.settings import load_settings
from skipper.transports import build_transport
from tests.processes import ROW, Cluster, eventually, http, postgres_schema, train
from tests.services import RABBITMQ_URL, REDIS_URL, require_postgres, require_rabbitmq, require_redis

pytestmark = pytest.mark.multiprocess

BROKERS = {
    "rabbitmq": ("rabbitmq", RABBITMQ_URL, require_rabbitmq),
    "dramatiq-rabbitmq": ("dramatiq", RABBITMQ_URL, require_rabbitmq),
    "dramatiq-redis": ("dramatiq", REDIS_URL, require_redis),
}


@pytest.fixture(params=sorted(BROKERS))
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    transport, url, require = BROKERS[request.param]
    require()
    require_postgres()
    with postgres_schema() as database_url:
        env = {"SKIPPER_TRANSPORT": transport, "SKIPPER_BROKER_URL": url, "SKIPPER_DATABASE_URL": database_url,
               "SKIPPER_NAMESPACE": f"mp-{uuid.uuid4().hex[:10]}", "SKIPPER_LOG_LEVEL": "INFO",
               "SKIPPER_BUS__RETRY_BACKOFF_S": "0.2", "SKIPPER_BUS__HEARTBEAT_S": "3",
               "SKIPPER_HTTP__PREDICT_TIMEOUT_S": "3"}
        deployment = Cluster(env=env, workdir=tmp_path)
        try:
            yield deployment
        except BaseException:
            print(deployment.logs())
            raise
        finally:
            deployment.stop()


def predict(api_url: str, rows: int = 2) -> tuple[int, dict]:  # type: ignore[type-arg]
    return http("POST", f"{api_url}/models/diabetes/predict", {"instances": [ROW] * rows})


def test_models_fan_out_to_every_server_and_a_late_server_catches_up(cluster: Cluster) -> None:
    api = cluster.start("api", "api")
    api2 = cluster.start("api", "api2")  # a second replica sharing PostgreSQL
    trainer = cluster.start("trainer", "trainer")
    server1 = cluster.start("server", "server1")
    server2 = cluster.start("server", "server2")
    # a server is not ready before it has caught up with the registry
    eventually(lambda: server1.ready() and server2.ready(), what="servers ready")

    first = train(api, epochs=2)
    assert first["status"] == "succeeded", first
    assert first["result"]["model_version"] == 1
    eventually(lambda: server1.models() == {"diabetes": 1} and server2.models() == {"diabetes": 1},
               what="both servers serve v1")
    status, body = predict(api.url)
    assert status == 200 and len(body["predictions"]) == 2 and body["model_version"] == 1
    # predictions spread over the servers (competing consumers), each reporting in its /metrics
    served = 'skipper_served_predictions_total{model="diabetes"}'
    sent = 1

    def both_served() -> bool:
        # Competing consumers need not alternate: one may take a run of requests before the other's turn.
        nonlocal sent
        assert predict(api.url, rows=1)[0] == 200
        sent += 1
        return sent >= 40 and min(server1.metric(served), server2.metric(served)) > 0

    eventually(both_served, timeout=60, interval=0.02, what="predictions answered by both servers")
    counts = [server1.metric(served), server2.metric(served)]
    assert sum(counts) == sent and min(counts) > 0, counts
    assert server1.metric('skipper_served_model_version{model="diabetes"}') == 1
    # every process froze its start-up heap (full collections then skip it: the api's p99 under load)
    assert min(role.metric("skipper_gc_frozen_objects") for role in (api, api2, server1)) > 10_000
    # servers load Keras without scikit-learn's compiled modules; the trainer, which reads its datasets, has them
    assert trainer.maps("/sklearn/") and not server1.maps("/sklearn/") and not server2.maps("/sklearn/")

    # one server dies; predictions keep working on the other, and a new version still reaches it
    server1.kill()
    for _ in range(10):
        status, body = predict(api.url, rows=1)
        assert status == 200, body
    second = train(api2, epochs=2)  # through the other api replica
    assert second["status"] == "succeeded", second
    assert second["result"]["model_version"] == 2  # numbered after version 1, never colliding
    eventually(lambda: server2.models() == {"diabetes": 2}, what="live server serves v2")
    status, body = predict(api.url)
    assert status == 200 and body["model_version"] == 2

    # a server started now catches up on version 2 without any new training
    tasks_before = http("GET", f"{api.url}/tasks")[1]["total"]
    server3 = cluster.start("server", "server3")
    eventually(lambda: server3.models() == {"diabetes": 2}, what="late server caught up")
    assert http("GET", f"{api.url}/tasks")[1]["total"] == tasks_before

    # a rollback is broadcast like a new model
    status, _ = http("POST", f"{api2.url}/models/diabetes/versions/1/deploy")
    assert status == 200
    eventually(lambda: server2.models() == {"diabetes": 1} and server3.models() == {"diabetes": 1},
               what="rollback reached every live server")
    status, body = predict(api.url)
    assert status == 200 and body["model_version"] == 1

    # both api replicas see the same tasks and registry
    assert http("GET", f"{api2.url}/tasks")[1]["total"] == http("GET", f"{api.url}/tasks")[1]["total"] == 2
    assert http("GET", f"{api.url}/models/diabetes")[1]["production_version"] == 1


def test_a_trainer_killed_mid_training_is_replaced_and_the_task_still_succeeds(cluster: Cluster) -> None:
    api = cluster.start("api", "api")
    trainer = cluster.start("trainer", "trainer1")
    status, body = http("POST", f"{api.url}/workflows/diabetes/train",
                        {"params": {"epochs": 150, "batch_size": 8, "early_stopping": None}})
    assert status == 202
    task_id = body["task_id"]
    eventually(lambda: (http("GET", f"{api.url}/tasks/{task_id}")[1].get("progress") or {}).get("epoch", 0) >= 2,
               timeout=120, what="training under way")
    trainer.kill()
    time.sleep(0.5)
    assert http("GET", f"{api.url}/tasks/{task_id}")[1]["status"] == "running"
    cluster.start("trainer", "trainer2")

    def done() -> dict | None:  # type: ignore[type-arg]
        task = http("GET", f"{api.url}/tasks/{task_id}")[1]
        return task if task["status"] in ("succeeded", "failed") else None

    task = eventually(done, timeout=300, what="retried task finished")
    assert task["status"] == "succeeded", task
    assert task["attempts"] == 2  # the retry shows on the task
    kinds = [e["kind"] for e in http("GET", f"{api.url}/tasks/{task_id}/events")[1]["events"]]
    assert "task.retried" in kinds


def test_a_train_command_that_keeps_failing_ends_failed_with_its_error(cluster: Cluster, tmp_path: Path) -> None:
    config = tmp_path / "boom.yaml"
    config.write_text(
        "workflows:\n"
        "  boom:\n"
        "    model: boom\n"
        "    kind: regression\n"
        "    dataset: {source: sklearn, name: diabetes}\n"
        "    trainer: tests.plugins:explode\n"
    )
    env = {"SKIPPER_CONFIG": str(config), "SKIPPER_BUS__MAX_RETRIES": "2"}
    api = cluster.start("api", "api", extra_env=env)
    cluster.start("trainer", "trainer", extra_env=env)
    task = train(api, "boom", timeout=120)
    assert task["status"] == "failed", task
    assert "unobtainium" in task["error"]["message"]
    assert task["attempts"] == 3  # the first try and max_retries retries, then the dead letter

    def kinds() -> list[str]:
        return [e["kind"] for e in http("GET", f"{api.url}/tasks/{task['task_id']}/events")[1]["events"]]

    # The events reach the sink over the bus, a moment after the task row changed.
    seen = eventually(lambda: (k := kinds()) and "message.dead_lettered" in k and "task.failed" in k and k,
                      timeout=30, what="dead-letter and failure events")
    assert seen[-1] in ("task.failed", "message.dead_lettered")


async def test_predict_with_no_server_is_a_fast_503_and_a_silent_server_a_504(cluster: Cluster) -> None:
    api = cluster.start("api", "api")
    trainer = cluster.start("trainer", "trainer")
    server = cluster.start("server", "server")
    assert train(api, epochs=1)["status"] == "succeeded"
    eventually(lambda: server.models() == {"diabetes": 1}, what="server has v1")
    trainer.kill()
    server.kill()
    await asyncio.sleep(1.0)
    started = time.monotonic()
    status, body = await asyncio.to_thread(predict, api.url)
    elapsed = time.monotonic() - started
    assert status == 503, body
    assert body["error"]["code"] in ("no_consumers", "unavailable")
    assert elapsed < 2.5

    # a "server" that takes predict requests and never answers: 504 after the configured 3 s
    settings = load_settings(environ=cluster.env)
    silent = build_transport(settings, bus_options(settings))
    release = asyncio.Event()

    async def never_answers(msg: Message) -> Message:
        await release.wait()
        return msg.reply({})

    silent.consume(contracts.predict_queue("diabetes"), never_answers)
    await silent.start()
    try:
        started = time.monotonic()
        status, body = await asyncio.to_thread(predict, api.url)
        elapsed = time.monotonic() - started
    finally:
        release.set()
        await silent.close()
    assert status == 504, body
    assert body["error"]["code"] == "timeout"
    assert 2.5 < elapsed < 6
