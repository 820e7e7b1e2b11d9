"""The api's HTTP endpoints: workflows, tasks, models, predictions."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from prometheus_client import Counter, Histogram
from starlette.responses import JSONResponse, Response

from skipper.core import artifacts, contracts
from skipper.core.bus import Transport
from skipper.core.errors import Conflict, ModelNotReady, NotFound, SkipperError, TooManyRequests, Unavailable
from skipper.core.events import EventEmitter
from skipper.core.limits import check_train_limits
from skipper.core.messages import Message, new_id
from skipper.core.repositories import ModelRegistry, Task, TaskRepository
from skipper.core.routing import Call, Endpoint, Reply
from skipper.core.settings import Settings, Workflow
from skipper.modules.api.artifacts import ArtifactStore
from skipper.modules.api.coalesce import PredictCoalescer
from skipper.modules.api.models import (
    ModelList,
    ModelOut,
    ModelPath,
    Prediction,
    PredictRequest,
    TaskList,
    TaskOut,
    TaskPath,
    TasksQuery,
    TrainAccepted,
    TrainRequest,
    VersionOut,
    VersionPath,
    WorkflowList,
    WorkflowOut,
    WorkflowPath,
)
from skipper.modules.api.registry import RegistryService
from skipper.modules.api.validation import parse_instances, resolve_params

PREDICTIONS = Counter("skipper_predictions_total", "Prediction requests by model and outcome", ["model", "outcome"])
OTHER_MODEL = "_other"  # the label of every model name no workflow or registry knows: labels stay bounded
QUEUE_RETRY_AFTER_S = 5.0
PREDICT_SECONDS = Histogram("skipper_predict_seconds", "Prediction request latency at the api", ["model"])
TRAIN_REQUESTS = Counter("skipper_train_requests_total", "Train requests by workflow", ["workflow"])


class ModelSchemas:
    """Feature names of each model's production version, cached for the predict hot path."""

    def __init__(self, registry: ModelRegistry, workflows: dict[str, Workflow]) -> None:
        self._registry = registry
        self._known = {w.model for w in workflows.values()}
        self._features: dict[str, list[str]] = {}

    def known(self, model: str) -> bool:
        """A model a workflow produces or the registry has served: safe to use as a metric label."""
        return model in self._known

    def width(self, model: str) -> int:
        """The production version's feature count when cached, else 1 (a lower bound for limits)."""
        return len(self._features.get(model) or ()) or 1

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
    """The api's endpoints and the service layer behind them (what the legacy routes call too)."""

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
                     responses={200: TaskOut}, summary="One task with its status, progress, result and error."),
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
        ]

    async def audit(self, call: Call[Any, Any, Any], action: str, **fields: Any) -> None:
        """Record a state change with the name of the key that made it (never the key): `GET /events?kind=audit`.

        Kept out of the task's own timeline (no `task_id` on the event; `task` among its fields).
        """
        await self._events.emit("audit", correlation_id=call.correlation_id, action=action, key=call.principal.name,
                                **fields)

    # --- workflows and training -----------------------------------------------------------

    def workflow(self, name: str) -> Workflow:
        try:
            return self._settings.workflows[name]
        except KeyError:
            raise NotFound(f"unknown workflow {name!r}", details={"workflow": name,
                                                                  "workflows": sorted(self._settings.workflows)}) from None

    async def list_workflows(self, call: Call[None, None, None]) -> Response:
        return JSONResponse({"workflows": [_workflow_json(n, w) for n, w in self._settings.workflows.items()]})

    async def get_workflow(self, call: Call[WorkflowPath, None, None]) -> Response:
        name = call.path.workflow
        return JSONResponse(_workflow_json(name, self.workflow(name)))

    async def train(self, call: Call[WorkflowPath, None, Any]) -> Response:
        name = call.path.workflow
        task = await self.accept_training(call, name, self.workflow(name), call.body)
        base = call.request.url.path.rsplit("/workflows", 1)[0]
        return JSONResponse({"task_id": task.task_id, "status": task.status, "workflow": name, "params": task.params,
                             "links": {"self": f"{base}/tasks/{task.task_id}"}}, status_code=202)

    async def accept_training(self, call: Call[Any, Any, Any], name: str, workflow: Workflow, body: Any) -> Task:
        """Validate a train request against the workflow and the limits, queue it, audit it."""
        params = resolve_params(workflow, body)
        check_train_limits(params, self._settings.limits_for(workflow), n_inputs=self.schemas.width(workflow.model))
        task = await self.submit_training(name, params.model_dump(), call.correlation_id)
        await self.audit(call, "train", task=task.task_id, workflow=name)
        return task

    async def submit_training(self, workflow: str, params: dict[str, Any], correlation_id: str) -> Task:
        """Record the task, then send the command; if sending fails the task is failed, not lost."""
        limit = self._settings.limits.max_queued_tasks
        _, queued = await asyncio.to_thread(self._tasks.list, status="queued", limit=1)
        if queued >= limit:
            raise TooManyRequests(f"{queued} tasks are queued, the most limits.max_queued_tasks allows ({limit}); "
                                  "retry later", details={"limit": limit, "retry_after_s": QUEUE_RETRY_AFTER_S})
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

    async def list_tasks(self, call: Call[None, TasksQuery, None]) -> Response:
        q = call.query
        limit = min(q.limit, self._settings.http.page_size_max)
        tasks, total = await asyncio.to_thread(self._tasks.list, workflow=q.workflow, status=q.status,
                                               limit=limit, offset=q.offset)
        return JSONResponse({"tasks": [t.to_json() for t in tasks], "total": total, "limit": limit, "offset": q.offset})

    async def task(self, task_id: str) -> Task:
        return await asyncio.to_thread(self._tasks.get, task_id)

    async def get_task(self, call: Call[TaskPath, None, None]) -> Response:
        return JSONResponse((await self.task(call.path.task_id)).to_json())

    async def cancel_task(self, call: Call[TaskPath, None, None]) -> Response:
        task = await self.cancel(call.path.task_id, call.correlation_id)
        await self.audit(call, "cancel", task=task.task_id, workflow=task.workflow)
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

    async def list_models(self, call: Call[None, None, None]) -> Response:
        return JSONResponse({"models": await asyncio.to_thread(self._registry.models)})

    async def get_model(self, call: Call[ModelPath, None, None]) -> Response:
        model = call.path.model
        versions = await asyncio.to_thread(self._registry.versions, model)
        production = next((v.version for v in versions if v.production), None)
        return JSONResponse({"model": model, "production_version": production,
                             "versions": [v.to_json() for v in versions]})

    async def deploy(self, call: Call[VersionPath, None, None]) -> Response:
        model, version = call.path.model, call.path.version
        deployed = await asyncio.to_thread(self._registry.deploy, model, version)
        self.schemas.update(model, deployed.metadata)
        await self._service.announce(deployed, call.correlation_id)
        await self.audit(call, "deploy", model=model, version=version)
        return JSONResponse(deployed.to_json())

    async def artifact(self, call: Call[VersionPath, None, None]) -> Response:
        version = await asyncio.to_thread(self._registry.get, call.path.model, call.path.version)
        data = await asyncio.to_thread(self._store.read, version.path)
        filename = f"{version.model}-v{version.version}.tar.gz"
        return Response(data, media_type=artifacts.MEDIA_TYPE, headers={
            "content-disposition": f'attachment; filename="{filename}"', "x-sha256": version.sha256})

    async def predict(self, call: Call[ModelPath, None, Any]) -> Response:
        model = call.path.model
        started = time.perf_counter()
        try:
            rows = parse_instances(call.body, await self.schemas.features(model), self._settings.http.max_instances)
            reply = await self.predict_rows(model, rows, call.correlation_id)
        except SkipperError as exc:
            PREDICTIONS.labels(model if self.schemas.known(model) else OTHER_MODEL, exc.code).inc()
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
        reply = await self._bus.request(contracts.PREDICT, msg, timeout=self._settings.http.predict_timeout_s)
        return reply.data


def _workflow_json(name: str, workflow: Workflow) -> dict[str, Any]:
    return {"name": name, "description": workflow.description, "model": workflow.model, "kind": workflow.kind,
            "dataset": workflow.dataset.model_dump(exclude_none=True), "params": workflow.params.model_dump()}
