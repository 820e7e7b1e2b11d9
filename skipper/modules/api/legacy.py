"""The original Skipper's task routes, kept for its clients.

Shapes: requests `{"task_type": ..., "payload": <object or JSON string>}`; responses
`{"task_id", "task_status"}` with Celery-style statuses, plus `"outcome"` once known.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from skipper.core.errors import BadRequest, NotFound, ValidationFailed
from skipper.core.http import read_json, request_correlation_id
from skipper.core.messages import new_id
from skipper.modules.api.routes import ApiRoutes
from skipper.modules.api.validation import parse_instances, resolve_params

CELERY_STATUS = {"queued": "PENDING", "running": "STARTED", "succeeded": "SUCCESS", "failed": "FAILURE",
                 "cancelled": "REVOKED"}


class LegacyRoutes:
    def __init__(self, api: ApiRoutes, max_body_bytes: int, max_instances: int) -> None:
        self._api = api
        self._max_body = max_body_bytes
        self._max_instances = max_instances

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/tasks/{workflow}/task_training", self.training, methods=["POST"]),
            Route("/tasks/{workflow}/task_predict", self.predict, methods=["POST"]),
            Route("/tasks/{workflow}/{task_id}", self.status, methods=["GET"]),
        ]

    async def training(self, request: Request) -> Response:
        """
        summary: '(original Skipper) queue training; payload holds the params.'
        responses: {202: {description: '{"task_id", "task_status": "PENDING"}'}}
        """
        name = request.path_params["workflow"]
        workflow = self._api.workflow(name)
        payload = _payload(await read_json(request, self._max_body))
        params_body = {"params": payload.get("params", payload)} if isinstance(payload, dict) else None
        params = resolve_params(workflow, params_body)
        task = await self._api.submit_training(name, params.model_dump(), request_correlation_id(request))
        return JSONResponse({"task_id": task.task_id, "task_status": CELERY_STATUS[task.status]}, status_code=202)

    async def status(self, request: Request) -> Response:
        """
        summary: '(original Skipper) a training task''s status and outcome.'
        responses: {200: {description: '{"task_id", "task_status", "outcome"}'}}
        """
        task = await self._api.task(request.path_params["task_id"])
        if task.workflow != request.path_params["workflow"]:
            raise NotFound(f"task {task.task_id} does not belong to workflow {request.path_params['workflow']!r}")
        outcome: Any = task.result if task.status == "succeeded" else (task.error or {}).get("message")
        return JSONResponse({"task_id": task.task_id, "task_status": CELERY_STATUS[task.status], "outcome": outcome})

    async def predict(self, request: Request) -> Response:
        """
        summary: '(original Skipper) synchronous prediction with the workflow''s model.'
        responses: {200: {description: '{"task_id", "task_status": "SUCCESS", "outcome": {"predictions", ...}}'}}
        """
        workflow = self._api.workflow(request.path_params["workflow"])
        payload = _payload(await read_json(request, self._max_body))
        if isinstance(payload, dict) and "instances" not in payload:
            payload = {"instances": [payload]}
        elif isinstance(payload, list):
            payload = {"instances": payload if payload and isinstance(payload[0], (list, dict)) else [payload]}
        rows = parse_instances(payload, await self._api.schemas.features(workflow.model), self._max_instances)
        outcome = await self._api.predict_rows(workflow.model, rows, request_correlation_id(request))
        return JSONResponse({"task_id": new_id(), "task_status": "SUCCESS", "outcome": outcome})


def _payload(body: Any) -> Any:
    """The `payload` of an original-style request, decoding it when it was sent as a JSON string."""
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise ValidationFailed("request body must be a JSON object with a 'payload'", details={"field": "payload"})
    payload = body.get("payload", {k: v for k, v in body.items() if k != "task_type"})
    if isinstance(payload, str):
        try:
            payload = json.loads(payload) if payload.strip() else {}
        except ValueError as exc:
            raise BadRequest(f"payload is not valid JSON: {exc}") from None
    return payload
