"""The training module on a real in-memory bus, against a fake registry (the api's side).

TensorFlow and Keras are imported inside the tests that train, never at collection.
"""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from skipper.core import artifacts, contracts
from skipper.core.bus import BusOptions
from skipper.core.events import EventEmitter
from skipper.core.messages import Message
from skipper.core.settings import Settings, load_settings
from skipper.modules.training import TrainingModule
from skipper.modules.training.jobs import TrainJob, TrainResult
from skipper.transports.memory import MemoryTransport

DIABETES_FEATURES = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]


@dataclass
class FakeRegistry:
    """The api's side of the `registry` queue: answers claims and records what the trainer sends."""

    proceed: bool = True
    received: list[Message] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)

    async def handle(self, msg: Message) -> Message | None:
        self.received.append(msg)
        if msg.type == contracts.TASK_CLAIM:
            return msg.reply({"proceed": self.proceed})
        return None

    async def record_event(self, msg: Message) -> None:
        self.events.append(msg.data)

    def of(self, type_: str) -> list[Message]:
        return [m for m in self.received if m.type == type_]

    def event_kinds(self) -> list[str]:
        return [e["kind"] for e in self.events]


@dataclass
class Harness:
    bus: MemoryTransport
    registry: FakeRegistry
    module: TrainingModule
    settings: Settings

    async def train(self, workflow: str, task_id: str = "task-1", **params: Any) -> None:
        resolved = self.settings.workflows[workflow].params.model_copy(update=params).model_dump(mode="json")
        await self.bus.send(
            contracts.TRAIN,
            Message(
                type=contracts.TRAIN_COMMAND,
                body={"task_id": task_id, "workflow": workflow, "params": resolved},
                correlation_id=f"corr-{task_id}",
            ),
        )


@asynccontextmanager
async def trainer(tmp_path: Path, workflows: dict[str, Any] | None = None, *, proceed: bool = True) -> AsyncIterator[Harness]:
    settings = load_settings(
        environ={},
        # limits.max_epochs raised: some tests train "forever" (5000 epochs) to cancel or stop mid-way
        overrides={"data_dir": str(tmp_path), "workflows": workflows or {}, "bus": {"request_timeout_s": 5},
                   "limits": {"max_epochs": 100_000}},
    )
    bus = MemoryTransport(BusOptions(namespace="test", max_retries=2, retry_backoff_s=0.02, retry_backoff_max_s=0.05))
    registry = FakeRegistry(proceed=proceed)
    bus.consume(contracts.REGISTRY, registry.handle)
    bus.consume(contracts.EVENTS, registry.record_event)
    module = TrainingModule(settings=settings, bus=bus, events=EventEmitter(bus, "trainer"))
    module.register(bus)
    await bus.start()
    await module.start()
    try:
        yield Harness(bus, registry, module, settings)
    finally:
        await module.stop()
        await bus.close()


async def eventually(predicate: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.01)


