"""HTTP plumbing shared by every role: the app factory, JSON errors, body limits, correlation ids."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.schemas import SchemaGenerator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from skipper import __version__
from skipper.core.errors import BadRequest, PayloadTooLarge, SkipperError, ValidationFailed
from skipper.core.logs import correlation_id
from skipper.core.messages import new_id
from skipper.core.module import Module

API_BASE = "/api/v1/skipper"
CORRELATION_HEADER = b"x-correlation-id"

log = logging.getLogger("skipper.http")


def error_response(error: SkipperError) -> JSONResponse:
    return JSONResponse(error.to_payload(), status_code=error.status)


async def _skipper_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SkipperError)
    if exc.status >= 500:
        log.warning("%s %s -> %d %s", request.method, request.url.path, exc.status, exc.message)
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    body = {"error": {"code": code, "message": str(exc.detail), "details": {"path": request.url.path}}}
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    # Starlette re-raises after this response, and uvicorn logs the traceback once.
    body = {"error": {"code": "internal_error", "message": "internal server error", "details": {}}}
    return JSONResponse(body, status_code=500)


async def read_json(request: Request, max_bytes: int) -> Any:
    """The request body parsed as JSON: 413 above `max_bytes`, 400 when it is not JSON."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {max_bytes}",
                              details={"limit_bytes": max_bytes})
    if declared is not None and declared.isdigit():
        raw = await request.body()  # within the declared (and checked) length
    else:
        chunks, size = [], 0
        async for chunk in request.stream():  # no length given: count while it streams
            size += len(chunk)
            if size > max_bytes:
                raise PayloadTooLarge(f"request body exceeds the limit of {max_bytes} bytes",
                                      details={"limit_bytes": max_bytes})
            chunks.append(chunk)
        raw = b"".join(chunks)
    if not raw.strip():
        return None
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None


def _reject_constant(name: str) -> float:
    # NaN/Infinity are not JSON; Python's parser accepts them unless told not to.
    raise ValueError(f"{name} is not valid JSON")


def paging(request: Request, default: int = 50, maximum: int = 1000) -> tuple[int, int]:
    """`limit` and `offset` from the query string; 422 when they are not sensible."""
    try:
        limit = int(request.query_params.get("limit", default))
        offset = int(request.query_params.get("offset", 0))
    except ValueError:
        raise ValidationFailed("limit and offset must be integers", details={"field": "limit"}) from None
    if not 1 <= limit <= maximum or offset < 0:
        raise ValidationFailed(f"limit must be within 1..{maximum} and offset >= 0", details={"field": "limit"})
    return limit, offset


class CorrelationIdMiddleware:
    """Takes `X-Correlation-ID` from the request (or makes one), exposes it to logs, echoes it back."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cid = None
        for name, value in scope["headers"]:
            if name == CORRELATION_HEADER:
                cid = value.decode("latin-1")[:64]
                break
        cid = cid or new_id()
        scope.setdefault("state", {})["correlation_id"] = cid
        token = correlation_id.set(cid)
        raw_cid = cid.encode("latin-1")

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", []).append((CORRELATION_HEADER, raw_cid))
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            correlation_id.reset(token)


def request_correlation_id(request: Request) -> str:
    return str(request.state.correlation_id) if hasattr(request.state, "correlation_id") else new_id()


def _under_base(route: BaseRoute) -> BaseRoute:
    """The route with the API base prefixed: flat routes, no Mount, one matching pass per request."""
    assert isinstance(route, Route), f"modules provide plain Routes, got {route!r}"
    return Route(API_BASE + route.path, route.endpoint, methods=sorted(route.methods or ()), name=route.name,
                 include_in_schema=route.include_in_schema)


def create_app(*, role: str, modules: Sequence[Module], lifespan: Any = None) -> Starlette:
    """The ASGI app of a process: health, ready, metrics, openapi, plus every module's routes."""
    schemas = SchemaGenerator({"openapi": "3.0.3", "info": {"title": "Skipper", "version": __version__}})

    async def health(request: Request) -> Response:
        """
        summary: 'Liveness; answers while the process runs.'
        responses: {200: {description: '{"status": "ok"}'}}
        """
        return JSONResponse({"status": "ok"})

    async def ready(request: Request) -> Response:
        """
        summary: 'Readiness of this process''s modules, and the model versions it serves.'
        responses: {200: {description: ready}, 503: {description: not ready yet}}
        """
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

    async def metrics(request: Request) -> Response:
        """
        summary: 'Prometheus metrics.'
        responses: {200: {description: text exposition format}}
        """
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    async def openapi(request: Request) -> Response:
        """
        summary: 'This API''s OpenAPI document.'
        responses: {200: {description: OpenAPI 3 JSON}}
        """
        return JSONResponse(schemas.get_schema(routes=app.routes))

    routes: list[BaseRoute] = [
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"], include_in_schema=False),
    ]
    for module in modules:
        routes.extend(module.routes())
    app = Starlette(
        routes=[_under_base(route) for route in routes],
        exception_handlers={SkipperError: _skipper_error, HTTPException: _http_error, Exception: _unexpected_error},
        lifespan=lifespan,
    )
    app.add_middleware(CorrelationIdMiddleware)
    return app
