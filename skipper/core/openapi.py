"""The OpenAPI 3.1 document, generated from the route declarations and their pydantic models.

Every path and query parameter, request body, success response and error status of a
declared route is in it, with the error schema of the route's group. The statuses that the
request pipeline itself produces are added from what the route declares: 401/403 where it
needs a scope, 415 and 413 where it changes state, 400 where it reads a body, 404 where it
has path parameters, 422 where it has query parameters or a body.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from skipper.core.auth import OPEN
from skipper.core.routing import Endpoint, Reply, RouteGroup

REF = "#/components/schemas/{model}"
STATUS_TEXT = {
    400: "Malformed request: not JSON, JSON nested too deep, or a Host header not allowed",
    401: "No API key, or an unknown one",
    403: "The API key lacks the scope this route needs, or a cross-site request",
    404: "A path parameter names nothing here",
    413: "Request body over http.max_body_bytes",
    415: "State changes accept application/json only",
    422: "Invalid input; details.field names it",
    429: "Too much work queued; retry after Retry-After seconds",
    503: "A dependency is unavailable; retry later",
    504: "No reply in time",
}


def document(groups: Sequence[RouteGroup], *, title: str, version: str, description: str = "") -> dict[str, Any]:
    """The OpenAPI document of every declared route that is `in_schema`."""
    routes = [(group, e) for group in groups for e in group.endpoints if e.in_schema]
    wanted: list[tuple[type[BaseModel], JsonSchemaMode]] = []
    for group, e in routes:
        wanted.append((group.errors.schema, "serialization"))
        wanted += [(m, "validation") for m in (e.path_params, e.query, e.body) if m is not None]
        wanted += [(m, "serialization") for m in _success_models(e)]
    refs, defs = models_json_schema(list(dict.fromkeys(wanted)), ref_template=REF)
    schemas: dict[str, Any] = defs.get("$defs", {})

    def ref(model: type[BaseModel], mode: JsonSchemaMode) -> dict[str, Any]:
        return dict(refs[(model, mode)])

    def fields(model: type[BaseModel]) -> dict[str, Any]:
        name = ref(model, "validation")["$ref"].rsplit("/", 1)[-1]
        return dict(schemas[name])

    paths: dict[str, dict[str, Any]] = {}
    for group, e in routes:
        path = re.sub(r"{([^}:]+):[^}]+}", r"{\1}", group.prefix + e.path)
        operation: dict[str, Any] = {
            "operationId": _operation_id(e.method, path),
            "summary": e.summary,
            "tags": list(e.tags) or [_tag(e.path)],
            "x-skipper-scope": e.scope,
            "security": [] if e.scope == OPEN else [{"apiKey": []}],
            "responses": _responses(e, ref(group.errors.schema, "serialization"), ref),
        }
        parameters = [*_parameters(e.path_params, "path", fields), *_parameters(e.query, "query", fields)]
        if parameters:
            operation["parameters"] = parameters
        if e.body is not None:
            operation["requestBody"] = {"required": e.body_required,
                                        "content": {"application/json": {"schema": ref(e.body, "validation")}}}
        paths.setdefault(path, {})[e.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": description},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer",
                                           "description": "An API key: Authorization: Bearer sk_..."}},
        },
    }


def _success_models(e: Endpoint) -> list[type[BaseModel]]:
    models = []
    for reply in e.responses.values():
        model = reply.model if isinstance(reply, Reply) else reply
        if model is not None:
            models.append(model)
    return models


def _parameters(model: type[BaseModel] | None, where: str, fields: Any) -> list[dict[str, Any]]:
    if model is None:
        return []
    schema = fields(model)
    required = set(schema.get("required", []))
    out = []
    for name, prop in schema.get("properties", {}).items():
        prop = dict(prop)
        description = prop.pop("description", None)
        parameter: dict[str, Any] = {"name": name, "in": where, "required": where == "path" or name in required,
                                     "schema": prop}
        if description:
            parameter["description"] = description
        out.append(parameter)
    return out


def _responses(e: Endpoint, error: dict[str, Any], ref: Any) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status, reply in sorted(e.responses.items()):
        reply = reply if isinstance(reply, Reply) else Reply(reply)
        content = ({"application/json": {"schema": ref(reply.model, "serialization")}} if reply.model is not None
                   else {reply.media_type: {"schema": {"type": "string"}}})
        responses[str(status)] = {"description": reply.description or (reply.model.__doc__ or "OK").strip().split("\n")[0],
                                  "content": content}
    errors = {400: STATUS_TEXT[400], **dict(e.errors)}
    if e.scope != OPEN:
        errors |= {401: STATUS_TEXT[401], 403: STATUS_TEXT[403]}
    if e.unsafe:
        errors |= {415: STATUS_TEXT[415]}
        errors.setdefault(403, STATUS_TEXT[403])
    if e.body is not None:
        errors |= {413: STATUS_TEXT[413]}
    if e.path_params is not None:
        errors.setdefault(404, STATUS_TEXT[404])
    if e.query is not None or e.body is not None:
        errors.setdefault(422, STATUS_TEXT[422])
    for status, text in sorted(errors.items()):
        responses.setdefault(str(status), {"description": text, "content": {"application/json": {"schema": error}}})
    return responses


def _operation_id(method: str, path: str) -> str:
    words = re.sub(r"[^A-Za-z0-9]+", "_", path.replace("/api/v1/skipper", "")).strip("_")
    return f"{method.lower()}_{words or 'root'}"


def _tag(path: str) -> str:
    first = path.strip("/").split("/", 1)[0]
    return first if first and not first.startswith("{") else "service"
