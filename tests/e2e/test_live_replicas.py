"""Two api replicas (sharing PostgreSQL), a trainer and two servers as real processes over RabbitMQ:
a task's event stream on one api replica shows the progress of a task trained through the other, and
the replica list shows both servers, then only one after the other is killed."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import httpx_sse
import pytest

from tests.processes import Cluster, eventually, http, postgres_schema
from tests.services import RABBITMQ_URL, require_postgres, require_rabbitmq

pytestmark = [pytest.mark.multiprocess, pytest.mark.tensorflow]

PERIOD = 0.5  # serving.announce_s: a server killed is gone from the list within three of these


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    require_rabbitmq()
    require_postgres()
    with postgres_schema() as database_url:
        env = {"SKIPPER_TRANSPORT": "rabbitmq", "SKIPPER_BROKER_URL": RABBITMQ_URL, "SKIPPER_DATABASE_URL": database_url,
               "SKIPPER_NAMESPACE": f"live-{uuid.uuid4().hex[:10]}", "SKIPPER_SERVING__ANNOUNCE_S": str(PERIOD),
               "SKIPPER_BUS__RETRY_BACKOFF_S": "0.2"}
        deployment = Cluster(env=env, workdir=tmp_path)
        try:
            yield deployment
        except BaseException:
            print(deployment.logs())
            raise
        finally:
            deployment.stop()


def test_a_stream_on_one_api_replica_follows_a_task_trained_through_the_other(cluster: Cluster) -> None:
    api1 = cluster.start("api", "api1")
    api2 = cluster.start("api", "api2")
    cluster.start("trainer", "trainer")
    server1 = cluster.start("server", "server1")
    server2 = cluster.start("server", "server2")

    # Given both servers listed by either api replica
    def listed(api_url: str) -> dict[str, dict[str, object]]:
        status, body = http("GET", f"{api_url}/servers")
        assert status == 200, body
        return {s["id"]: s for s in body["servers"]}

    ids = eventually(lambda: set(listed(api2.url)) if len(listed(api2.url)) == 2 else None, what="two servers listed")
    assert all(s["role"] == "server" for s in listed(api1.url).values())

    # When a task is trained through api1 while a client follows it on api2
    status, body = http("POST", f"{api1.url}/workflows/diabetes/train", {"params": {"epochs": 3}})
    assert status == 202, body
    task_id = body["task_id"]
    events = []
    started = time.monotonic()
    with httpx.Client(timeout=httpx.Timeout(10, read=60)) as client, \
            httpx_sse.connect_sse(client, "GET", f"{api2.url}/tasks/{task_id}/stream") as source:
        for message in source.iter_sse():  # ends when the server ends the stream
            if message.data:  # not a heartbeat
                events.append(json.loads(message.data))
            assert time.monotonic() - started < 180, events

    # Then api2's stream had every epoch's progress, in order, and ended once a server installed the version
    kinds = [e["kind"] for e in events]
    # Ids follow arrival at the events table: the api's `task.queued` and the trainer's `task.started`
    # travel separately over the bus, so either may be stored first.
    assert {"task.queued", "task.started", "task.succeeded"} <= set(kinds), kinds
    assert [e["fields"]["epoch"] for e in events if e["kind"] == "task.progress"] == [1, 2, 3]
    assert "model.installed" in kinds, kinds
    assert [int(e["id"]) for e in events] == sorted(int(e["id"]) for e in events)
    assert len({e["id"] for e in events}) == len(events)

    # And when one server is killed, it leaves the list within three announce periods; the other stays
    eventually(lambda: all(s["models"] == {"diabetes": 1} for s in listed(api1.url).values()), what="both serve v1")
    server2.kill()
    gone = eventually(lambda: listed(api1.url) if len(listed(api1.url)) == 1 else None, timeout=3 * PERIOD + 5,
                      interval=0.1, what="the killed server dropped")
    [survivor] = gone.values()
    assert survivor["id"] in ids and survivor["models"] == {"diabetes": 1}
    assert server1.proc.poll() is None
