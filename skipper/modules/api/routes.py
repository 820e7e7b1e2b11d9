"""The api's HTTP endpoints: workflows, tasks, models, predictions."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from prometheus_client import Counter, Histogram
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from skipper.core import artifacts, contracts
from skipper.core.bus import Transport
from skipper.core.errors import Conflict, ModelNotReady, NotFound, SkipperError, Unavailable
from skipper.core.events import EventEmitter
from skipper.core.http import paging, read_json, request_correlation_id
from skipper.core.messages import Message, new_id
from skipper.core.repositories import ModelRegistry, Task, TaskRepository
from skipper.core.settings import Settings, Workflow
from skipper.modules.api.artifacts import ArtifactStore
from skipper.modules.api.coalesce import PredictCoalescer
from skipper.modules.api.registry import RegistryService
from skipper.modules.api.validation import parse_instances, resolve_params

PREDICTIONS = Counter("skipper_predictions_total", "Prediction requests by model and outcome", ["model", "outcome"])
PREDICT_SECONDS = Histogram("skipper_predict_seconds", "Prediction request latency at the api", ["model"])
TRAIN_REQUESTS = Counter("skipper_train_requests_total", "Train requests by workflow", ["workflow"])


class ModelSchemas:
    """Feature names of each model's production version, cached for the predict hot path."""

    def __init__(self, registry: ModelRegistry, workflows: dict[str, Workflow]) -> None:
        self._registry = registry
        self._known = {w.model for w in workflows.values()}
        self._features: dict[str, list[str]] = {}

    def update(self, model: str, metadata: dict[str, Any]) -> None:
        if metadata.get("features"):
            self._features[model] = list(metadata["features"])
            self._known.add(model)

    async def features(self, model: str) -> list[str]:
        cached = self._features.get(model)
        if cached is not None:
            return cached
        versions = await asyncio.to_thread(self._registry.production, model)
        if versions:
            self.update(model, versions[0].metadata)
            return self._features[model]
        if model in self._known:
            raise ModelNotReady(f"model {model!r} has no trained version yet; train its workflow first",
                                details={"model": model})
        raise NotFound(f"unknown model {model!r}", details={"model": model})


