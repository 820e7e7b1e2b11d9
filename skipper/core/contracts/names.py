"""Names of the queues, topics and message types the modules agree on (the wire-level names: never rename one)."""

from __future__ import annotations

# Work queues (one consumer per message).
TRAIN = "train"  # api -> trainer: train commands
REGISTRY = "registry"  # trainer/server -> api: task lifecycle, artifacts, registry queries
PREDICT = "predict"  # api -> server: prediction requests, one queue per model (see `predict_queue`)
EVENTS = "events"  # every module -> logging module
DEAD_LETTERS = "dead_letters"  # transports -> api: messages that exhausted their retries


def predict_queue(model: str) -> str:
    """The queue of one model's predict requests.

    A server consumes it only while it holds a version of that model, so a request never reaches
    a server that lacks the model, and `NoConsumers` means that no server has it.
    """
    return f"{PREDICT}.{model}"


# Fanout topics (every live subscriber).
MODEL_PUBLISHED = "model.published"  # api -> servers (and api replicas): a version to serve
TASK_CANCELLED = "task.cancelled"  # api -> trainers: stop at the next epoch
SERVER_ANNOUNCED = "server.announced"  # servers -> api: who serves what, every serving.announce_s

# Message types.
TRAIN_COMMAND = "train.command"
TASK_CLAIM = "task.claim"  # request: trainer asks whether to run (not cancelled) and records the attempt
TASK_PROGRESS = "task.progress"
TASK_FAILED = "task.failed"
TASK_CANCEL_ACK = "task.cancel_ack"
MODEL_ARTIFACT = "model.artifact"  # bytes body (or {"upload", "size"} once chunks are sent); headers: task_id, metadata
MODEL_ARTIFACT_CHUNK = "model.artifact.chunk"  # request: bytes body, headers model/upload/offset; reply once stored
REGISTRY_PRODUCTION = "registry.production"  # request: production versions of every model
REGISTRY_ARTIFACT = "registry.artifact"  # request: one artifact's bytes, or a range of them (offset, length)
PREDICT_REQUEST = "predict.request"  # body: model, instances, and optionally the version it must be served by
PREDICT_STATUS = "predict.status"  # request on a model's predict queue: which version does the server hold?
EVENT = "event"
MESSAGE_DEAD_LETTERED = "message.dead_lettered"
