"""Event kinds: what happened, as the `kind` of an `event` message (stored, streamed, filtered by `GET /events?kind=`).

A `StrEnum`, so a kind is its string everywhere a string is expected (JSON bodies, SQL filters, log fields).
"""

from __future__ import annotations

from enum import StrEnum


class EventKind(StrEnum):
    TASK_QUEUED = "task.queued"  # api: the task row exists and its train command is sent
    TASK_STARTED = "task.started"  # trainer: training began (fields: attempt, epochs, workflow, model)
    TASK_RETRIED = "task.retried"  # api: a trainer claimed a task again after an earlier attempt
    TASK_PROGRESS = "task.progress"  # trainer: one epoch done
    TASK_TRAINED = "task.trained"  # trainer: the artifact is sent to the registry
    TASK_SUCCEEDED = "task.succeeded"  # api: the artifact is a registered version
    TASK_FAILED = "task.failed"
    TASK_CANCELLED = "task.cancelled"  # api (on request) and trainer (when it stopped)
    TASK_CANCEL_ACKNOWLEDGED = "task.cancel_acknowledged"  # api: a trainer confirmed it stopped
    MODEL_PUBLISHED = "model.published"  # api: a production version announced to the servers
    MODEL_INSTALLED = "model.installed"  # server: a version is loaded and serving
    MODEL_REJECTED = "model.rejected"  # server: a version failed its checks; the old one keeps serving
    PREDICT_FAILED = "predict.failed"  # server: the model raised on a batch
    MESSAGE_DEAD_LETTERED = "message.dead_lettered"  # api: a message exhausted its retries
    AUDIT = "audit"  # api: a state change and the key that made it


TERMINAL_KINDS: dict[str, frozenset[EventKind]] = {
    "succeeded": frozenset({EventKind.TASK_SUCCEEDED}),
    "failed": frozenset({EventKind.TASK_FAILED}),
    "cancelled": frozenset({EventKind.TASK_CANCELLED}),
}
INSTALL_KINDS = frozenset({EventKind.MODEL_INSTALLED, EventKind.MODEL_REJECTED})  # a server's verdict on a version
