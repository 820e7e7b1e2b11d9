"""From an `Endpoint` to a Starlette route: the steps every request of a declared route goes through.

In order: who is calling and may they (401/403), JSON only for state changes (415), no
cross-site state change (403), path parameters (404: a path that names nothing), query
parameters (422), the body (413 too large, 400 not JSON or nested too deep, 422 invalid),
then the handler. A `SkipperError` from any step or from the handler is written in the
route group's error style.
"""

from __future__ import annotations

import math
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from skipper.core import jsonio
from skipper.core.auth import Guard
from skipper.core.errors import (
    BadRequest,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    SkipperError,
    UnsupportedMediaType,
    ValidationFailed,
)
from skipper.core.frontdoor import HotRoute
from skipper.core.routing import SKIPPER_ERRORS, Call, Endpoint, ErrorStyle, RouteGroup, header


@dataclass(frozen=True, slots=True)
class Options:
    max_body_bytes: int = 1024 * 1024
    max_json_depth: int = 32
    cors_origins: tuple[str, ...] = ()


def error_response(exc: SkipperError, style: ErrorStyle = SKIPPER_ERRORS) -> JSONResponse:
    """The error as JSON in `style`, with `WWW-Authenticate` on a 401 and `Retry-After` when it says."""
    headers = {}
    if exc.status == 401:
        headers["www-authenticate"] = "Bearer"
    if exc.retry_after_s is not None:
        headers["retry-after"] = str(max(1, math.ceil(exc.retry_after_s)))
    return jsonio.FastJSONResponse(style.render(exc), status_code=exc.status, headers=headers)


@dataclass(frozen=True, slots=True)
class Routes:
    """A process's routes: all of them for Starlette, and the prediction routes again for the front door."""

    starlette: list[Route]
    hot: list[HotRoute]


def build_routes(groups: Sequence[RouteGroup], guard: Guard, options: Options) -> Routes:
    """One Starlette route per path, dispatching on the method: a 405 then lists every method the path
    has in `Allow`, not only those of the first route Starlette tried.

    In declaration order, except that the prediction routes come first: Starlette tries routes in
    order, and the hot path should not be matched against every service route before its own.
    (Every route path has literal parts that keep it from matching another's requests.) The front
    door (`skipper.core.frontdoor`) dispatches those same handlers itself, in the same order.
    """
    by_path: dict[str, dict[str, Handler]] = {}
    hot: list[HotRoute] = []
    for group in groups:
        for endpoint in group.endpoints:
            path = group.prefix + endpoint.path
            methods = by_path.setdefault(path, {})
            assert endpoint.method not in methods, f"{endpoint.method} {path} is declared twice"
            methods[endpoint.method] = to_handler(endpoint, group, guard, options)
            if endpoint.method == "POST" and endpoint.scope == "predict":
                hot.append(HotRoute(path, methods["POST"]))
    hot_paths = {route.path for route in hot}
    ordered = sorted(by_path.items(), key=lambda item: item[0] not in hot_paths)  # stable: declaration order otherwise
    return Routes([_route(path, methods) for path, methods in ordered], hot)


def _route(path: str, methods: dict[str, Handler]) -> Route:
    if len(methods) == 1:
        [(method, handler)] = methods.items()
        return Route(path, handler, methods=[method], include_in_schema=False)

    async def dispatch(request: Request) -> Response:
        return await methods["GET" if request.method == "HEAD" else request.method](request)

    return Route(path, dispatch, methods=list(methods), include_in_schema=False)


Handler = Callable[[Request], Awaitable[Response]]


def to_handler(endpoint: Endpoint, group: RouteGroup, guard: Guard, options: Options) -> Handler:
    style = group.errors
    check_content = endpoint.unsafe and endpoint.content == "json"
    paths: PathCache = {}

    async def run(request: Request) -> Response:
        try:
            principal = await guard.check(request, endpoint.scope)
            if check_content:
                require_json(request)
                refuse_cross_site(request, options.cors_origins)
            if endpoint.precheck is not None:
                endpoint.precheck(request)
            path = _path(endpoint.path_params, request.path_params, paths)
            query = _query(endpoint.query, request)
            body: Any = None
            if endpoint.body is not None:
                body = await read_json(request, options.max_body_bytes, options.max_json_depth)
                if body is None:
                    raise ValidationFailed("the request body must be a JSON object, not null", details={"field": "body"})
                body = None if body is NO_BODY else body
                if endpoint.validate_body:
                    body = _body(endpoint.body, body, endpoint.body_required)
            return await endpoint.handler(Call(request, path, query, body, principal))
        except SkipperError as exc:
            return style.respond(exc, request) if style.respond is not None else error_response(exc, style)

    run.__name__ = getattr(endpoint.handler, "__name__", "endpoint")
    return run


