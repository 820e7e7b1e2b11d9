"""Typed message bodies: the commands, events and replies the modules exchange, as frozen dataclasses.

Each knows its message `TYPE`, turns itself into the JSON body the wire carries (`to_body`, the same
keys in the same order as before these classes existed, so mixed versions interoperate) and reads one
back (`from_body`, raising `ValidationFailed`, or `ArtifactRejected` for an announcement, on a body
that is not what its type promises). `message()` wraps one in the bus envelope.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from skipper.core.contracts import names
from skipper.core.contracts.kinds import EventKind
from skipper.core.errors import ArtifactRejected, ValidationFailed
from skipper.core.messages import Body, Message


def _object(body: Body, what: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ValidationFailed(f"a {what} body must be a JSON object")
    return body


def _text(data: dict[str, Any], key: str, what: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise ValidationFailed(f"a {what} needs {key!r} as a non-empty string", details={key: value})
    return value


class _Body:
    """What every typed body has: its message type and an envelope around it."""

    __slots__ = ()
    TYPE: ClassVar[str]

    def to_body(self) -> Body:
        raise NotImplementedError

    def message(self, *, correlation_id: str | None = None, headers: dict[str, Any] | None = None) -> Message:
        return Message(type=self.TYPE, body=self.to_body(), headers=headers or {}, correlation_id=correlation_id)


# --- training ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TrainCommand(_Body):
    """api -> trainer (`train` queue): train `workflow` with `params` for the task `task_id`."""

    TYPE: ClassVar[str] = names.TRAIN_COMMAND
    task_id: str
    workflow: str
    params: dict[str, Any] = field(default_factory=dict)

    def to_body(self) -> dict[str, Any]:
        return {"task_id": self.task_id, "workflow": self.workflow, "params": self.params}

    @classmethod
    def from_body(cls, body: Body) -> TrainCommand:
        data = _object(body, "train command")
        params = data.get("params") or {}
        if not isinstance(params, dict):
            raise ValidationFailed("params must be an object", details={"params": params})
        return cls(_text(data, "task_id", "train command"), _text(data, "workflow", "train command"), params)


@dataclass(frozen=True, slots=True)
class TaskRef(_Body):
    """A message about one task and nothing more; the subclasses say which."""

    task_id: str

    def to_body(self) -> dict[str, Any]:
        return {"task_id": self.task_id}

    @classmethod
    def from_body(cls, body: Body) -> Self:
        return cls(_text(_object(body, cls.TYPE), "task_id", cls.TYPE))


@dataclass(frozen=True, slots=True)
class TaskCancelled(TaskRef):
    """api -> every trainer (`task.cancelled` fanout): stop this task at its next epoch."""

    TYPE: ClassVar[str] = names.TASK_CANCELLED


@dataclass(frozen=True, slots=True)
class TaskCancelAck(TaskRef):
    """trainer -> api (`registry` queue): the task stopped."""

    TYPE: ClassVar[str] = names.TASK_CANCEL_ACK


@dataclass(frozen=True, slots=True)
class TaskClaim(_Body):
    """trainer -> api, a request: may this task run (not cancelled or finished)? Records the attempt (0-based)."""

    TYPE: ClassVar[str] = names.TASK_CLAIM
    task_id: str
    attempt: int = 0

    def to_body(self) -> dict[str, Any]:
        return {"task_id": self.task_id, "attempt": self.attempt}

    @classmethod
    def from_body(cls, body: Body) -> TaskClaim:
        data = _object(body, "task claim")
        attempt = data.get("attempt") or 0
        return cls(_text(data, "task_id", "task claim"), attempt if isinstance(attempt, int) else 0)


@dataclass(frozen=True, slots=True)
class ClaimReply:
    """The api's answer to a `TaskClaim`."""

    proceed: bool

    def to_body(self) -> dict[str, Any]:
        return {"proceed": self.proceed}

    @classmethod
    def from_body(cls, body: Body) -> ClaimReply:
        return cls(bool(_object(body, "claim reply").get("proceed")))


@dataclass(frozen=True, slots=True)
class TaskProgress(_Body):
    """trainer -> api (`registry` queue): one epoch of the task done (`epoch` is 1-based)."""

    TYPE: ClassVar[str] = names.TASK_PROGRESS
    task_id: str
    epoch: int
    epochs: int
    loss: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_body(self) -> dict[str, Any]:
        return {"task_id": self.task_id, **self.progress()}

    def progress(self) -> dict[str, Any]:
        """What the task row keeps: the body without the task id."""
        return {"epoch": self.epoch, "epochs": self.epochs, "loss": self.loss, "metrics": self.metrics}

    @classmethod
    def from_body(cls, body: Body) -> TaskProgress:
        data = _object(body, "task progress")
        epoch, epochs, loss, metrics = data.get("epoch"), data.get("epochs"), data.get("loss"), data.get("metrics")
        if not isinstance(epoch, int) or not isinstance(epochs, int):
            raise ValidationFailed("task progress needs integer 'epoch' and 'epochs'", details={"epoch": epoch})
        return cls(_text(data, "task_id", "task progress"), epoch, epochs,
                   float(loss) if isinstance(loss, int | float) else None, metrics if isinstance(metrics, dict) else {})


