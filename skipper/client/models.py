"""The typed results of the client. Each keeps the server's JSON for it in `raw` (fields it does not name included)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})


class JsonList(list[T], Generic[T]):
    """A list of results that also keeps the server's whole JSON body (`raw`), e.g. a page's `total`."""

    def __init__(self, items: list[T], raw: dict[str, Any]) -> None:
        super().__init__(items)
        self.raw = raw


class Predictions(JsonList[Any]):
    """Predictions in the order of the rows sent, with the model version that made them."""

    @property
    def model(self) -> str:
        return str(self.raw.get("model", ""))

    @property
    def model_version(self) -> int | None:
        version = self.raw.get("model_version")
        return int(version) if version is not None else None


class TaskList(JsonList["TaskState"]):
    """A page of tasks, newest first; `total` counts every task matching the filters."""

    @property
    def total(self) -> int:
        return int(self.raw.get("total", len(self)))


@dataclass(frozen=True, slots=True, kw_only=True)
class Workflow:
    name: str
    model: str
    kind: str
    description: str = ""
    dataset: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Workflow:
        return cls(name=str(data["name"]), model=str(data.get("model", "")), kind=str(data.get("kind", "")),
                   description=str(data.get("description") or ""), dataset=dict(data.get("dataset") or {}),
                   params=dict(data.get("params") or {}), raw=data)


@dataclass(frozen=True, slots=True, kw_only=True)
class Progress:
    """A task's progress after an epoch (1-based), with the loss and the epoch's other metrics (`val_loss`, ...)."""

    epoch: int
    epochs: int
    loss: float | None = None
    metrics: dict[str, float | None] = field(default_factory=dict)

    @property
    def val_loss(self) -> float | None:
        return self.metrics.get("val_loss")

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Progress:
        loss = data.get("loss")
        return cls(epoch=int(data.get("epoch") or 0), epochs=int(data.get("epochs") or 0),
                   loss=float(loss) if isinstance(loss, (int, float)) else None,
                   metrics={str(k): (float(v) if isinstance(v, (int, float)) else None)
                            for k, v in (data.get("metrics") or {}).items()})


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskResult:
    """What a succeeded task produced: the model, its new version number and its held-out metrics."""

    model: str
    model_version: int
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorInfo:
    code: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """One entry of a task's event log (`task.progress`, `task.succeeded`, `model.installed`, ...)."""

    id: int
    kind: str
    at: str | None = None
    source: str = ""
    task_id: str | None = None
    correlation_id: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Event:
        return cls(id=int(data["id"]), kind=str(data["kind"]), at=data.get("at"), source=str(data.get("source") or ""),
                   task_id=data.get("task_id"), correlation_id=data.get("correlation_id"),
                   fields=dict(data.get("fields") or {}), raw=data)


@dataclass(frozen=True, slots=True, kw_only=True)
class Installation:
    """A server's report on a task's new version: installed (now serving) or rejected (with the reason)."""

    installed: bool
    model: str
    version: int | None
    source: str = ""
    reason: str | None = None

    @classmethod
    def from_event(cls, event: Event) -> Installation:
        version = event.fields.get("version")
        return cls(installed=event.kind == "model.installed", model=str(event.fields.get("model", "")),
                   version=int(version) if isinstance(version, int) else None, source=event.source,
                   reason=event.fields.get("reason"))


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskState:
    """A training task as the server reports it; `installation` is filled in by waiting for it."""

    task_id: str
    status: str
    workflow: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    progress: Progress | None = None
    result: TaskResult | None = None
    error: ErrorInfo | None = None
    attempts: int = 0
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    installation: Installation | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL

    @classmethod
    def fields_from_json(cls, data: dict[str, Any]) -> dict[str, Any]:
        """The constructor's keyword arguments for the server's task JSON (or a train request's 202 body)."""
        result, error, progress = data.get("result"), data.get("error"), data.get("progress")
        return {
            "task_id": str(data["task_id"]), "status": str(data.get("status", "")), "workflow": str(data.get("workflow", "")),
            "params": dict(data.get("params") or {}),
            "progress": Progress.from_json(progress) if isinstance(progress, dict) and progress else None,
            "result": TaskResult(model=str(result.get("model", "")), model_version=int(result.get("model_version") or 0),
                                 metrics=dict(result.get("metrics") or {})) if isinstance(result, dict) else None,
            "error": ErrorInfo(code=str(error.get("code", "")), message=str(error.get("message", "")),
                               details=dict(error.get("details") or {})) if isinstance(error, dict) else None,
            "attempts": int(data.get("attempts") or 0), "created_at": data.get("created_at"),
            "started_at": data.get("started_at"), "finished_at": data.get("finished_at"), "raw": data,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TaskState:
        return cls(**cls.fields_from_json(data))


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelSummary:
    model: str
    versions: int
    latest_version: int | None
    production_version: int | None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelSummary:
        return cls(model=str(data["model"]), versions=int(data.get("versions") or 0),
                   latest_version=data.get("latest_version"), production_version=data.get("production_version"), raw=data)


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelVersion:
    model: str
    version: int
    sha256: str = ""
    size: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    task_id: str | None = None
    created_at: str | None = None
    production: bool = False
    seq: int | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelVersion:
        return cls(model=str(data["model"]), version=int(data["version"]), sha256=str(data.get("sha256", "")),
                   size=int(data.get("size") or 0), metrics=dict(data.get("metrics") or {}),
                   metadata=dict(data.get("metadata") or {}), task_id=data.get("task_id"),
                   created_at=data.get("created_at"), production=bool(data.get("production")), seq=data.get("seq"),
                   raw=data)


@dataclass(frozen=True, slots=True, kw_only=True)
class Model:
    """A model's versions, oldest first; `production_version` is the one serving."""

    model: str
    production_version: int | None
    versions: list[ModelVersion]
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def features(self) -> list[str]:
        """The production version's feature names, in the order prediction rows list them."""
        for version in self.versions:
            if version.production:
                return list(version.metadata.get("features") or [])
        return list(self.versions[-1].metadata.get("features") or []) if self.versions else []

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Model:
        return cls(model=str(data["model"]), production_version=data.get("production_version"),
                   versions=[ModelVersion.from_json(v) for v in data.get("versions") or []], raw=data)


@dataclass(frozen=True, slots=True, kw_only=True)
class Artifact:
    """A downloaded artifact, checked against the sha256 the server sent."""

    path: str
    sha256: str
    size: int
