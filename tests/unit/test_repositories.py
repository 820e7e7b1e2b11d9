"""Tasks, the model registry and events on SQLite and on the local PostgreSQL."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from skipper.core.db import Database
from skipper.core.errors import NotFound
from skipper.core.repositories import EventRepository, ModelRegistry, TaskRepository
from tests.services import POSTGRES_URL, require_postgres


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        db = Database(f"sqlite:///{tmp_path / 'skipper.db'}")
        db.create_schema()
        yield db
        db.dispose()
        return
    require_postgres()
    schema = f"skipper_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    db = Database(f"{POSTGRES_URL}?options=-csearch_path%3D{schema}")
    db.create_schema()
    yield db
    db.dispose()
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


def test_a_task_moves_from_queued_to_running_to_succeeded_and_stays_finished(database: Database) -> None:
    tasks = TaskRepository(database)
    tasks.create("t1", "diabetes", {"epochs": 3}, "corr")
    assert tasks.get("t1").status == "queued"
    assert tasks.claim("t1") is True
    assert tasks.progress("t1", {"epoch": 1, "epochs": 3, "loss": 0.5})
    assert tasks.finish("t1", "succeeded", result={"model": "diabetes", "model_version": 1})
    task = tasks.get("t1")
    assert (task.status, task.attempts, task.progress["epoch"]) == ("succeeded", 1, 1)  # type: ignore[index]
    assert task.result == {"model": "diabetes", "model_version": 1}
    assert task.created_at and task.started_at and task.finished_at
    # a finished task is never re-run or overwritten
    assert tasks.claim("t1") is False
    assert tasks.finish("t1", "failed", error={"message": "late"}) is False
    assert tasks.get("t1").status == "succeeded"


def test_a_redelivered_task_counts_its_attempts_and_a_cancelled_one_is_not_claimed(database: Database) -> None:
    tasks = TaskRepository(database)
    tasks.create("t2", "wine", {}, "c")
    assert tasks.claim("t2") and tasks.claim("t2")
    assert tasks.get("t2").attempts == 2
    tasks.create("t3", "wine", {}, "c")
    assert tasks.finish("t3", "cancelled")
    assert tasks.claim("t3") is False


def test_a_cancel_racing_the_trainers_claim_is_never_overwritten(database: Database) -> None:
    """A DELETE that lands as a trainer claims the task: one of them wins, and the winner's status stays."""
    tasks = TaskRepository(database)
    outcomes: dict[str, bool] = {}
    for i in range(60):
        task_id = f"race-{i}"
        tasks.create(task_id, "diabetes", {}, "c")
        start = threading.Barrier(2)

        def run(name: str, step: object, task_id: str = task_id, start: threading.Barrier = start) -> None:
            start.wait()
            outcomes[name] = step()  # type: ignore[operator]

        threads = [threading.Thread(target=run, args=("claim", lambda t=task_id: tasks.claim(t))),
                   threading.Thread(target=run, args=("cancel", lambda t=task_id: tasks.finish(t, "cancelled")))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        status = tasks.get(task_id).status
        assert outcomes["cancel"] is True, "a task not yet finished can always be cancelled"
        assert status == "cancelled", (i, outcomes, status)  # a claim after the cancel changed nothing
        assert outcomes["claim"] is (tasks.get(task_id).attempts == 1)


def test_tasks_list_filters_and_pages(database: Database) -> None:
    tasks = TaskRepository(database)
    for i in range(5):
        tasks.create(f"d{i}", "diabetes", {}, "c")
    tasks.create("w0", "wine", {}, "c")
    tasks.finish("d0", "failed", error={"message": "x"})
    page, total = tasks.list(workflow="diabetes", limit=2, offset=0)
    assert total == 5 and len(page) == 2
    failed, total_failed = tasks.list(status="failed")
    assert total_failed == 1 and failed[0].task_id == "d0"
    with pytest.raises(NotFound):
        tasks.get("missing")


def test_the_registry_numbers_versions_and_the_newest_deployment_is_production(database: Database) -> None:
    registry = ModelRegistry(database)
    v1, created = registry.add_version(model="m", sha256="a" * 64, size=10, path="/a", metrics={"rmse": 2.0},
                                       metadata={"features": ["x"]}, task_id="t1")
    v2, _ = registry.add_version(model="m", sha256="b" * 64, size=11, path="/b", metrics={"rmse": 1.0},
                                 metadata={"features": ["x"]}, task_id="t2")
    assert created and (v1.version, v2.version) == (1, 2)
    assert v2.seq is not None and v1.seq is not None and v2.seq > v1.seq
    assert [v.version for v in registry.production()] == [2]
    # the same task's artifact delivered twice registers once
    again, created_again = registry.add_version(model="m", sha256="b" * 64, size=11, path="/b", metrics={},
                                                metadata={}, task_id="t2")
    assert (again.version, created_again) == (2, False)
    # rollback: version 1 becomes production with a newer seq
    rolled = registry.deploy("m", 1)
    assert rolled.version == 1 and rolled.seq is not None and rolled.seq > v2.seq
    production = registry.production("m")
    assert [(p.version, p.seq) for p in production] == [(1, rolled.seq)]
    assert [(v.version, v.production) for v in registry.versions("m")] == [(1, True), (2, False)]
    assert registry.models() == [{"model": "m", "versions": 2, "latest_version": 2, "production_version": 1}]
    with pytest.raises(NotFound):
        registry.deploy("m", 9)
    with pytest.raises(NotFound):
        registry.versions("absent")


def test_concurrent_registrations_never_collide_on_a_version_number(database: Database) -> None:
    # Two api replicas (threads here, each with its own sessions) registering at once.
    registry = ModelRegistry(database)
    errors: list[BaseException] = []

    def register(i: int) -> None:
        try:
            registry.add_version(model="race", sha256=f"{i:064d}", size=1, path=f"/{i}", metrics={}, metadata={},
                                 task_id=f"race-{i}", attempts=20)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=register, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(v.version for v in registry.versions("race")) == list(range(1, 9))


def test_events_are_recorded_and_listed_per_task(database: Database) -> None:
    events = EventRepository(database)
    events.add(kind="task.queued", source="api", task_id="t1", correlation_id="c1", fields={"workflow": "diabetes"})
    events.add(kind="task.progress", source="trainer", task_id="t1", correlation_id="c1", fields={"epoch": 1})
    events.add(kind="model.installed", source="server", task_id=None, correlation_id=None, fields={})
    listed = events.list(task_id="t1")
    assert [e["kind"] for e in listed] == ["task.queued", "task.progress"]
    assert listed[1]["fields"] == {"epoch": 1} and listed[0]["correlation_id"] == "c1"
    assert [e["kind"] for e in events.list(kind="model.installed")] == ["model.installed"]
