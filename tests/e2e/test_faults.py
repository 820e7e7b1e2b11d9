"""Faults on real processes and the real brokers: what happens to accepted work and live traffic.

Marked `faults` (and `slow`, `multiprocess`): run them alone with `pytest -m faults`, skip them
with `-m "not slow"`; CI runs them (about 5 minutes on the 2-core CI machine). Each drops only its
own processes' connections (tests/drops.py), so other tests can share the brokers meanwhile.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from skipper.core.db import Database
from skipper.core.repositories import ModelRegistry
from tests.drops import drop_rabbitmq, drop_redis, queue_counts, rabbitmq_connections, redis_clients, require_rabbitmqctl
from tests.faultkit import LONG_TRAINING, PredictLoad, epoch_reached, submit, task, wait_task
from tests.processes import ROW, Cluster, Role, eventually, http, postgres_schema, train
from tests.services import RABBITMQ_URL, REDIS_URL, require_postgres, require_rabbitmq, require_redis

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.multiprocess]

BROKERS = {
    "rabbitmq": ("rabbitmq", RABBITMQ_URL),
    "dramatiq-rabbitmq": ("dramatiq", RABBITMQ_URL),
    "dramatiq-redis": ("dramatiq", REDIS_URL),
}


class Faults:
    """One deployment and the broker-side faults that hit only its own connections."""

    def __init__(self, variant: str, cluster: Cluster) -> None:
        self.variant = variant
        self.cluster = cluster
        self.namespace = cluster.env["SKIPPER_NAMESPACE"]
        self.redis = variant == "dramatiq-redis"

    def prefix(self, role: str) -> str:
        return f"skipper:{self.namespace}:{role}:"

    def connections(self, role: str) -> int:
        return len(redis_clients(self.prefix(role)) if self.redis else rabbitmq_connections(self.prefix(role)))

    def drop(self, role: str) -> None:
        """Close every broker connection of `role`'s processes from the broker side, and see them come back."""
        dropped = drop_redis(self.prefix(role)) if self.redis else drop_rabbitmq(self.prefix(role))
        assert dropped > 0, f"no {role} connection to drop"
        eventually(lambda: self.connections(role) > 0, timeout=30, interval=0.5, what=f"{role} reconnected")

    def train_queue_holds_the_command(self) -> bool:
        """RabbitMQ: the train command is back with the trainer, unacknowledged (not acked as a duplicate)."""
        return queue_counts(f"{self.namespace}.train") == (0, 1)


@pytest.fixture(params=sorted(BROKERS))
def faults(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Faults]:
    variant = request.param
    transport, url = BROKERS[variant]
    require_redis() if variant == "dramatiq-redis" else (require_rabbitmq(), require_rabbitmqctl())
    require_postgres()
    with postgres_schema() as database_url:
        env = {"SKIPPER_TRANSPORT": transport, "SKIPPER_BROKER_URL": url, "SKIPPER_DATABASE_URL": database_url,
               "SKIPPER_NAMESPACE": f"flt-{uuid.uuid4().hex[:10]}", "SKIPPER_LOG_LEVEL": "INFO",
               "SKIPPER_BUS__RETRY_BACKOFF_S": "0.2", "SKIPPER_BUS__HEARTBEAT_S": "3",
               "SKIPPER_HTTP__PREDICT_TIMEOUT_S": "3"}
        cluster = Cluster(env=env, workdir=tmp_path)
        try:
            yield Faults(variant, cluster)
        except BaseException:
            print(cluster.logs())
            raise
        finally:
            cluster.stop()


def finished(api: Role, task_id: str, timeout: float = 300) -> dict[str, Any]:
    return wait_task(api, task_id, timeout)


def assert_succeeded_exactly_once(api: Role, task_id: str) -> dict[str, Any]:
    result = finished(api, task_id)
    assert result["status"] == "succeeded", result
    versions = http("GET", f"{api.url}/models/diabetes")[1]["versions"]
    assert [v["task_id"] for v in versions] == [task_id], versions  # one version, from this task

    def succeeded_events() -> list[str]:
        return [e["task_id"] for e in http("GET", f"{api.url}/events?kind=task.succeeded&limit=1000")[1]["events"]]

    eventually(succeeded_events, timeout=10, what="task.succeeded recorded")  # events reach the log asynchronously
    assert succeeded_events() == [task_id]
    return result


def test_a_broker_drop_during_training_then_a_killed_trainer_loses_no_task(faults: Faults) -> None:
    api = faults.cluster.start("api", "api")
    trainer = faults.cluster.start("trainer", "trainer1")
    task_id = submit(api, **LONG_TRAINING)
    eventually(epoch_reached(api, task_id, 2), timeout=120, what="training under way")

    # The broker drops the trainer's connections mid-training; it reconnects and trains on.
    faults.drop("trainer")
    if not faults.redis:
        # The broker handed the command back to the trainer, which holds it unacknowledged
        # while its run goes on (acking it as a duplicate is what used to lose the task).
        eventually(faults.train_queue_holds_the_command, timeout=30, interval=0.5, what="command held by the trainer")
    assert task(api, task_id)["status"] == "running"

    # Then the trainer dies before the run ends, and a new one starts.
    trainer.kill()
    faults.cluster.start("trainer", "trainer2")

    result = assert_succeeded_exactly_once(api, task_id)
    assert result["attempts"] == 2  # the killed run, and the one that finished