@dataclass(frozen=True, slots=True)
class TaskFailed(_Body):
    """trainer -> api (`registry` queue): the task failed for good; `error` is the JSON error object."""

    TYPE: ClassVar[str] = names.TASK_FAILED
    task_id: str
    error: dict[str, Any] | None = None

    def to_body(self) -> dict[str, Any]:
        return {"task_id": self.task_id, "error": self.error}

    @classmethod
    def from_body(cls, body: Body) -> TaskFailed:
        data = _object(body, "task failure")
        error = data.get("error")
        return cls(_text(data, "task_id", "task failure"), error if isinstance(error, dict) else None)


# --- models -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelAnnouncement(_Body):
    """api -> every server (`model.published` fanout): a production version.

    The signed description of the version rides in the headers; the body is the artifact itself
    when it is small, else `{"ref": true}` and a server fetches the bytes from the registry.
    """

    TYPE: ClassVar[str] = names.MODEL_PUBLISHED
    artifact: bytes | None = None

    def to_body(self) -> Body:
        return self.artifact if self.artifact is not None else {"ref": True}

    @classmethod
    def from_body(cls, body: Body) -> ModelAnnouncement:
        if isinstance(body, bytes):
            return cls(body)
        if body.get("ref") is not True:
            raise ArtifactRejected("announcement carries neither the artifact nor a reference to it")
        return cls(None)


# --- predictions ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PredictRequest(_Body):
    """api -> a server (the model's predict queue), a request: predict `instances` (rows in feature order).

    With a `version`, only a server holding that version may answer.
    """

    TYPE: ClassVar[str] = names.PREDICT_REQUEST
    model: str
    instances: list[Any]
    version: int | None = None

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "instances": self.instances}
        if self.version is not None:
            body["version"] = self.version
        return body

    @classmethod
    def from_body(cls, body: Body) -> PredictRequest:
        data = _object(body, "predict request")
        instances, version = data.get("instances"), data.get("version")
        if not isinstance(instances, list):
            raise ValidationFailed("a predict request needs 'instances' as a list", details={"field": "instances"})
        if version is not None and not isinstance(version, int):
            raise ValidationFailed("a predict request's 'version' must be an integer", details={"version": version})
        return cls(_text(data, "model", "predict request"), instances, version)


@dataclass(frozen=True, slots=True)
class PredictReply:
    """A server's answer to a `PredictRequest`: one prediction per instance, and the version that made them."""

    predictions: list[Any]
    model: str
    model_version: int

    def to_body(self) -> dict[str, Any]:
        return {"predictions": self.predictions, "model": self.model, "model_version": self.model_version}

    @classmethod
    def from_body(cls, body: Body) -> PredictReply:
        data = _object(body, "predict reply")
        predictions, version = data.get("predictions"), data.get("model_version")
        if not isinstance(predictions, list) or not isinstance(version, int):
            raise ValidationFailed("a predict reply needs 'predictions' (a list) and 'model_version' (an integer)")
        return cls(predictions, _text(data, "model", "predict reply"), version)


# --- events -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Event(_Body):
    """every module -> the logging module (`events` queue): `kind` happened; `fields` are JSON-able."""

    TYPE: ClassVar[str] = names.EVENT
    kind: str
    source: str
    task_id: str | None = None
    at: float = field(default_factory=time.time)
    fields: dict[str, Any] = field(default_factory=dict)

    def to_body(self) -> dict[str, Any]:
        kind = self.kind.value if isinstance(self.kind, EventKind) else self.kind  # plain str on the wire
        return {"kind": kind, "source": self.source, "task_id": self.task_id, "at": self.at, "fields": self.fields}

    @classmethod
    def from_body(cls, body: Body) -> Event:
        """Lenient: an event is recorded whatever its sender got wrong (the log is where you look for that)."""
        data = _object(body, "event")
        task_id, at, fields = data.get("task_id"), data.get("at"), data.get("fields")
        return cls(str(data.get("kind", "unknown")), str(data.get("source", "")),
                   task_id if isinstance(task_id, str) else None,
                   float(at) if isinstance(at, int | float) else 0.0, fields if isinstance(fields, dict) else {})
