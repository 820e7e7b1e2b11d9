"""How a route declares itself, once: from an `Endpoint` come the Starlette route, the auth
check, input validation (`skipper.core.pipeline`) and its part of the OpenAPI document
(`skipper.core.openapi`).

    Endpoint("POST", "/models/{model}/versions/{version}/deploy", self.deploy, scope="deploy",
             summary="Make a version production.", path_params=VersionPath,
             responses={200: VersionOut}, errors={409: "..."})

    async def deploy(self, call: Call[VersionPath, None, None]) -> Response: ...

A route without a declared scope needs `admin`: secure by default, never open by omission.
Routes come in `RouteGroup`s: a path prefix and an error style (Skipper's own
`{"error": {"code", "message", "details"}}`, or the inference protocols' `{"error": "<text>"}`).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import Response

from skipper.core.auth import ADMIN, Access, Principal
from skipper.core.errors import SkipperError

P = TypeVar("P")
Q = TypeVar("Q")
B = TypeVar("B")

API_BASE = "/api/v1/skipper"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True, slots=True)
class Call(Generic[P, Q, B]):
    """What a handler gets: the request, its validated inputs, and who is calling.

    `path`, `query` and `body` are instances of the endpoint's models (None when it has none;
    the raw JSON body when the endpoint validates its body itself).
    """

    request: Request
    path: P
    query: Q
    body: B
    principal: Principal

    @property
    def correlation_id(self) -> str:
        # Straight from the scope, where CorrelationIdMiddleware put it (`request.state` builds an object per access).
        return str(self.request.scope["state"]["correlation_id"])


Handler = Callable[[Call[Any, Any, Any]], Awaitable[Response]]


def header(request: Request, name: bytes) -> str | None:
    """The first value of the header `name` (lower-case bytes, as the server gives them), or None.

    What `request.headers.get` answers, for the request path: Starlette's `Headers.get` finds an
    absent header by raising and catching a `KeyError`, which costs more than the whole lookup.
    """
    headers: list[tuple[bytes, bytes]] = request.scope["headers"]
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return None


@dataclass(frozen=True, slots=True)
class Reply:
    """A success response: its model (JSON), or a media type and a description for anything else."""

    model: type[BaseModel] | None = None
    description: str = ""
    media_type: str = "application/json"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One route: method, path (relative to its group), handler, the scope it needs, its models."""

    method: str
    path: str
    handler: Handler
    scope: Access = ADMIN
    summary: str = ""
    path_params: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    body_required: bool = False
    validate_body: bool = True  # False: the handler validates the raw JSON itself (naming fields its own way)
    responses: Mapping[int, type[BaseModel] | Reply] = field(default_factory=dict)
    errors: Mapping[int, str] = field(default_factory=dict)  # statuses beyond the ones the pipeline adds
    # "json": unsafe methods accept JSON only (415 otherwise). "form": the dashboard's own form posts,
    # which carry a CSRF token checked by their handler instead.
    content: Literal["json", "form"] = "json"
    in_schema: bool = True
    tags: tuple[str, ...] = ()
    # Runs after the auth check and before the body is read: refuse a request by its headers alone
    # (the inference protocol's binary bodies, which are not JSON) with an error that says why.
    precheck: Callable[[Request], None] | None = None

    def __post_init__(self) -> None:
        names = set(re.findall(r"{([^}:]+)", self.path))
        fields = set(self.path_params.model_fields) if self.path_params else set()
        assert names == fields, f"{self.method} {self.path}: path parameters {sorted(names)} vs model {sorted(fields)}"
        assert self.method in {"GET", "POST", "PUT", "PATCH", "DELETE"}, self.method

    @property
    def unsafe(self) -> bool:
        return self.method in UNSAFE_METHODS


class PageQuery(BaseModel):
    """`limit` and `offset` of a paged list."""

    limit: int = Field(50, ge=1, le=1000, description="at most this many items")
    offset: int = Field(0, ge=0, le=2**31 - 1, description="skip this many items first")


class ErrorBody(BaseModel):
    code: str
    message: str
    details: dict[str, Any]


class ErrorResponse(BaseModel):
    """Skipper's error: a stable code, a message for people, details (e.g. `field`) for programs."""

    error: ErrorBody


class StringError(BaseModel):
    """The inference protocols' error: one message."""

    error: str


@dataclass(frozen=True, slots=True)
class ErrorStyle:
    """How a group of routes writes an error body, and the schema that documents it.

    `respond`, when set, writes the whole response instead (the dashboard's pages: a login
    redirect for a 401, an HTML page for the rest).
    """

    name: str
    render: Callable[[SkipperError], dict[str, Any]]
    schema: type[BaseModel]
    respond: Callable[[SkipperError, Request], Response] | None = None


SKIPPER_ERRORS = ErrorStyle("skipper", lambda exc: exc.to_payload(), ErrorResponse)
STRING_ERRORS = ErrorStyle("string", lambda exc: {"error": exc.message}, StringError)


@dataclass(frozen=True, slots=True)
class RouteGroup:
    """Endpoints under one path prefix ("" for the root) that share an error style."""

    prefix: str
    endpoints: Sequence[Endpoint]
    errors: ErrorStyle = SKIPPER_ERRORS


def grouped(routes: Sequence[Endpoint | RouteGroup]) -> list[RouteGroup]:
    """A module's routes as groups: bare endpoints go under the API base with Skipper's errors."""
    bare = [r for r in routes if isinstance(r, Endpoint)]
    groups = [r for r in routes if isinstance(r, RouteGroup)]
    return ([RouteGroup(API_BASE, bare)] if bare else []) + groups
