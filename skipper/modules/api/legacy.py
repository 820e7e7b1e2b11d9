"""The original Skipper's REST contract (katanaml/katana-skipper `api/api/router.py`), for its clients.

- `POST tasks/execute_async` `{"task_type": "training", "payload": "<JSON params or empty>"}` trains
  `compat.default_workflow` (`tasks/{workflow}/execute_async` a named one): 202
  `{"task_id", "task_status": "Processing"}`.
- `GET tasks/{task_id}` is Skipper's own task route, with `task_status` and `outcome` added
  (`task_document` below): 202 while queued or running, 200 once finished.
- `POST tasks/execute_sync` `{"task_type": "serving", "payload": "...", "data": {feature: value}}`
  predicts with the default workflow's model (`tasks/{workflow}/execute_sync` a named one): 202
  `{"task_id": "-", "task_status": "Success", "outcome": "<the prediction as JSON>"}`.
A task type other than the route's is answered `{"task_id": "-", "task_status": "Wrong task type"}`,
as the original did. Outcomes are JSON strings (the original sent Python reprs).
"""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import JSONResponse, Response

from skipper.core.errors import BadRequest, ValidationFailed
from skipper.core.jsonio import FastJSONResponse
from skipper.core.pipeline import loads
from skipper.core.repositories import Task
from skipper.core.routing import Call, Endpoint
from skipper.modules.api.models import (
    OriginalPredictRequest,
    OriginalResult,
    OriginalTask,
    OriginalTrainRequest,
    WorkflowPath,
)
from skipper.modules.api.service import ApiService

TASK_STATUS = {"queued": "Processing", "running": "Processing", "succeeded": "Success", "failed": "Failure",
               "cancelled": "Revoked"}
WRONG_TASK_TYPE = {"task_id": "-", "task_status": "Wrong task type"}
ACCEPTED = 202  # the original answered 202 on all three routes


def task_document(task: Task) -> tuple[dict[str, Any], int]:
    """A task as `GET tasks/{task_id}` answers it, and the status code: 202 until it finished, then 200."""
    body = task.to_json()
    body["task_status"] = TASK_STATUS[task.status]
    if task.status in ("queued", "running"):
        return body, ACCEPTED
    if task.status == "succeeded":
        body["outcome"] = json.dumps(task.result)
    else:
        body["outcome"] = str((task.error or {}).get("message") or task.status)
    return body, 200


class LegacyRoutes:
    def __init__(self, service: ApiService, max_json_depth: int, default_workflow: str) -> None:
        self._service = service
        self._max_depth = max_json_depth
        self._default = default_workflow

    def routes(self) -> list[Endpoint]:
        tags = ("original Skipper",)
        train_errors = {429: "Too many tasks queued", 503: "The broker is unavailable"}
        predict_errors = {503: "No version trained yet or no server available", 504: "No server replied in time"}
        train = "(original Skipper) queue training; the payload string holds JSON train params, empty for the defaults."
        predict = "(original Skipper) predict one row given as {feature: value} in `data`; outcome is JSON."
        return [
            Endpoint("POST", "/tasks/execute_async", self.execute_async, scope="train", body=OriginalTrainRequest,
                     body_required=True, responses={202: OriginalTask}, errors=train_errors, tags=tags,
                     summary=train + " Trains compat.default_workflow."),
            Endpoint("POST", "/tasks/{workflow}/execute_async", self.execute_async, scope="train",
                     path_params=WorkflowPath, body=OriginalTrainRequest, body_required=True,
                     responses={202: OriginalTask}, errors=train_errors, tags=tags, summary=train),
            Endpoint("POST", "/tasks/execute_sync", self.execute_sync, scope="predict", body=OriginalPredictRequest,
                     body_required=True, responses={202: OriginalResult}, errors=predict_errors, tags=tags,
                     summary=predict + " Uses compat.default_workflow's model."),
            Endpoint("POST", "/tasks/{workflow}/execute_sync", self.execute_sync, scope="predict",
                     path_params=WorkflowPath, body=OriginalPredictRequest, body_required=True,
                     responses={202: OriginalResult}, errors=predict_errors, tags=tags, summary=predict),
        ]

    async def execute_async(self, call: Call[WorkflowPath | None, None, OriginalTrainRequest]) -> Response:
        if call.body.task_type != "training":
            return JSONResponse(WRONG_TASK_TYPE, status_code=ACCEPTED)
        workflow = call.path.workflow if call.path is not None else self._default
        params = self._json(call.body.payload)
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise ValidationFailed("payload must hold a JSON object of training params", details={"field": "payload"})
        task = await self._service.train(workflow, {"params": params.get("params", params)},
                                         actor=call.principal.name, correlation_id=call.correlation_id)
        return JSONResponse({"task_id": task.task_id, "task_status": TASK_STATUS[task.status]}, status_code=ACCEPTED)

    async def execute_sync(self, call: Call[WorkflowPath | None, None, OriginalPredictRequest]) -> Response:
        if call.body.task_type != "serving":
            return JSONResponse(WRONG_TASK_TYPE, status_code=ACCEPTED)
        workflow = self._service.workflow(call.path.workflow if call.path is not None else self._default)
        data = call.body.data if call.body.data is not None else self._json(call.body.payload)
        if data is None:
            raise ValidationFailed("data must hold the row to predict, as {feature: value}", details={"field": "data"})
        if isinstance(data, dict) and "instances" in data:
            body = data
        elif isinstance(data, list) and data and isinstance(data[0], (list, dict)):
            body = {"instances": data}
        else:
            body = {"instances": [data]}
        reply = await self._service.predict(workflow.model, body, correlation_id=call.correlation_id)
        return FastJSONResponse({"task_id": "-", "task_status": "Success", "outcome": json.dumps(reply)},
                                status_code=ACCEPTED)

    def _json(self, payload: str) -> Any:
        """The payload string decoded as JSON (None when empty)."""
        if not payload.strip():
            return None
        try:
            return loads(payload, self._max_depth, what="payload")
        except BadRequest as exc:  # the body was JSON; the string inside it is the invalid input
            raise ValidationFailed(exc.message, details={"field": "payload"}) from None
