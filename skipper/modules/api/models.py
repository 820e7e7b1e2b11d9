"""The api's request and response models: what `openapi.json` documents and the pipeline validates."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from skipper.core.routing import PageQuery
from skipper.core.settings import NAME_PATTERN, TrainParams

Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=128)]
TaskId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,32}$")]
Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]
MAX_VERSION = 2**31 - 1  # the registry's version column is a 32-bit integer on PostgreSQL


# --- path parameters ---------------------------------------------------------------------------


class WorkflowPath(BaseModel):
    workflow: Name = Field(examples=["diabetes"])


class ModelPath(BaseModel):
    model: Name = Field(examples=["diabetes"])


class VersionPath(BaseModel):
    model: Name = Field(examples=["diabetes"])
    version: int = Field(ge=1, le=MAX_VERSION, examples=[1])


class TaskPath(BaseModel):
    task_id: TaskId = Field(examples=["3f2c9a0d4b1e4c7f8a6b5d4c3b2a1f0e"])


# --- query parameters --------------------------------------------------------------------------


class TasksQuery(PageQuery):
    workflow: Name | None = Field(None, description="only this workflow's tasks")
    status: Status | None = Field(None, description="only tasks in this status")


# --- request bodies ----------------------------------------------------------------------------


def _optional(annotation: Any, metadata: list[Any]) -> Any:
    return (Annotated[annotation, *metadata] if metadata else annotation) | None


# Every TrainParams field with its constraints, optional: a train request overrides only what it names.
TrainOverrides = create_model(  # type: ignore[call-overload]
    "TrainOverrides",
    __config__=ConfigDict(extra="forbid"),
    **{name: (_optional(field.annotation, field.metadata), Field(None, description=field.description))
       for name, field in TrainParams.model_fields.items()},
)


class TrainRequest(BaseModel):
    """Hyper-parameters overriding the workflow's defaults; limits.* apply."""

    model_config = ConfigDict(extra="forbid")
    params: TrainOverrides | None = None


class PredictRequest(BaseModel):
    """Rows in feature order, or objects by feature name."""

    instances: list[list[float] | dict[str, float]] = Field(min_length=1)


class OriginalTrainRequest(BaseModel):
    """The original Skipper's training request: `payload` holds JSON train params ("" for the defaults)."""

    task_type: str = Field("training", examples=["training"])
    payload: str = Field(examples=['{"epochs": 20}'])
    description: str | None = None


class OriginalPredictRequest(BaseModel):
    """The original Skipper's prediction request: `data` is one row as {feature: value} (or a list of rows)."""

    task_type: str = Field("serving", examples=["serving"])
    payload: str = Field(examples=[""])
    data: dict[str, Any] | list[Any] | None = Field(None, examples=[{"age": 0.04, "sex": 0.05}])
    description: str | None = None


# --- responses ---------------------------------------------------------------------------------


class DatasetOut(BaseModel):
    model_config = ConfigDict(extra="allow")
    source: str


class WorkflowOut(BaseModel):
    """A workflow with its default parameters."""

    name: str
    description: str
    model: str
    kind: Literal["regression", "classification"]
    dataset: DatasetOut
    params: dict[str, Any]


class WorkflowList(BaseModel):
    """The workflows this deployment can train."""

    workflows: list[WorkflowOut]


class TrainAccepted(BaseModel):
    """The queued task."""

    task_id: str
    status: Status
    workflow: str
    params: dict[str, Any]
    links: dict[str, str]


class TaskOut(BaseModel):
    """A task: status, progress (epoch, loss, metrics), result and error."""

    task_id: str
    workflow: str
    status: Status
    params: dict[str, Any]
    progress: dict[str, Any] | None
    result: dict[str, Any] | None
    error: dict[str, Any] | None
    attempts: int
    correlation_id: str
    created_at: str | None
    updated_at: str | None
    started_at: str | None
    finished_at: str | None


class TaskList(BaseModel):
    """Tasks, newest first."""

    tasks: list[TaskOut]
    total: int
    limit: int
    offset: int


class ModelSummary(BaseModel):
    model: str
    versions: int
    latest_version: int | None
    production_version: int | None


class ModelList(BaseModel):
    """Every model with its number of versions and its production version."""

    models: list[ModelSummary]


class VersionOut(BaseModel):
    """A model version with its metrics; `production` marks the served one."""

    model: str
    version: int
    sha256: str
    size: int
    metrics: dict[str, Any]
    metadata: dict[str, Any]
    task_id: str | None
    created_at: str | None
    production: bool
    seq: int | None


class ModelOut(BaseModel):
    """A model's versions."""

    model: str
    production_version: int | None
    versions: list[VersionOut]


class Prediction(BaseModel):
    """Predictions in request order, with the model version that made them."""

    predictions: list[Any]
    model: str
    model_version: int


class OriginalTask(BaseModel):
    """The original Skipper's answer to a queued task (or `{"task_id": "-", "task_status": "Wrong task type"}`)."""

    task_id: str
    task_status: str


class OriginalResult(OriginalTask):
    """The original Skipper's answer with an outcome, the result as a JSON string (none for a wrong task type)."""

    outcome: str | None = None


class TaskStatus(TaskOut):
    """A task, with the original Skipper's `task_status` (Processing, Success, Failure, Revoked) and, once
    finished, `outcome`: the result as a JSON string, or the error's message. 202 until finished."""

    task_status: Literal["Processing", "Success", "Failure", "Revoked"]
    outcome: str | None = None


class ServerOut(BaseModel):
    """A serving replica as it last announced itself."""

    id: str
    host: str
    role: str
    models: dict[str, int] = Field(description="the version of each model it serves")
    uptime_s: float
    skipper: str
    last_seen_s: float = Field(description="seconds since its last announcement")
    period_s: float = Field(description="how often it announces; silent for three periods, it is dropped")


class ServerList(BaseModel):
    """The serving replicas heard from lately."""

    servers: list[ServerOut]
