"""The broker floor the benchmark prints beside the RabbitMQ splits: real round trips through the local RabbitMQ."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import ModuleType

import pika
import pika.exceptions
import pytest

from tests.services import RABBITMQ_URL, require_rabbitmq

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "broker_floor.py"


@pytest.fixture
def floor() -> ModuleType:
    require_rabbitmq()
    spec = importlib.util.spec_from_file_location("broker_floor", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def queue_exists(name: str) -> bool:
    with pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL)) as conn:
        try:
            conn.channel().queue_declare(name, passive=True)
            return True
        except pika.exceptions.ChannelClosedByBroker as exc:
            assert exc.reply_code == 404
            return False


def test_round_trips_through_rabbitmq_and_leave_no_queue(floor: ModuleType) -> None:
    queue = f"bench-floor-test-{uuid.uuid4().hex[:8]}"
    result = floor.run(RABBITMQ_URL, duration=0.5, queue=queue)  # each round trip asserts its echo came back unchanged
    assert result["round_trips_per_s"] > 50
    assert 0 < result["p50_ms"] <= result["p99_ms"] < 1000
    cpu = result["broker_cpu_us"]
    assert cpu is None or cpu > 0  # the broker worked for each round trip (None: beam.smp is not visible here)
    deadline = time.monotonic() + 10  # the broker deletes it once it has seen the echo server's connection close
    while queue_exists(queue):
        assert time.monotonic() < deadline, f"{queue} outlived the benchmark"
        time.sleep(0.1)


def test_prints_one_json_object_for_the_benchmark() -> None:
    require_rabbitmq()
    out = subprocess.run([sys.executable, str(SCRIPT), "--url", RABBITMQ_URL, "--duration", "0.3", "--json"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    result = json.loads(out)
    assert set(result) == {"round_trips_per_s", "p50_ms", "p99_ms", "broker_cpu_us"}
    assert result["p50_ms"] > 0
