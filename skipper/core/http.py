"""HTTP plumbing shared by every role: the app factory, its own routes, JSON errors, and the
front door in front of every request (`skipper.core.frontdoor`: correlation ids, the Host allow-list,
the prediction routes dispatched directly) and CORS when configured.

Routes are declared (`skipper.core.routing`) and turned into Starlette routes by
`skipper.core.pipeline`; the OpenAPI document comes from the same declarations.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp

from skipper import __version__
from skipper.core import openapi
from skipper.core.auth import OPEN, build_guard, is_loopback
from skipper.core.docs import docs_endpoints
from skipper.core.errors import SkipperError, Unavailable
from skipper.core.frontdoor import FrontDoor, HostAllowList
from skipper.core.messages import new_id
from skipper.core.module import Module
from skipper.core.pipeline import Options, build_routes, error_response
from skipper.core.routing import API_BASE, SKIPPER_ERRORS, Call, Endpoint, ErrorStyle, Reply, RouteGroup, grouped
from skipper.core.settings import Settings

__all__ = ["API_BASE", "create_app", "request_correlation_id"]

StyleFor = Callable[[str], ErrorStyle]
SERVICE = ("service",)

log = logging.getLogger("skipper.http")


class Health(BaseModel):
    """The process is alive."""

    status: str


class Readiness(BaseModel):
    """Whether this process's modules can work, and the model versions it serves."""

    model_config = ConfigDict(extra="allow")
    status: str
    role: str
    models: dict[str, int]


class OpenApiDocument(BaseModel):
    """This API's OpenAPI 3.1 document."""

    model_config = ConfigDict(extra="allow")
    openapi: str


def style_resolver(groups: Sequence[RouteGroup]) -> StyleFor:
    """The error style of the group a path falls under (Skipper's own outside every group)."""
    prefixes = sorted(((g.prefix, g.errors) for g in groups if g.prefix), key=lambda p: -len(p[0]))

    def style_for(path: str) -> ErrorStyle:
        for prefix, style in prefixes:
            if path == prefix or path.startswith(prefix + "/"):
                return style
        return SKIPPER_ERRORS

    return style_for


def service_endpoints(*, role: str, modules: Sequence[Module], settings: Settings,
                      document: Callable[[], dict[str, Any]]) -> list[Endpoint]:
    """health, ready, metrics, openapi.json and the docs page: what every process serves."""

    async def health(call: Call[None, None, None]) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(call: Call[None, None, None]) -> Response:
        body: dict[str, Any] = {"status": "ready", "role": role, "models": {}}
        ok = True
        for module in modules:
            ok = ok and module.ready()
            extra = module.readiness()
            if "models" in extra:
                body["models"].update(extra.pop("models"))
            body.update(extra)
        if not ok:
            body["status"] = "not_ready"
        return JSONResponse(body, status_code=200 if ok else 503)

    async def metrics(call: Call[None, None, None]) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    async def openapi_json(call: Call[None, None, None]) -> Response:
        return JSONResponse(document())

    return [
        Endpoint("GET", "/health", health, scope=OPEN, summary="Liveness: answers while the process runs.", tags=SERVICE,
                 responses={200: Health}),
        Endpoint("GET", "/ready", ready, scope=OPEN, summary="Readiness, and the model versions this process serves.",
                 tags=SERVICE, responses={200: Readiness, 503: Readiness}),
        Endpoint("GET", "/metrics", metrics, scope="read" if settings.auth.protect_metrics else OPEN,
                 summary="Prometheus metrics.", tags=SERVICE, responses={200: Reply(description="Prometheus text format",
                                                                      media_type="text/plain")}),
        Endpoint("GET", "/openapi.json", openapi_json, scope=OPEN, summary="This API's OpenAPI document.", tags=SERVICE,
                 responses={200: OpenApiDocument}),
        *docs_endpoints(API_BASE, "Skipper"),
    ]


