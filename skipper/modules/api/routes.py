"""The api's native HTTP endpoints: workflows, tasks, models, predictions. Thin: the service does the work."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse, Response

from skipper.core import artifacts
from skipper.core.jsonio import FastJSONResponse
from skipper.core.routing import Call, Endpoint, Reply
from skipper.core.settings import Workflow
from skipper.modules.api.legacy import task_document
from skipper.modules.api.models import (
    ModelList,
    ModelOut,
    ModelPath,
    Prediction,
    PredictRequest,
    ServerList,
    TaskList,
    TaskOut,
    TaskPath,
    TasksQuery,
    TaskStatus,
    TrainAccepted,
    TrainRequest,
    VersionOut,
    VersionPath,
    WorkflowList,
    WorkflowOut,
    WorkflowPath,
)
from skipper.modules.api.service import ApiService


class ApiRoutes:
    """The api's own endpoints under the API base."""

    def __init__(self, service: ApiService) -> None:
        self._service = service

    def routes(self) -> list[Endpoint]:
        return [
            # The hot path first: Starlette tries routes in order.
            Endpoint("POST", "/models/{model}/predict", self.predict, scope="predict", path_params=ModelPath,
                     body=PredictRequest, body_required=True, validate_body=False, responses={200: Prediction},
                     errors={503: "No version trained yet, no server available, or the model's queue is full",
                             504: "No server replied in time"},
                     summary="Predict with the production version. Rows in feature order or {feature: value} objects."),
            Endpoint("GET", "/workflows", self.list_workflows, scope="read", responses={200: WorkflowList},
                     summary="The workflows this deployment can train."),
            Endpoint("GET", "/workflows/{workflow}", self.get_workflow, scope="read", path_params=WorkflowPath,
                     responses={200: WorkflowOut}, summary="One workflow with its default parameters."),
            Endpoint("POST", "/workflows/{workflow}/train", self.train, scope="train", path_params=WorkflowPath,
                     body=TrainRequest, validate_body=False, responses={202: TrainAccepted},
                     errors={429: "Too many tasks queued (limits.max_queued_tasks)",
                             503: "The broker is unavailable; nothing was queued"},
                     summary="Queue a training task; params override the workflow's defaults within limits.*."),
            Endpoint("GET", "/tasks", self.list_tasks, scope="read", query=TasksQuery, responses={200: TaskList},
                     summary="Tasks, newest first; filter by workflow and status; paged with limit and offset."),
            Endpoint("GET", "/tasks/{task_id}", self.get_task, scope="read", path_params=TaskPath,
                     responses={200: TaskStatus, 202: TaskStatus},
                     summary="One task with its status, progress, result and error; 202 until it finished, then 200 "
                             "(the original Skipper's `task_status` and `outcome` included)."),
            Endpoint("DELETE", "/tasks/{task_id}", self.cancel_task, scope="train", path_params=TaskPath,
                     responses={200: TaskOut}, errors={409: "The task has already finished"},
                     summary="Cancel a queued or running task; a running one stops at its next epoch."),
            Endpoint("GET", "/models", self.list_models, scope="read", responses={200: ModelList},
                     summary="Every model with its number of versions and its production version."),
            Endpoint("GET", "/models/{model}", self.get_model, scope="read", path_params=ModelPath,
                     responses={200: ModelOut}, summary="One model's versions with metrics; production marks the served one."),
            Endpoint("POST", "/models/{model}/versions/{version}/deploy", self.deploy, scope="deploy",
                     path_params=VersionPath, responses={200: VersionOut},
                     summary="Make a version production (promote or roll back) and broadcast it to every server."),
            Endpoint("GET", "/models/{model}/versions/{version}/artifact", self.artifact, scope="deploy",
                     path_params=VersionPath,
                     responses={200: Reply(description="tar.gz of model.keras + skipper.json", media_type=artifacts.MEDIA_TYPE)},
                     summary="Download a version's artifact."),
            Endpoint("GET", "/servers", self.list_servers, scope="read", responses={200: ServerList},
                     summary="The serving replicas heard from lately and the model versions each serves."),
        ]

    async def list_workflows(self, call: Call[None, None, None]) -> Response:
        return JSONResponse({"workflows": [_workflow_json(n, w) for n, w in self._service.workflows.items()]})

    async def get_workflow(self, call: Call[WorkflowPath, None, None]) -> Response:
        name = call.path.workflow
        return JSONResponse(_workflow_json(name, self._service.workflow(name)))

    async def train(self, call: Call[WorkflowPath, None, Any]) -> Response:
        name = call.path.workflow
        task = await self._service.train(name, call.body, actor=call.principal.name, correlation_id=call.correlation_id)
        base = call.request.url.path.rsplit("/workflows", 1)[0]
        return JSONResponse({"task_id": task.task_id, "status": task.status, "workflow": name, "params": task.params,
                             "links": {"self": f"{base}/tasks/{task.task_id}"}}, status_code=202)

    async def list_tasks(self, call: Call[None, TasksQuery, None]) -> Response:
        q = call.query
        page = await self._service.tasks(workflow=q.workflow, status=q.status, limit=q.limit, offset=q.offset)
        return JSONResponse({"tasks": [t.to_json() for t in page.tasks], "total": page.total, "limit": page.limit,
                             "offset": page.offset})

    async def get_task(self, call: Call[TaskPath, None, None]) -> Response:
        body, status = task_document(await self._service.task(call.path.task_id))
        return JSONResponse(body, status_code=status)

    async def cancel_task(self, call: Call[TaskPath, None, None]) -> Response:
        task = await self._service.cancel(call.path.task_id, actor=call.principal.name, correlation_id=call.correlation_id)
        return JSONResponse(task.to_json())

    async def list_models(self, call: Call[None, None, None]) -> Response:
        return JSONResponse({"models": await self._service.models()})

    async def get_model(self, call: Call[ModelPath, None, None]) -> Response:
        model = call.path.model
        versions = await self._service.versions(model)
        production = next((v.version for v in versions if v.production), None)
        return JSONResponse({"model": model, "production_version": production,
                             "versions": [v.to_json() for v in versions]})

    async def deploy(self, call: Call[VersionPath, None, None]) -> Response:
        deployed = await self._service.deploy(call.path.model, call.path.version, actor=call.principal.name,
                                              correlation_id=call.correlation_id)
        return JSONResponse(deployed.to_json())

    async def artifact(self, call: Call[VersionPath, None, None]) -> Response:
        version, data = await self._service.artifact(call.path.model, call.path.version)
        filename = f"{version.model}-v{version.version}.tar.gz"
        return Response(data, media_type=artifacts.MEDIA_TYPE, headers={
            "content-disposition": f'attachment; filename="{filename}"', "x-sha256": version.sha256})

    async def list_servers(self, call: Call[None, None, None]) -> Response:
        return JSONResponse({"servers": self._service.servers()})

    async def predict(self, call: Call[ModelPath, None, Any]) -> Response:
        return FastJSONResponse(await self._service.predict(call.path.model, call.body,
                                                            correlation_id=call.correlation_id))


def _workflow_json(name: str, workflow: Workflow) -> dict[str, Any]:
    return {"name": name, "description": workflow.description, "model": workflow.model, "kind": workflow.kind,
            "dataset": workflow.dataset.model_dump(exclude_none=True), "params": workflow.params.model_dump()}
