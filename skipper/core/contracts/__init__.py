"""What the modules agree on, and all they share besides `Message`: none imports another module.

- `names`: queues, fanout topics and message types (the wire-level names), `predict_queue(model)`;
- `kinds`: `EventKind`, the kinds of event the logging module records;
- `bodies`: typed message bodies (frozen dataclasses with `to_body` / `from_body`).

Everything is importable from here: `contracts.TRAIN`, `contracts.EventKind.TASK_FAILED`, `contracts.TrainCommand`.
"""

from __future__ import annotations

from skipper.core.contracts.bodies import (
    ClaimReply,
    Event,
    ModelAnnouncement,
    PredictReply,
    PredictRequest,
    TaskCancelAck,
    TaskCancelled,
    TaskClaim,
    TaskFailed,
    TaskProgress,
    TaskRef,
    TrainCommand,
)
from skipper.core.contracts.kinds import INSTALL_KINDS, TERMINAL_KINDS, EventKind
from skipper.core.contracts.names import (
    DEAD_LETTERS,
    EVENT,
    EVENTS,
    MESSAGE_DEAD_LETTERED,
    MODEL_ARTIFACT,
    MODEL_ARTIFACT_CHUNK,
    MODEL_PUBLISHED,
    PREDICT,
    PREDICT_REQUEST,
    PREDICT_STATUS,
    REGISTRY,
    REGISTRY_ARTIFACT,
    REGISTRY_PRODUCTION,
    SERVER_ANNOUNCED,
    TASK_CANCEL_ACK,
    TASK_CANCELLED,
    TASK_CLAIM,
    TASK_FAILED,
    TASK_PROGRESS,
    TRAIN,
    TRAIN_COMMAND,
    predict_queue,
)

__all__ = [
    "DEAD_LETTERS", "EVENT", "EVENTS", "INSTALL_KINDS", "MESSAGE_DEAD_LETTERED", "MODEL_ARTIFACT",
    "MODEL_ARTIFACT_CHUNK", "MODEL_PUBLISHED",
    "PREDICT", "PREDICT_REQUEST", "PREDICT_STATUS", "REGISTRY", "REGISTRY_ARTIFACT", "REGISTRY_PRODUCTION",
    "SERVER_ANNOUNCED", "TASK_CANCELLED", "TASK_CANCEL_ACK", "TASK_CLAIM", "TASK_FAILED", "TASK_PROGRESS",
    "TERMINAL_KINDS", "TRAIN", "TRAIN_COMMAND", "ClaimReply", "Event", "EventKind", "ModelAnnouncement",
    "PredictReply", "PredictRequest", "TaskCancelAck", "TaskCancelled", "TaskClaim", "TaskFailed", "TaskProgress",
    "TaskRef", "TrainCommand", "predict_queue",
]
