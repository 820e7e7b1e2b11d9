"""Typed exceptions: Skipper's error shape `{"error": {"code", "message", "details"}}` becomes one class per status."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from skipper.client.models import TaskState


class SkipperClientError(Exception):
    """Base of everything the client raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ServerUnreachable(SkipperClientError):
    """No answer from the server: nothing listens at the URL, the connection broke, or it did not answer in time."""

    def __init__(self, message: str, *, url: str) -> None:
        super().__init__(message)
        self.url = url


class ApiError(SkipperClientError):
    """The server answered with an error status; `code`, `message` and `details` are its error body's."""

    status = 0

    def __init__(self, message: str, *, status: int | None = None, code: str = "error",
                 details: Mapping[str, Any] | None = None, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status
        self.code = code
        self.details: dict[str, Any] = dict(details or {})
        self.headers: dict[str, str] = dict(headers or {})

    def __str__(self) -> str:
        return f"{self.message} ({self.status} {self.code})"


class BadRequest(ApiError):
    """400: the body is not valid JSON."""

    status = 400


class Unauthorized(ApiError):
    """401: no API key, or one the server does not know."""

    status = 401


class Forbidden(ApiError):
    """403: the API key lacks the scope this call needs."""

    status = 403


class NotFound(ApiError):
    """404: unknown workflow, task, model or version."""

    status = 404


class Conflict(ApiError):
    """409: e.g. cancelling a task that already finished."""

    status = 409


class PayloadTooLarge(ApiError):
    """413: the request body is over the server's limit (`details.limit_bytes`)."""

    status = 413


class UnsupportedMediaType(ApiError):
    """415: the body was not sent as JSON."""

    status = 415


class InvalidInput(ApiError):
    """422: a parameter or a prediction row is invalid; `field` names it (`params.epochs`, `instances[1][3]`)."""

    status = 422

    @property
    def field(self) -> str | None:
        value = self.details.get("field")
        return str(value) if value is not None else None


class TooManyRequests(ApiError):
    """429: the server sheds load; retry after `retry_after` seconds when it says."""

    status = 429

    @property
    def retry_after(self) -> float | None:
        try:
            return float(self.headers.get("retry-after", ""))
        except ValueError:
            return None


class ServerError(ApiError):
    """500 and other 5xx the server did not classify."""

    status = 500


class Unavailable(ApiError):
    """503: no server reachable, the broker is down, or the model has no version yet; retrying may help."""

    status = 503


class ModelNotReady(Unavailable):
    """503 `model_not_ready`: the model exists (a workflow produces it) but no version is trained or loaded."""


class RequestTimeout(ApiError):
    """504: no server replied in time."""

    status = 504


class TaskFailed(SkipperClientError):
    """A task the client waited for failed; `task.error` says why."""

    def __init__(self, message: str, task: TaskState) -> None:
        super().__init__(message)
        self.task = task


class TaskCancelled(TaskFailed):
    """A task the client waited for was cancelled."""


class ModelRejected(SkipperClientError):
    """The task trained a version but a server refused to install it; the previous version keeps serving."""

    def __init__(self, message: str, task: TaskState, reason: str) -> None:
        super().__init__(message)
        self.task = task
        self.reason = reason


class WaitTimeout(SkipperClientError, TimeoutError):
    """`Task.wait(timeout=...)` ran out before the task finished (the task goes on)."""


class VersionNotServing(SkipperClientError):
    """`predict(..., version=V)` was answered by another version: V is not the one serving (deploy it first)."""

    def __init__(self, message: str, *, expected: int, serving: int | None) -> None:
        super().__init__(message)
        self.expected = expected
        self.serving = serving


class ArtifactCorrupt(SkipperClientError):
    """A downloaded artifact does not match the sha256 the server sent with it; nothing was kept."""


_BY_STATUS: dict[int, type[ApiError]] = {
    cls.status: cls for cls in (BadRequest, Unauthorized, Forbidden, NotFound, Conflict, PayloadTooLarge,
                                UnsupportedMediaType, InvalidInput, TooManyRequests, ServerError, Unavailable, RequestTimeout)
}
_BY_CODE: dict[str, type[ApiError]] = {"model_not_ready": ModelNotReady}


def error_from_response(status: int, content: bytes, headers: Mapping[str, str]) -> ApiError:
    """The typed error for an error response, whether or not its body has Skipper's error shape."""
    code, message = f"http_{status}", ""
    details: dict[str, Any] = {}
    try:
        body = json.loads(content) if content else None
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code = str(error.get("code") or code)
        message = str(error.get("message") or "")
        raw_details = error.get("details")
        details = raw_details if isinstance(raw_details, dict) else {}
    elif content:  # not Skipper's shape (a proxy's page, say): keep the start of it
        message = content[:200].decode("utf-8", "replace").strip()
    cls = _BY_CODE.get(code) or _BY_STATUS.get(status) or (ServerError if status >= 500 else ApiError)
    return cls(message or f"HTTP {status}", status=status, code=code, details=details,
               headers={k.lower(): v for k, v in headers.items()})