def test_two_broker_drops_during_one_training_still_end_succeeded(faults: Faults) -> None:
    api = faults.cluster.start("api", "api")
    faults.cluster.start("trainer", "trainer")
    task_id = submit(api, **LONG_TRAINING)
    eventually(epoch_reached(api, task_id, 2), timeout=120, what="training under way")

    faults.drop("trainer")
    if not faults.redis:
        eventually(faults.train_queue_holds_the_command, timeout=30, interval=0.5, what="command held by the trainer")
    epoch = int(task(api, task_id)["progress"]["epoch"])
    eventually(epoch_reached(api, task_id, epoch + 2), timeout=60, what="training goes on after the first drop")
    faults.drop("trainer")
    if not faults.redis:
        eventually(faults.train_queue_holds_the_command, timeout=30, interval=0.5, what="command held again")
    assert task(api, task_id)["status"] == "running"

    result = assert_succeeded_exactly_once(api, task_id)
    assert result["attempts"] == 1  # a drop is not an attempt: the one run went on and finished
    time.sleep(1)  # nothing left to run: the queue is empty once the run settled
    if not faults.redis:
        assert queue_counts(f"{faults.namespace}.train") == (0, 0)


def restart(cluster: Cluster, server: Role, name: str) -> tuple[Role, float, float]:
    """SIGTERM `server`, wait for it to leave, start a new one; (it, seconds to leave, seconds to be ready)."""
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    # uvicorn re-raises the signal once it has shut down cleanly, hence -SIGTERM
    assert server.proc.wait(timeout=60) in (0, -signal.SIGTERM), server.tail()
    assert "Application shutdown complete" in server.log.read_text(), server.tail()
    left = time.monotonic() - started
    started = time.monotonic()
    replacement = cluster.start("server", name)
    eventually(lambda: replacement.models() == {"diabetes": 1}, timeout=120, what=f"{name} ready with diabetes v1")
    return replacement, left, time.monotonic() - started


def test_a_rolling_restart_of_two_servers_under_load_fails_no_prediction(faults: Faults) -> None:
    cluster = faults.cluster
    api = cluster.start("api", "api")
    cluster.start("trainer", "trainer")
    servers = [cluster.start("server", "server1"), cluster.start("server", "server2")]
    assert train(api, epochs=2)["status"] == "succeeded"
    eventually(lambda: all(s.models() == {"diabetes": 1} for s in servers), what="both servers serve v1")

    load = PredictLoad(api, clients=16, max_requests=200_000, max_seconds=240).start()
    try:
        eventually(lambda: load.ok >= 200, timeout=60, what="predictions flowing")
        timings = []
        for i, server in enumerate(servers):
            replacement, left, ready = restart(cluster, server, f"server{i + 1}-restarted")
            timings.append((left, ready))
            target = load.ok + 200
            eventually(lambda t=target: load.ok >= t, timeout=60, what="predictions flowing after the restart")
            servers[i] = replacement
    finally:
        load.stop()
    outcomes = Counter(s.outcome for s in load.samples)
    print(f"\n[{faults.variant}] rolling restart under {load.clients} clients: {len(load.samples)} "
          f"predictions, outcomes {dict(outcomes)}; per server (s to leave, s to be ready): {timings}")
    assert set(outcomes) == {"200"}, load.details
    served = 'skipper_served_predictions_total{model="diabetes"}'
    assert all(s.metric(served) > 0 for s in servers), "both restarted servers took requests"


@pytest.mark.parametrize("faults", ["rabbitmq"], indirect=True)
def test_a_server_that_missed_an_announcement_converges_without_a_reconnect(faults: Faults) -> None:
    cluster = faults.cluster
    api = cluster.start("api", "api")
    cluster.start("trainer", "trainer")
    server = cluster.start("server", "server", extra_env={"SKIPPER_SERVING__RESYNC_S": "1"})
    assert train(api, epochs=1)["status"] == "succeeded"
    assert train(api, epochs=1)["status"] == "succeeded"
    eventually(lambda: server.models() == {"diabetes": 2}, what="server serves v2")
    connections = rabbitmq_connections(faults.prefix("server"))

    # A rollback recorded in the registry whose announcement is lost (it is never published)
    database = Database(cluster.env["SKIPPER_DATABASE_URL"])
    try:
        ModelRegistry(database).deploy("diabetes", 1)
    finally:
        database.dispose()

    # The server finds it at its next re-check, on the same connections (no reconnect healed it)
    eventually(lambda: server.models() == {"diabetes": 1}, timeout=20, what="server converged on v1")
    assert rabbitmq_connections(faults.prefix("server")) == connections
    status, body = http("POST", f"{api.url}/models/diabetes/predict", {"instances": [ROW]})
    assert status == 200 and body["model_version"] == 1, body
