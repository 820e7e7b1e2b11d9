"""Skipper's Python client (httpx; no TensorFlow). Train, wait with progress, predict:

    from skipper.client import Client

    skipper = Client("http://127.0.0.1:8000")
    task = skipper.train("diabetes", epochs=5).wait(on_progress=lambda p: print(f"{p.epoch}/{p.epochs} loss {p.loss:.1f}"))
    print("version", task.result.model_version, task.result.metrics)
    print(skipper.predict("diabetes", [[0.038, 0.05, 0.061, 0.021, -0.044, -0.034, -0.043, -0.002, 0.019, -0.017]]))

Errors are typed (`NotFound`, `InvalidInput` with its `field`, `Unavailable`, `Unauthorized`, ...;
`ServerUnreachable` when no server answers). `AsyncClient` is the same API for asyncio.
"""

from __future__ import annotations

from skipper.client.aio import AsyncClient, AsyncTask
from skipper.client.calls import DEFAULT_URL
from skipper.client.errors import (
    ApiError,
    ArtifactCorrupt,
    BadRequest,
    Conflict,
    Forbidden,
    InvalidInput,
    ModelNotReady,
    ModelRejected,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    ServerError,
    ServerUnreachable,
    SkipperClientError,
    TaskCancelled,
    TaskFailed,
    TooManyRequests,
    Unauthorized,
    Unavailable,
    UnsupportedMediaType,
    VersionNotServing,
    WaitTimeout,
)
from skipper.client.models import (
    Artifact,
    ErrorInfo,
    Event,
    Installation,
    JsonList,
    Model,
    ModelSummary,
    ModelVersion,
    Predictions,
    Progress,
    TaskList,
    TaskResult,
    TaskState,
    Workflow,
)
from skipper.client.sync import Client, Task

__all__ = [
    "DEFAULT_URL", "ApiError", "Artifact", "ArtifactCorrupt", "AsyncClient", "AsyncTask", "BadRequest", "Client", "Conflict",
    "ErrorInfo", "Event", "Forbidden", "Installation", "InvalidInput", "JsonList", "Model", "ModelNotReady", "ModelRejected",
    "ModelSummary", "ModelVersion", "NotFound", "PayloadTooLarge", "Predictions", "Progress", "RequestTimeout", "ServerError",
    "ServerUnreachable", "SkipperClientError", "Task", "TaskCancelled", "TaskFailed", "TaskList", "TaskResult", "TaskState",
    "TooManyRequests", "Unauthorized", "Unavailable", "UnsupportedMediaType", "VersionNotServing", "WaitTimeout", "Workflow",
]
