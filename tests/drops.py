"""Broker-side faults aimed at one test's own processes, never at anyone else's.

Other tests (and other people) share the RabbitMQ and Redis on this machine, so a test never
closes every connection or restarts a broker: it closes the connections its own processes named.
Skipper names them `skipper:<namespace>:<role>:...` (`BusOptions.client_name`): RabbitMQ shows the
name in the connection's client properties, Redis in `CLIENT LIST`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
import redis

from tests.services import CI, REDIS_URL

_CONNECTION_NAME = re.compile(r'\{"connection_name","([^"]*)"\}')


def require_rabbitmqctl() -> None:
    if shutil.which("rabbitmqctl") is None or os.geteuid() != 0:
        if CI:
            raise RuntimeError("rabbitmqctl (as root) is needed in CI for the broker-fault tests")
        pytest.skip("rabbitmqctl is not available as root")


def rabbitmqctl(*args: str) -> str:
    proc = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, f"rabbitmqctl {' '.join(args)} failed: {proc.stderr}"
    return proc.stdout


def rabbitmq_connections(prefix: str) -> dict[str, str]:
    """Connection pid -> client-given name, for the connections whose name starts with `prefix`."""
    listing = rabbitmqctl("list_connections", "pid", "client_properties", "-q", "--no-table-headers")
    found = {}
    for line in listing.splitlines():
        match = _CONNECTION_NAME.search(line)
        if match and match.group(1).startswith(prefix):
            found[line.split("\t", 1)[0]] = match.group(1)
    return found


def drop_rabbitmq(prefix: str) -> int:
    """Close, from the broker side, every connection whose client name starts with `prefix`."""
    pids = list(rabbitmq_connections(prefix))
    for pid in pids:
        # A connection may have gone by itself meanwhile: that is not a failure of the test.
        subprocess.run(["rabbitmqctl", "close_connection", pid, "skipper fault test: broker-side close"],
                       capture_output=True, timeout=60, check=False)
    return len(pids)


def queue_counts(queue: str) -> tuple[int, int] | None:
    """(ready, unacknowledged) messages of a RabbitMQ queue, None when it does not exist."""
    listing = rabbitmqctl("list_queues", "name", "messages_ready", "messages_unacknowledged", "-q", "--no-table-headers")
    for line in listing.splitlines():
        name, ready, unacked = line.split("\t")
        if name == queue:
            return int(ready), int(unacked)
    return None


def redis_clients(prefix: str) -> list[int]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        return [int(c["id"]) for c in client.client_list() if str(c.get("name", "")).startswith(prefix)]
    finally:
        client.close()


def drop_redis(prefix: str) -> int:
    """`CLIENT KILL` every Redis client connection whose name starts with `prefix`."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        ids = [int(c["id"]) for c in client.client_list() if str(c.get("name", "")).startswith(prefix)]
        for client_id in ids:
            client.client_kill_filter(_id=str(client_id))
        return len(ids)
    finally:
        client.close()