class ApiRoutes:
    def __init__(self, *, settings: Settings, bus: Transport, events: EventEmitter, tasks: TaskRepository,
                 registry: ModelRegistry, store: ArtifactStore, service: RegistryService) -> None:
        self._settings = settings
        self._bus = bus
        self._events = events
        self._tasks = tasks
        self._registry = registry
        self._store = store
        self._service = service
        self.schemas = ModelSchemas(registry, settings.workflows)
        # In-process the server batches by itself; across a broker, fewer and larger bus requests pay.
        self._coalescer = (
            PredictCoalescer(self._request_rows, max_rows=settings.serving.max_batch_size,
                             pipeline=settings.http.predict_pipeline)
            if settings.transport != "memory" else None
        )

    def routes(self) -> list[BaseRoute]:
        return [
            # The hot path first: Starlette tries routes in order.
            Route("/models/{model}/predict", self.predict, methods=["POST"]),
            Route("/workflows", self.list_workflows, methods=["GET"]),
            Route("/workflows/{workflow}", self.get_workflow, methods=["GET"]),
            Route("/workflows/{workflow}/train", self.train, methods=["POST"]),
            Route("/tasks", self.list_tasks, methods=["GET"]),
            Route("/tasks/{task_id}", self.get_task, methods=["GET"]),
            Route("/tasks/{task_id}", self.cancel_task, methods=["DELETE"]),
            Route("/models", self.list_models, methods=["GET"]),
            Route("/models/{model}", self.get_model, methods=["GET"]),
            Route("/models/{model}/versions/{version:int}/deploy", self.deploy, methods=["POST"]),
            Route("/models/{model}/versions/{version:int}/artifact", self.artifact, methods=["GET"]),
        ]

    # --- workflows and training -----------------------------------------------------------

    def workflow(self, name: str) -> Workflow:
        try:
            return self._settings.workflows[name]
        except KeyError:
            raise NotFound(f"unknown workflow {name!r}", details={"workflow": name,
                                                                  "workflows": sorted(self._settings.workflows)}) from None

    async def list_workflows(self, request: Request) -> Response:
        """
        summary: 'The workflows this deployment can train.'
        responses: {200: {description: '{"workflows": [...]}'}}
        """
        return JSONResponse({"workflows": [_workflow_json(n, w) for n, w in self._settings.workflows.items()]})

    async def get_workflow(self, request: Request) -> Response:
        """
        summary: 'One workflow with its default parameters.'
        responses: {200: {description: workflow}, 404: {description: unknown workflow}}
        """
        name = request.path_params["workflow"]
        return JSONResponse(_workflow_json(name, self.workflow(name)))

    async def train(self, request: Request) -> Response:
        """
        summary: 'Queue a training task. Body {"params": {...}} overrides the workflow''s defaults.'
        requestBody: {content: {application/json: {schema: {type: object, properties: {params: {type: object}}}}}}
        responses:
          202: {description: '{"task_id", "status": "queued", "workflow", "params"}'}
          404: {description: unknown workflow}
          422: {description: bad params, naming the field}
          503: {description: the broker is unavailable; nothing was queued}
        """
        name = request.path_params["workflow"]
        workflow = self.workflow(name)
        params = resolve_params(workflow, await read_json(request, self._settings.http.max_body_bytes))
        task = await self.submit_training(name, params.model_dump(), request_correlation_id(request))
        return JSONResponse(
            {"task_id": task.task_id, "status": task.status, "workflow": name, "params": task.params,
             "links": {"self": f"{request.url.path.rsplit('/workflows', 1)[0]}/tasks/{task.task_id}"}},
            status_code=202,
        )

    async def submit_training(self, workflow: str, params: dict[str, Any], correlation_id: str) -> Task:
        """Record the task, then send the command; if sending fails the task is failed, not lost."""
        task_id = new_id()
        task = await asyncio.to_thread(self._tasks.create, task_id, workflow, params, correlation_id)
        command = Message(type=contracts.TRAIN_COMMAND, body={"task_id": task_id, "workflow": workflow, "params": params},
                          headers={"task_id": task_id}, correlation_id=correlation_id)
        try:
            await self._bus.send(contracts.TRAIN, command)
        except SkipperError as exc:
            error = {"code": exc.code, "message": f"could not queue the task: {exc.message}", "details": {}}
            await asyncio.to_thread(self._tasks.finish, task_id, "failed", error=error)
            raise Unavailable(f"training is unavailable: {exc.message}", details={"task_id": task_id}) from exc
        TRAIN_REQUESTS.labels(workflow).inc()
        await self._events.emit("task.queued", task_id=task_id, correlation_id=correlation_id, workflow=workflow,
                                params=params)
        return task

    # --- tasks ----------------------------------------------------------------------------

    async def list_tasks(self, request: Request) -> Response:
        """
        summary: 'Tasks, newest first; filter by workflow and status; paged with limit and offset.'
        parameters:
          - {name: workflow, in: query, schema: {type: string}}
          - {name: status, in: query, schema: {type: string, enum: [queued, running, succeeded, failed, cancelled]}}
          - {name: limit, in: query, schema: {type: integer}}
          - {name: offset, in: query, schema: {type: integer}}
        responses: {200: {description: '{"tasks": [...], "total", "limit", "offset"}'}}
        """
        limit, offset = paging(request, maximum=self._settings.http.page_size_max)
        q = request.query_params
        tasks, total = await asyncio.to_thread(self._tasks.list, workflow=q.get("workflow"), status=q.get("status"),
                                               limit=limit, offset=offset)
        return JSONResponse({"tasks": [t.to_json() for t in tasks], "total": total, "limit": limit, "offset": offset})

    async def task(self, task_id: str) -> Task:
        return await asyncio.to_thread(self._tasks.get, task_id)

    async def get_task(self, request: Request) -> Response:
        """
        summary: 'One task with its status, progress (epoch, loss, metrics), result and error.'
        responses: {200: {description: task}, 404: {description: unknown task}}
        """
        return JSONResponse((await self.task(request.path_params["task_id"])).to_json())

    async def cancel_task(self, request: Request) -> Response:
        """
        summary: 'Cancel a queued or running task; a running one stops at its next epoch.'
        responses:
          200: {description: the cancelled task}
          404: {description: unknown task}
          409: {description: already finished}
        """
        task = await self.cancel(request.path_params["task_id"], request_correlation_id(request))
        return JSONResponse(task.to_json())

    async def cancel(self, task_id: str, correlation_id: str) -> Task:
        error = {"code": "cancelled", "message": "cancelled by request", "details": {}}
        if not await asyncio.to_thread(self._tasks.finish, task_id, "cancelled", error=error):
            task = await asyncio.to_thread(self._tasks.get, task_id)
            raise Conflict(f"task {task_id} already {task.status}", details={"status": task.status})
        await self._bus.publish(contracts.TASK_CANCELLED, Message(type=contracts.TASK_CANCELLED,
                                                                  body={"task_id": task_id}, correlation_id=correlation_id))
        await self._events.emit("task.cancelled", task_id=task_id, correlation_id=correlation_id)
        return await asyncio.to_thread(self._tasks.get, task_id)

    # --- models ---------------------------------------------------------------------------

    async def list_models(self, request: Request) -> Response:
        """
        summary: 'Every model with its number of versions and its production version.'
        responses: {200: {description: '{"models": [...]}'}}
        """
        return JSONResponse({"models": await asyncio.to_thread(self._registry.models)})

    async def get_model(self, request: Request) -> Response:
        """
        summary: 'One model''s versions with metrics; `production` marks the served one.'
        responses: {200: {description: '{"model", "production_version", "versions": [...]}'}, 404: {description: unknown model}}
        """
        model = request.path_params["model"]
        versions = await asyncio.to_thread(self._registry.versions, model)
        production = next((v.version for v in versions if v.production), None)
        return JSONResponse({"model": model, "production_version": production,
                             "versions": [v.to_json() for v in versions]})

    async def deploy(self, request: Request) -> Response:
        """
        summary: 'Make a version production (promote or roll back) and broadcast it to every server.'
        responses: {200: {description: the deployed version}, 404: {description: unknown model or version}}
        """
        model, version = request.path_params["model"], request.path_params["version"]
        deployed = await asyncio.to_thread(self._registry.deploy, model, version)
        self.schemas.update(model, deployed.metadata)
        await self._service.announce(deployed, request_correlation_id(request))
        return JSONResponse(deployed.to_json())

    async def artifact(self, request: Request) -> Response:
        """
        summary: 'Download a version''s artifact (tar.gz of model.keras + skipper.json).'
        responses: {200: {description: the archive}, 404: {description: unknown model or version}}
        """
        version = await asyncio.to_thread(self._registry.get, request.path_params["model"], request.path_params["version"])
        data = await asyncio.to_thread(self._store.read, version.path)
        filename = f"{version.model}-v{version.version}.tar.gz"
        return Response(data, media_type=artifacts.MEDIA_TYPE, headers={
            "content-disposition": f'attachment; filename="{filename}"', "x-sha256": version.sha256})

    async def predict(self, request: Request) -> Response:
        """
        summary: 'Predict with the production version. Rows as lists in feature order or {feature: value} objects.'
        requestBody: {content: {application/json: {schema: {type: object, properties: {instances: {type: array}}}}}}
        responses:
          200: {description: '{"predictions": [...], "model", "model_version"}'}
          400: {description: malformed JSON}
          404: {description: unknown model}
          413: {description: body too large}
          422: {description: wrong feature count, unknown feature, non-numeric or non-finite value}
          503: {description: no version trained yet, or no server available}
          504: {description: no server replied in time}
        """
        model = request.path_params["model"]
        started = time.perf_counter()
        try:
            body = await read_json(request, self._settings.http.max_body_bytes)
            rows = parse_instances(body, await self.schemas.features(model), self._settings.http.max_instances)
            reply = await self.predict_rows(model, rows, request_correlation_id(request))
        except SkipperError as exc:
            PREDICTIONS.labels(model, exc.code).inc()
            raise
        PREDICTIONS.labels(model, "ok").inc()
        PREDICT_SECONDS.labels(model).observe(time.perf_counter() - started)
        return JSONResponse(reply)

    async def predict_rows(self, model: str, rows: list[list[float]], correlation_id: str) -> dict[str, Any]:
        if self._coalescer is not None:
            return await self._coalescer.predict(model, rows, correlation_id)
        return await self._request_rows(model, rows, correlation_id)

    async def _request_rows(self, model: str, rows: list[list[float]], correlation_id: str) -> dict[str, Any]:
        msg = Message(type=contracts.PREDICT_REQUEST, body={"model": model, "instances": rows},
                      correlation_id=correlation_id)
        reply = await self._bus.request(contracts.predict_queue(model), msg, timeout=self._settings.http.predict_timeout_s)
        return reply.data


def _workflow_json(name: str, workflow: Workflow) -> dict[str, Any]:
    return {"name": name, "description": workflow.description, "model": workflow.model, "kind": workflow.kind,
            "dataset": workflow.dataset.model_dump(exclude_none=True), "params": workflow.params.model_dump()}