# --- browser safety ---------------------------------------------------------------------------

# What a page on another site can send without a CORS preflight; anything else non-JSON is refused too.
_JSON_TYPE = re.compile(r"^application/([a-z0-9.+-]+\+)?json$")


def require_json(request: Request) -> None:
    """A state change must be JSON (or carry no content type at all, as some inference clients do)."""
    raw = header(request, b"content-type")
    if raw is None:
        return
    media = raw.split(";", 1)[0].strip().lower()
    if not _JSON_TYPE.match(media):
        raise UnsupportedMediaType(f"content type {media or raw!r} is not accepted here; send application/json",
                                   details={"content_type": media})


def refuse_cross_site(request: Request, cors_origins: Sequence[str]) -> None:
    """A browser names the page's origin on every cross-site POST; only this host and CORS origins may change state."""
    origin = header(request, b"origin")
    if origin is None or origin in cors_origins:
        return
    if origin == "null" or urlsplit(origin).netloc.lower() != (header(request, b"host") or "").lower():
        raise Forbidden(f"cross-site request from {origin!r} refused", details={"origin": origin})


# --- inputs -----------------------------------------------------------------------------------


PathCache = dict[tuple[tuple[str, Any], ...], BaseModel]
_PATHS_MAX = 4096  # distinct valid paths an endpoint remembers; past it its cache starts over


def _path(model: type[BaseModel] | None, params: dict[str, Any], cache: PathCache) -> BaseModel | None:
    """The path parameters validated; a valid result is remembered (validation is a pure function of them)."""
    if model is None:
        return None
    key = tuple(params.items())
    cached = cache.get(key)
    if cached is not None:
        return cached
    try:
        valid = model.model_validate(params)
    except ValidationError as exc:
        name = str(exc.errors()[0]["loc"][0])
        value = str(params.get(name, ""))[:64]
        raise NotFound(f"no {name} {value!r} here: {exc.errors()[0]['msg']}", details={"field": name}) from None
    if len(cache) >= _PATHS_MAX:
        cache.clear()
    cache[key] = valid
    return valid


def _query(model: type[BaseModel] | None, request: Request) -> BaseModel | None:
    if model is None:
        return None
    try:
        return model.model_validate(dict(request.query_params))
    except ValidationError as exc:
        raise _invalid(exc, prefix="") from None


def _body(model: type[BaseModel], body: Any, required: bool) -> BaseModel | None:
    if body is None and not required:
        body = {}
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise _invalid(exc, prefix="") from None


def _invalid(exc: ValidationError, *, prefix: str) -> ValidationFailed:
    errors = exc.errors(include_url=False, include_context=False, include_input=False)
    fields = [prefix + ".".join(str(p) for p in e["loc"]) or "body" for e in errors]
    return ValidationFailed(f"{fields[0]}: {errors[0]['msg']}", details={
        "field": fields[0], "errors": [{"field": f, "message": e["msg"]} for f, e in zip(fields, errors, strict=True)],
    })


NO_BODY: Any = object()  # what `read_json` returns for an empty body (as opposed to a JSON `null`)


async def read_json(request: Request, max_bytes: int, max_depth: int = 32) -> Any:
    """The request body parsed as JSON (`NO_BODY` when empty): 413 above `max_bytes`, 400 when not JSON or too deep."""
    declared = header(request, b"content-length")
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
        return NO_BODY
    return loads(raw, max_depth)


def loads(raw: bytes | str, max_depth: int = 32, *, what: str = "request body") -> Any:
    """`json.loads` (fast: `jsonio.loads`) that refuses NaN/Infinity and nesting deeper than `max_depth` with a `BadRequest`."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    if data.count(b"[") + data.count(b"{") > max_depth and _depth(data) > max_depth:
        raise BadRequest(f"{what} is JSON nested deeper than {max_depth} levels", details={"limit_depth": max_depth})
    try:
        return jsonio.loads(data, _reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BadRequest(f"{what} is not valid JSON: {exc}") from None


_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(rb"[\[\]{}]")


def _depth(data: bytes) -> int:
    """The deepest nesting of brackets outside strings (only run when there are enough brackets to matter)."""
    depth = deepest = 0
    for bracket in _BRACKETS.findall(_STRINGS.sub(b"", data)):
        if bracket in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def _reject_constant(name: str) -> float:
    # NaN/Infinity are not JSON; Python's parser accepts them unless told not to.
    raise ValueError(f"{name} is not valid JSON")