def create_app(*, settings: Settings, role: str, modules: Sequence[Module], lifespan: Any = None) -> Starlette:
    """The ASGI app of a process; a `ConfigError` when it would expose protected routes without keys."""
    cache: dict[str, Any] = {}

    def document() -> dict[str, Any]:
        if "doc" not in cache:
            cache["doc"] = openapi.document(groups, title="Skipper", version=__version__,
                                            description="Train, version and serve Keras models. See docs/security.md.")
        return dict(cache["doc"])

    groups = grouped(service_endpoints(role=role, modules=modules, settings=settings, document=document))
    for module in modules:
        groups += grouped(module.routes())
    protected = any(e.scope != OPEN for g in groups for e in g.endpoints)
    guard = build_guard(settings, protected_routes=protected)
    for module in modules:
        for source in module.credentials():
            guard.add_source(source)
    http = settings.http
    options = Options(max_body_bytes=http.max_body_bytes, max_json_depth=http.max_json_depth,
                      cors_origins=tuple(http.cors_origins))
    style_for = style_resolver(groups)
    routes = build_routes(groups, guard, options)
    app = SkipperApp(routes=routes.starlette, lifespan=lifespan, exception_handlers={
        SkipperError: _skipper_error(style_for), HTTPException: _http_error(style_for),
        DBAPIError: _database_error(style_for), Exception: _unexpected_error(style_for)})
    app.state.guard = guard  # the dashboard adds its session cookie here: app.state.guard.add_source(...)
    app.state.route_groups = groups
    cors: Callable[[ASGIApp], ASGIApp] | None = None
    if http.cors_origins:
        def cors(inner: ASGIApp) -> ASGIApp:
            return CORSMiddleware(inner, allow_origins=list(http.cors_origins), allow_methods=["GET", "POST", "PUT", "DELETE"],
                                  allow_headers=["authorization", "content-type", "x-correlation-id"],
                                  expose_headers=["x-correlation-id", "retry-after"])

        app.add_middleware(cors)
    allowed = allowed_hosts(settings)
    app.front_door = partial(FrontDoor, hot=routes.hot, hosts=HostAllowList(allowed) if allowed is not None else None,
                             style_for=style_for, exception_handlers=app.exception_handlers,
                             error_response=error_response, wrap_hot=cors)
    return app


# --- errors outside a declared route (unknown paths, a method not allowed, a bug) -----------------


class _RoutingError(SkipperError):
    """Starlette's own 404/405, written like any other error."""


def _skipper_error(style_for: StyleFor) -> Callable[[Request, Exception], Any]:
    async def handle(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, SkipperError)
        return error_response(exc, style_for(request.url.path))

    return handle


def _http_error(style_for: StyleFor) -> Callable[[Request, Exception], Any]:
    async def handle(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        error = _RoutingError(str(exc.detail), details={"path": request.url.path})
        error.code, error.status = code, exc.status_code
        body = style_for(request.url.path).render(error)
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    return handle


def _database_error(style_for: StyleFor) -> Callable[[Request, Exception], Any]:
    """A request whose database connection died under it (PostgreSQL restarted, the session ended):
    503, which a client retries; the pool's pre-ping gives the next request a live connection."""

    async def handle(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, DBAPIError)
        if not (exc.connection_invalidated or isinstance(exc, (OperationalError, InterfaceError))):
            log.error("database error on %s %s", request.method, request.url.path, exc_info=exc)
            return JSONResponse(style_for(request.url.path).render(SkipperError("internal server error")),
                                status_code=500)
        log.warning("database connection lost on %s %s (%s)", request.method, request.url.path,
                    type(exc.orig or exc).__name__)
        error = Unavailable("the database connection was lost; retry the request", details={"retry": True})
        return error_response(error, style_for(request.url.path))

    return handle


def _unexpected_error(style_for: StyleFor) -> Callable[[Request, Exception], Any]:
    async def handle(request: Request, exc: Exception) -> Response:
        # Starlette re-raises after this response, and uvicorn logs the traceback once.
        return JSONResponse(style_for(request.url.path).render(SkipperError("internal server error")), status_code=500)

    return handle


# --- the app --------------------------------------------------------------------------------------


class SkipperApp(Starlette):
    """Starlette with the front door (`skipper.core.frontdoor`) in front of its own stack."""

    front_door: Callable[[ASGIApp], ASGIApp] | None = None

    def build_middleware_stack(self) -> ASGIApp:
        stack = super().build_middleware_stack()
        return self.front_door(stack) if self.front_door is not None else stack


def allowed_hosts(settings: Settings) -> list[str] | None:
    """The Host allow-list: as configured; else loopback names on a loopback bind; else None (any host)."""
    if settings.http.allowed_hosts:
        return list(settings.http.allowed_hosts)
    return ["localhost", "127.0.0.1", "::1", "loopback"] if is_loopback(settings.host) else None


def request_correlation_id(request: Request) -> str:
    return str(request.state.correlation_id) if hasattr(request.state, "correlation_id") else new_id()
