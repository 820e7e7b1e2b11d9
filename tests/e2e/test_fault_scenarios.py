"""The fault suite's scenarios as bounded tests (the same code as `benchmarks/faults.py`, see tests/faultkit.py).

Whole-broker faults hit a private RabbitMQ or Redis this module starts on free ports, never the
shared ones. One deployment (api, trainer, two servers) on the private RabbitMQ serves the
scenarios in turn, each under prediction load with trainings submitted over it. Marked `faults`
and `slow`: `pytest -m faults` runs them alone.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import faultkit
from tests.faultkit import Deployment, Outcome, PrivateRabbitMQ, PrivateRedis
from tests.services import CI, require_postgres

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.multiprocess]

# Short scenarios: what a test must prove, not a benchmark's volume.
QUICK = {"clients": 6, "warm_s": 1.0, "after_s": 2.0, "train_every_s": 2.0, "trainings": 3}
RECOVERY_TARGET_S = 5.0


def _require_private_rabbitmq() -> None:
    if not faultkit.rabbitmq_available():
        if CI:
            raise RuntimeError("the fault tests need rabbitmq-server, run as root, in CI")
        pytest.skip("rabbitmq-server (as root) is not available")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("faults")


@pytest.fixture(scope="module")
def rabbit(workdir: Path) -> Iterator[PrivateRabbitMQ]:
    _require_private_rabbitmq()
    broker = PrivateRabbitMQ(workdir).start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="module")
def dep(rabbit: PrivateRabbitMQ, workdir: Path) -> Iterator[Deployment]:
    require_postgres()
    with faultkit.deployment("rabbitmq", rabbit, workdir / "rabbitmq") as deployment:
        deployment.first_model()
        yield deployment


def assert_healthy(out: Outcome, *, failures_allowed: bool = True) -> None:
    """No 500, none hung, recovery within the target, every accepted task succeeded exactly once."""
    print(out.line())
    assert out.errors_500 == 0, out.line()
    assert out.hung == 0, out.line()
    if not failures_allowed:
        assert out.failures == 0, out.line()
    assert out.recover_s is not None and out.recover_s <= RECOVERY_TARGET_S, out.line()
    assert set(out.failed) <= {"503", "504"}, out.line()  # fast, typed failures only
    assert out.accepted > 0 and out.succeeded == out.accepted, out.line()


def test_the_broker_closing_every_connection(dep: Deployment, rabbit: PrivateRabbitMQ) -> None:
    assert_healthy(faultkit.scenario_close_all(dep, rabbit, **QUICK))


def test_rabbitmq_stopped_and_started_again(dep: Deployment, rabbit: PrivateRabbitMQ) -> None:
    out = faultkit.scenario_broker_outage(dep, rabbit, seconds=5, **QUICK)
    assert_healthy(out)
    assert out.failures > 0  # the outage was felt: those requests failed fast instead of hanging
    assert out.slowest_failure_s <= 6, out.line()


def test_postgres_ending_the_api_sessions(dep: Deployment) -> None:
    out = faultkit.scenario_postgres_terminate(dep, **QUICK)
    assert out.notes[-1] != "0 sessions terminated", out.line()
    assert_healthy(out, failures_allowed=False)  # the pool's pre-ping replaces the dead sessions


def test_a_server_killed_under_load(dep: Deployment) -> None:
    out = faultkit.scenario_server_kill(dep, **QUICK)
    assert_healthy(out)
    # Failures are the requests the killed server held, answered 504 within the predict timeout; none later.
    if out.failed_after_s is not None:
        assert out.failed_after_s <= 4, out.line()


def test_trainers_killed_mid_training(dep: Deployment) -> None:
    out = faultkit.scenario_trainer_kills(dep, kills=int(os.environ.get("SKIPPER_FAULT_KILLS", "3")))
    print(out.line())
    assert out.unfinished == 0 and out.succeeded == out.accepted, out.line()


def test_resident_memory_stays_flat_over_swaps(dep: Deployment) -> None:
    before, after, highest = faultkit.scenario_swaps(dep, swaps=20)
    print(f"server RSS over 20 swaps: {before:.0f} -> {after:.0f} MB (highest {highest:.0f})")
    assert after - before < 60, (before, after, highest)


@pytest.mark.parametrize("transport", ["dramatiq-rabbitmq", "dramatiq-redis"])
def test_dramatiq_brokers_dropping_every_connection(transport: str, workdir: Path) -> None:
    require_postgres()
    if transport == "dramatiq-redis":
        if not faultkit.redis_available():
            if CI:
                raise RuntimeError("redis-server is needed for the fault tests in CI")
            pytest.skip("redis-server is not installed")
        broker: PrivateRabbitMQ | PrivateRedis = PrivateRedis(workdir / transport).start()
    else:
        _require_private_rabbitmq()
        broker = PrivateRabbitMQ(workdir / transport).start()
    try:
        with faultkit.deployment("dramatiq", broker, workdir / f"dep-{transport}", servers=1) as deployment:
            deployment.first_model()
            if isinstance(broker, PrivateRedis):
                out = faultkit.scenario_redis_restart(deployment, broker, **QUICK)
            else:
                out = faultkit.scenario_close_all(deployment, broker, **QUICK)
                # The api's reply queue went with its connection: callers hear so at once (503),
                # none waits out its timeout for a reply that cannot come.
                assert "504" not in out.failed, out.line()
            assert_healthy(out)
    finally:
        broker.stop()