def unpack(archive: bytes) -> tuple[list[tarfile.TarInfo], dict[str, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        members = tar.getmembers()
        files = {m.name: tar.extractfile(m).read() for m in members if m.isfile()}  # type: ignore[union-attr]
    return members, files


def load_model(archive: bytes, tmp_path: Path) -> Any:
    import keras

    _, files = unpack(archive)
    path = tmp_path / "loaded.keras"
    path.write_bytes(files[artifacts.MODEL_FILE])
    return keras.saving.load_model(path, safe_mode=True)


# --- without TensorFlow ------------------------------------------------------------------------


def test_importing_the_training_module_does_not_import_tensorflow() -> None:
    code = (
        "import sys, skipper.modules.training, skipper.modules.training.keras_trainer; "
        "heavy = [m for m in ('tensorflow', 'keras') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


async def test_a_claim_answered_with_no_proceed_trains_nothing(tmp_path: Path) -> None:
    async with trainer(tmp_path, proceed=False) as h:
        await h.train("diabetes")
        await eventually(lambda: bool(h.registry.of(contracts.TASK_CLAIM)))
        await asyncio.sleep(0.2)

        assert [m.type for m in h.registry.received] == [contracts.TASK_CLAIM]
        claim = h.registry.received[0]
        assert claim.data == {"task_id": "task-1", "attempt": 0}
        assert claim.correlation_id == "corr-task-1"
        assert "task.started" not in h.registry.event_kinds()
        assert h.module.readiness()["training"]["running"] == []


async def test_a_csv_workflow_with_a_missing_column_fails_once_naming_the_column(tmp_path: Path) -> None:
    (tmp_path / "houses.csv").write_text("rooms,area,price\n3,70,100\n4,90,150\n5,120,200\n", encoding="utf-8")
    workflows = {
        "houses": {
            "model": "houses",
            "kind": "regression",
            "dataset": {"source": "csv", "path": "houses.csv", "features": ["rooms", "garden"], "targets": ["price"]},
        }
    }
    async with trainer(tmp_path, workflows) as h:
        await h.train("houses")
        await eventually(lambda: bool(h.registry.of(contracts.TASK_FAILED)))
        await asyncio.sleep(0.2)  # a retry would claim again within the 0.02s backoff

        failed = h.registry.of(contracts.TASK_FAILED)
        assert len(failed) == 1 and len(h.registry.of(contracts.TASK_CLAIM)) == 1
        error = failed[0].data["error"]
        assert failed[0].data["task_id"] == "task-1" and failed[0].correlation_id == "corr-task-1"
        assert error["code"] == "validation_failed" and "'garden'" in error["message"]
        assert error["details"]["missing"] == ["garden"]
        assert not h.registry.of(contracts.MODEL_ARTIFACT) and not h.bus.dead_letters
        assert "task.failed" in h.registry.event_kinds()


async def test_an_unknown_workflow_or_bad_params_fail_the_task(tmp_path: Path) -> None:
    async with trainer(tmp_path) as h:
        await h.bus.send(
            contracts.TRAIN,
            Message(type=contracts.TRAIN_COMMAND, body={"task_id": "t-unknown", "workflow": "nope", "params": {}}),
        )
        await h.bus.send(
            contracts.TRAIN,
            Message(
                type=contracts.TRAIN_COMMAND,
                body={"task_id": "t-params", "workflow": "diabetes", "params": {"epochs": 0}},
            ),
        )
        await eventually(lambda: len(h.registry.of(contracts.TASK_FAILED)) == 2)

        errors = {m.data["task_id"]: m.data["error"] for m in h.registry.of(contracts.TASK_FAILED)}
        assert errors["t-unknown"]["code"] == "not_found" and "'nope'" in errors["t-unknown"]["message"]
        assert errors["t-params"]["code"] == "validation_failed" and "epochs" in errors["t-params"]["message"]


def exploding_trainer(job: TrainJob) -> TrainResult:
    """A plugged-in trainer with a bug: an unexpected error, not a SkipperError."""
    raise RuntimeError("boom")


async def test_an_unexpected_trainer_error_is_retried_then_dead_lettered(tmp_path: Path) -> None:
    workflows = {
        "buggy": {
            "model": "buggy",
            "kind": "regression",
            "dataset": {"source": "sklearn", "name": "diabetes"},
            "trainer": "tests.modules.test_training_module:exploding_trainer",
        }
    }
    async with trainer(tmp_path, workflows) as h:
        await h.train("buggy")
        await eventually(lambda: bool(h.bus.dead_letters.get(contracts.TRAIN)))

        claims = h.registry.of(contracts.TASK_CLAIM)
        assert [c.data["attempt"] for c in claims] == [0, 1, 2]
        assert not h.registry.of(contracts.TASK_FAILED)  # the api reports it from the dead letter


GATE = threading.Event()
GATED_RUNS: list[str] = []


def gated_trainer(job: TrainJob) -> TrainResult:
    """A plug-in trainer that runs until the test opens the gate, then stops as cancelled or raises."""
    GATED_RUNS.append(job.task_id)
    if not GATE.wait(30):
        raise TimeoutError("the test never opened the gate")
    if job.params.epochs == 2:  # the test's way of asking for a run that fails unexpectedly
        raise RuntimeError("the run died")
    return TrainResult(features=[], targets=[], classes=None, cancelled=True)


GATED = {"gated": {"model": "gated", "kind": "regression", "dataset": {"source": "sklearn", "name": "diabetes"},
                   "trainer": "tests.modules.test_training_module:gated_trainer"}}


def command(task_id: str, epochs: int) -> Message:
    return Message(type=contracts.TRAIN_COMMAND, body={"task_id": task_id, "workflow": "gated", "params": {"epochs": epochs}})


@pytest.mark.parametrize("run_ends", ["with an outcome", "by raising"])
async def test_a_second_command_for_a_task_training_here_is_held_until_that_run_ends(tmp_path: Path, run_ends: str) -> None:
    GATE.clear()
    GATED_RUNS.clear()
    epochs = 1 if run_ends == "with an outcome" else 2
    async with trainer(tmp_path, GATED) as h:
        await h.bus.send(contracts.TRAIN, command("task-9", epochs))
        await eventually(lambda: GATED_RUNS == ["task-9"])
        # A second command for the same task (as a broker drop can produce) reaches the handler.
        second = asyncio.create_task(h.module._on_train(command("task-9", epochs)))
        await asyncio.sleep(0.3)
        # It is held (the bus does not acknowledge it) and runs nothing while the first run goes on.
        assert not second.done()
        assert len(h.registry.of(contracts.TASK_CLAIM)) == 1
        GATE.set()
        if run_ends == "with an outcome":
            # The run ended with an outcome for the task: the held command is done, without a second run.
            assert await asyncio.wait_for(second, 10) is None
            assert GATED_RUNS == ["task-9"] and len(h.registry.of(contracts.TASK_CANCEL_ACK)) == 1
        else:
            # The run raised: it did not finish the task, so the held command claims it and runs it.
            with pytest.raises(RuntimeError, match="the run died"):
                await asyncio.wait_for(second, 10)
            assert GATED_RUNS[:2] == ["task-9", "task-9"]


# --- with TensorFlow ---------------------------------------------------------------------------


@pytest.mark.tensorflow
async def test_a_diabetes_command_reports_each_epoch_then_sends_a_verified_artifact(tmp_path: Path) -> None:
    async with trainer(tmp_path) as h:
        await h.train("diabetes", epochs=3, early_stopping=None)
        await eventually(lambda: bool(h.registry.of(contracts.MODEL_ARTIFACT)))

        types = [m.type for m in h.registry.received]
        assert types == [contracts.TASK_CLAIM] + [contracts.TASK_PROGRESS] * 3 + [contracts.MODEL_ARTIFACT]
        progress = [m.data for m in h.registry.of(contracts.TASK_PROGRESS)]
        assert [(p["epoch"], p["epochs"]) for p in progress] == [(1, 3), (2, 3), (3, 3)]
        assert all(p["task_id"] == "task-1" and isinstance(p["loss"], float) for p in progress)
        assert {"val_loss", "val_mae"} <= set(progress[0]["metrics"])
        assert all(m.correlation_id == "corr-task-1" for m in h.registry.received)

        artifact = h.registry.of(contracts.MODEL_ARTIFACT)[0]
        archive = artifact.body
        assert isinstance(archive, bytes)
        assert artifact.headers["sha256"] == artifacts.sha256_of(archive)
        assert artifact.headers["task_id"] == "task-1" and artifact.headers["model"] == "diabetes"
        members, files = unpack(archive)
        assert [m.name for m in members] == [artifacts.MODEL_FILE, artifacts.METADATA_FILE]
        assert all(m.isreg() for m in members)
        metadata = json.loads(files[artifacts.METADATA_FILE])
        assert metadata == artifact.headers["metadata"]
        assert metadata["features"] == DIABETES_FEATURES and metadata["targets"] == ["target"]
        assert metadata["name"] == "diabetes" and metadata["workflow"] == "diabetes"
        assert metadata["kind"] == "regression" and metadata["classes"] is None and metadata["task_id"] == "task-1"
        assert {"rmse", "mae"} <= set(metadata["metrics"]) and metadata["metrics"]["rmse"] > 0
        assert metadata["params"]["epochs"] == 3
        # What servers size their memory by: the parameter count and the model file's size
        assert metadata["parameters"] == load_model(archive, tmp_path).count_params() > 0
        assert metadata["model_bytes"] == len(files[artifacts.MODEL_FILE])
        assert {"tensorflow", "keras", "numpy", "scikit-learn", "python", "skipper"} <= set(metadata["library_versions"])
        assert "version" not in metadata

        kinds = h.registry.event_kinds()
        assert kinds.count("task.progress") == 3 and kinds.index("task.started") < kinds.index("task.progress")

        # Predictions come out in the target's own units (the scale is inside the model).
        from sklearn.datasets import load_diabetes

        data = load_diabetes()
        predicted = np.asarray(load_model(archive, tmp_path)(data.data.astype("float32")))
        assert predicted.shape == (442, 1)
        assert abs(float(predicted.mean()) - float(data.target.mean())) < 60


@pytest.mark.tensorflow
async def test_a_wine_classifier_reports_accuracy_and_predicts_from_raw_features(tmp_path: Path) -> None:
    async with trainer(tmp_path) as h:
        await h.train("wine", epochs=30, early_stopping=None)
        await eventually(lambda: bool(h.registry.of(contracts.MODEL_ARTIFACT)))

        artifact = h.registry.of(contracts.MODEL_ARTIFACT)[0]
        metadata = artifact.headers["metadata"]
        assert metadata["kind"] == "classification"
        assert metadata["classes"] == ["class_0", "class_1", "class_2"]
        assert 0.8 <= metadata["metrics"]["accuracy"] <= 1.0
        assert "accuracy" in h.registry.of(contracts.TASK_PROGRESS)[-1].data["metrics"]
        assert "val_accuracy" in h.registry.of(contracts.TASK_PROGRESS)[-1].data["metrics"]

        # Raw wine rows (proline ~1000, hue ~1): only a model that normalises inside gets these right.
        from sklearn.datasets import load_wine

        data = load_wine()
        assert float(data.data[:, 12].max()) > 1000
        archive = artifact.body
        assert isinstance(archive, bytes)
        proba = np.asarray(load_model(archive, tmp_path)(data.data.astype("float32")))
        assert proba.shape == (178, 3)
        np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-4)
        assert float(np.mean(proba.argmax(axis=1) == data.target)) > 0.9


@pytest.mark.tensorflow
async def test_linnerud_trains_a_multi_output_regressor_with_per_target_metrics(tmp_path: Path) -> None:
    workflows = {
        "fitness": {
            "model": "fitness",
            "kind": "regression",
            "dataset": {"source": "sklearn", "name": "linnerud"},
            "params": {"epochs": 2, "hidden_units": [8], "batch_size": 8},
        }
    }
    async with trainer(tmp_path, workflows) as h:
        await h.train("fitness")
        await eventually(lambda: bool(h.registry.of(contracts.MODEL_ARTIFACT)))

        metadata = h.registry.of(contracts.MODEL_ARTIFACT)[0].headers["metadata"]
        assert metadata["targets"] == ["Weight", "Waist", "Pulse"]
        assert {"rmse", "mae", "rmse.Weight", "mae.Pulse"} <= set(metadata["metrics"])


@pytest.mark.tensorflow
async def test_a_cancel_stops_training_at_the_next_epoch_without_an_artifact(tmp_path: Path) -> None:
    async with trainer(tmp_path) as h:
        await h.train("diabetes", epochs=5000, early_stopping=None)
        await eventually(lambda: bool(h.registry.of(contracts.TASK_PROGRESS)))
        await h.bus.publish(contracts.TASK_CANCELLED, Message(type=contracts.TASK_CANCELLED, body={"task_id": "task-1"}))
        reported_at_cancel = len(h.registry.of(contracts.TASK_PROGRESS))
        await eventually(lambda: bool(h.registry.of(contracts.TASK_CANCEL_ACK)), timeout=30)
        await asyncio.sleep(0.2)

        ack = h.registry.of(contracts.TASK_CANCEL_ACK)
        assert len(ack) == 1 and ack[0].data == {"task_id": "task-1"}
        assert not h.registry.of(contracts.MODEL_ARTIFACT) and not h.registry.of(contracts.TASK_FAILED)
        assert len(h.registry.of(contracts.TASK_PROGRESS)) <= reported_at_cancel + 1
        assert h.module.readiness()["training"]["running"] == []


@pytest.mark.tensorflow
async def test_the_event_loop_stays_responsive_while_a_model_trains(tmp_path: Path) -> None:
    import keras  # noqa: F401 - pay the import before measuring, as a warm process has

    gaps: list[float] = []
    async with trainer(tmp_path) as h:
        await h.train("diabetes", epochs=15, batch_size=8, early_stopping=None)
        started = time.monotonic()
        last = started
        while not h.registry.of(contracts.MODEL_ARTIFACT):
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now
        elapsed = time.monotonic() - started

    assert len(h.registry.of(contracts.TASK_PROGRESS)) == 15
    # The ticker kept ticking throughout: no stall close to the training's length.
    assert max(gaps) < elapsed / 5, (max(gaps), elapsed)
    assert len(gaps) > 20 * elapsed / 5  # hundreds of ticks at 10 ms; a blocked loop gets a handful


@pytest.mark.tensorflow
async def test_stopping_the_module_interrupts_training_without_cancelling_the_task(tmp_path: Path) -> None:
    async with trainer(tmp_path) as h:
        await h.train("diabetes", epochs=5000, early_stopping=None)
        await eventually(lambda: bool(h.registry.of(contracts.TASK_PROGRESS)))
        started = time.monotonic()
        await h.module.stop()

        assert time.monotonic() - started < 10
        assert not h.module.ready()
        # Not the user's cancel: the command goes back to the bus rather than acking a cancel.
        assert not h.registry.of(contracts.TASK_CANCEL_ACK)
        assert not h.registry.of(contracts.MODEL_ARTIFACT) and not h.registry.of(contracts.TASK_FAILED)


@pytest.mark.tensorflow
def test_tensorflow_thread_counts_are_applied_before_it_initialises() -> None:
    # A fresh interpreter: in this one TensorFlow may already be running.
    code = (
        "from skipper.core.settings import TrainingSettings\n"
        "from skipper.modules.training.module import configure_tensorflow\n"
        "configure_tensorflow(TrainingSettings(tf_intra_op_threads=1, tf_inter_op_threads=2))\n"
        "import tensorflow as tf\n"
        "assert tf.config.threading.get_intra_op_parallelism_threads() == 1\n"
        "assert tf.config.threading.get_inter_op_parallelism_threads() == 2\n"
    )
    done = subprocess.run([sys.executable, "-c", code], timeout=120, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
