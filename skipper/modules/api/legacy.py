"""The original Skipper's task routes, kept for its clients.

Shapes: requests `{"task_type": ..., "payload": <object or JSON string>}`; responses
`{"task_id", "task_status"}` with Celery-style statuses, plus `"outcome"` once known.
A request without a payload, or with one that is not JSON or not an object of params, is a
422: never a default training.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse, Response

from skipper.core.errors import BadRequest, NotFound, ValidationFailed
from skipper.core.messages import new_id
from skipper.core.pipeline import loads
from skipper.core.routing import Call, Endpoint
from skipper.modules.api.models import LegacyRequest, LegacyTask, LegacyTaskPath, WorkflowPath
from skipper.modules.api.service import ApiService

CELERY_STATUS = {"queued": "PENDING", "running": "STARTED", "succeeded": "SUCCESS", "failed": "FAILURE",
                 "cancelled": "REVOKED"}


class LegacyRoutes:
    def __init__(self, service: ApiService, max_json_depth: int) -> None:
        self._service = service
        self._max_depth = max_json_depth

    def routes(self) -> list[Endpoint]:
        legacy = ("original Skipper",)
        return [
            Endpoint("POST", "/tasks/{workflow}/task_training", self.training, scope="train", path_params=WorkflowPath,
                     body=LegacyRequest, body_required=True, responses={202: LegacyTask}, tags=legacy,
                     errors={429: "Too many tasks queued", 503: "The broker is unavailable"},
                     summary="(original Skipper) queue training; the payload holds the params."),
            Endpoint("POST", "/tasks/{workflow}/task_predict", self.predict, scope="predict", path_params=WorkflowPath,
                     body=LegacyRequest, body_required=True, responses={200: LegacyTask}, tags=legacy,
                     errors={503: "No version trained yet or no server available", 504: "No server replied in time"},
                     summary="(original Skipper) synchronous prediction with the workflow's model."),
            Endpoint("GET", "/tasks/{workflow}/{task_id}", self.status, scope="read", path_params=LegacyTaskPath,
                     responses={200: LegacyTask}, tags=legacy,
                     summary="(original Skipper) a training task's status and outcome."),
        ]

    async def training(self, call: Call[WorkflowPath, None, LegacyRequest]) -> Response:
        payload = self._payload(call.body)
        if not isinstance(payload, dict):
            raise ValidationFailed("payload must be an object of training params", details={"field": "payload"})
        task = await self._service.train(call.path.workflow, {"params": payload.get("params", payload)},
                                         actor=call.principal.name, correlation_id=call.correlation_id)
        return JSONResponse({"task_id": task.task_id, "task_status": CELERY_STATUS[task.status]}, status_code=202)

    async def status(self, call: Call[LegacyTaskPath, None, None]) -> Response:
        task = await self._service.task(call.path.task_id)
        if task.workflow != call.path.workflow:
            raise NotFound(f"task {task.task_id} does not belong to workflow {call.path.workflow!r}")
        outcome: Any = task.result if task.status == "succeeded" else (task.error or {}).get("message")
        return JSONResponse({"task_id": task.task_id, "task_status": CELERY_STATUS[task.status], "outcome": outcome})

    async def predict(self, call: Call[WorkflowPath, None, LegacyRequest]) -> Response:
        workflow = self._service.workflow(call.path.workflow)
        payload = self._payload(call.body)
        if isinstance(payload, dict) and "instances" not in payload:
            payload = {"instances": [payload]}
        elif isinstance(payload, list):
            payload = {"instances": payload if payload and isinstance(payload[0], (list, dict)) else [payload]}
        outcome = await self._service.predict(workflow.model, payload, correlation_id=call.correlation_id)
        return JSONResponse({"task_id": new_id(), "task_status": "SUCCESS", "outcome": outcome})

    def _payload(self, body: LegacyRequest) -> Any:
        """The payload, decoded when it was sent as a JSON string (as the original clients did)."""
        if not isinstance(body.payload, str):
            return body.payload
        try:
            return loads(body.payload, self._max_depth, what="payload") if body.payload.strip() else {}
        except BadRequest as exc:  # the body was JSON; the string inside it is the invalid input
            raise ValidationFailed(exc.message, details={"field": "payload"}) from None
