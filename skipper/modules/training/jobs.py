"""The contract between the training module and a trainer (the built-in Keras one or a user's).

A workflow names its trainer by import path (`package.module:function`). The function takes
a `TrainJob` and returns a `TrainResult`; it runs in a worker thread and may block. It saves
the model to `job.model_path`, calls `job.report_epoch` after every epoch, and stops early
(returning `cancelled=True`) once `job.stop_requested()` is true. `stop_requested()` also turns
true when the training runs past `limits.max_train_seconds` (a `Deadline`); the training module
then fails the task with a `LimitExceeded` error, whatever the trainer returned.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from skipper.core.errors import LimitExceeded
from skipper.core.imports import resolve
from skipper.core.settings import Limits, TrainParams, Workflow


@dataclass(frozen=True, slots=True)
class EpochReport:
    """Progress after one epoch; `epoch` is 1-based."""

    epoch: int
    epochs: int
    loss: float | None
    metrics: dict[str, float | None]


@dataclass(frozen=True, slots=True)
class TrainJob:
    """Everything a trainer needs for one task."""

    task_id: str
    workflow_name: str
    workflow: Workflow
    params: TrainParams
    data_dir: Path
    model_path: Path  # where the trainer saves the Keras model (`model.save(model_path)`)
    report_epoch: Callable[[EpochReport], None]
    stop_requested: Callable[[], bool]
    correlation_id: str | None = None
    limits: Limits = field(default_factory=Limits)  # the workflow's limits, for trainers that check them


@dataclass(frozen=True, slots=True)
class TrainResult:
    """What a trainer produced: the schema the model serves, and its held-out metrics."""

    features: list[str]
    targets: list[str]
    classes: list[str] | None
    metrics: dict[str, Any] = field(default_factory=dict)
    cancelled: bool = False
    parameters: int | None = None  # the model's parameter count: servers size their memory by it


Trainer = Callable[[TrainJob], TrainResult]
DEFAULT_TRAINER = "skipper.modules.training.keras_trainer:train"  # what a workflow naming no trainer uses


class Deadline:
    """The wall-clock budget of one training (`limits.max_train_seconds`), from its start."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self._clock = clock
        self._ends = clock() + seconds

    def expired(self) -> bool:
        return self._clock() >= self._ends

    def stop_condition(self, stop: Callable[[], bool]) -> Callable[[], bool]:
        """`stop`, or the deadline: what a trainer polls as `job.stop_requested`."""
        return lambda: stop() or self.expired()

    def check(self) -> None:
        """`LimitExceeded` once the deadline has passed: the training is failed, not retried."""
        if self.expired():
            raise LimitExceeded(
                f"training ran past limits.max_train_seconds ({self.seconds:g} s) and was stopped",
                details={"limit": "limits.max_train_seconds", "max": self.seconds},
            )


def resolve_trainer(path: str | None) -> Trainer:
    """The callable named `package.module:attribute` (the built-in Keras trainer when None).

    Raises `ConfigError` naming the path when it is malformed or names nothing callable.
    """
    trainer: Trainer = resolve(path or DEFAULT_TRAINER, what="trainer")
    return trainer
