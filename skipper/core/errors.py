"""Typed errors. Each carries a stable code and HTTP status; `skipper.core.pipeline.error_response` writes them."""

from __future__ import annotations

from typing import Any


class SkipperError(Exception):
    """Base of every error Skipper raises on purpose."""

    code = "internal_error"
    status = 500

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}

    def to_payload(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}

    @property
    def retry_after_s(self) -> float | None:
        """Seconds a client should wait before retrying (the `Retry-After` header), if the error says."""
        value = self.details.get("retry_after_s")
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class BadRequest(SkipperError):
    code, status = "bad_request", 400


class Unauthorized(SkipperError):
    """No credentials, or credentials that match no key."""

    code, status = "unauthorized", 401


class Forbidden(SkipperError):
    """Valid credentials without the scope the route needs (or a refused cross-site request)."""

    code, status = "forbidden", 403


class NotFound(SkipperError):
    code, status = "not_found", 404


class Conflict(SkipperError):
    code, status = "conflict", 409


class PayloadTooLarge(SkipperError):
    code, status = "payload_too_large", 413


class UnsupportedMediaType(SkipperError):
    code, status = "unsupported_media_type", 415


class ValidationFailed(SkipperError):
    code, status = "validation_failed", 422


class LimitExceeded(ValidationFailed):
    """A request or a training went past a configured resource limit (`limits.*`)."""

    code = "limit_exceeded"


class TooManyRequests(SkipperError):
    """Too much work is queued; `details.retry_after_s` says when to try again."""

    code, status = "too_many_requests", 429


class ModelNotReady(SkipperError):
    """The model exists (a workflow produces it) but no version is trained or loaded yet."""

    code, status = "model_not_ready", 503


class Unavailable(SkipperError):
    """A dependency (broker, database) is down; the client may retry."""

    code, status = "unavailable", 503


class NoConsumers(Unavailable):
    """A request was sent to a queue nobody consumes."""

    code = "no_consumers"


class Overloaded(Unavailable):
    """Load shedding: a model's batch queue is full; `details.retry_after_s` says when to try again."""

    code = "overloaded"


class RequestTimeout(SkipperError):
    """A request got no reply in time."""

    code, status = "timeout", 504


class ConfigError(SkipperError):
    """Settings could not be loaded; raised at start, never while serving."""

    code = "config_error"


class ArtifactRejected(SkipperError):
    """An artifact failed its checksum or safety checks and was not installed."""

    code, status = "artifact_rejected", 422


class RemoteError(SkipperError):
    """A handler on the other side of a request failed with an error it did not classify."""

    code, status = "remote_error", 502


_BY_CODE: dict[str, type[SkipperError]] = {}


def _collect(cls: type[SkipperError]) -> None:
    _BY_CODE.setdefault(cls.code, cls)
    for sub in cls.__subclasses__():
        _collect(sub)


_collect(SkipperError)


def from_payload(payload: dict[str, Any]) -> SkipperError:
    """Rebuild a typed error from its `to_payload()` form, e.g. one carried by a reply."""
    err = payload.get("error", payload)
    cls = _BY_CODE.get(str(err.get("code")), RemoteError)
    return cls(str(err.get("message", "remote error")), details=err.get("details") or {})
