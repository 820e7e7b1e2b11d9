"""The api's service layer: what every HTTP surface calls (native routes, the original Skipper
contract, the inference protocols, the dashboard).

Routes only translate HTTP: they parse a request into these calls and render what comes back.
Validation against workflows, limits and feature schemas, the task table, the bus, audit
events and prediction metrics live here, once.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Histogram

from skipper.core import contracts
from skipper.core.bus import Transport
from skipper.core.contracts import EventKind, PredictRequest, TaskCancelled, TrainCommand
from skipper.core.errors import Conflict, ModelNotReady, NoConsumers, NotFound, SkipperError, TooManyRequests, Unavailable
from skipper.core.events import EventEmitter
from skipper.core.limits import check_train_limits
from skipper.core.messages import Message, new_id
from skipper.core.metrics import LATENCY_BUCKETS
from skipper.core.repositories import ModelRegistry, ModelVersion, Task, TaskRepository
from skipper.core.settings import Settings, Workflow
from skipper.modules.api.artifacts import ArtifactStore
from skipper.modules.api.coalesce import PredictCoalescer
from skipper.modules.api.registry import RegistryService
from skipper.modules.api.replicas import ReplicaView
from skipper.modules.api.schemas import ModelSchemas
from skipper.modules.api.validation import parse_instances, resolve_params

PREDICTIONS = Counter("skipper_predictions_total", "Prediction requests by model and outcome", ["model", "outcome"])
PREDICT_SECONDS = Histogram("skipper_predict_seconds", "Prediction request latency at the api", ["model"],
                            buckets=LATENCY_BUCKETS)
TRAIN_REQUESTS = Counter("skipper_train_requests_total", "Train requests by workflow", ["workflow"])
OTHER_MODEL = "_other"  # the label of every model name no workflow or registry knows: labels stay bounded
QUEUE_RETRY_AFTER_S = 5.0


@dataclass(frozen=True, slots=True)
class TaskPage:
    """One page of the task list and how many tasks match in all."""

    tasks: list[Task]
    total: int
    limit: int
    offset: int


class ApiService:
    """Submit and cancel training, read tasks and models, deploy, download, predict."""

    def __init__(self, *, settings: Settings, bus: Transport, events: EventEmitter, tasks: TaskRepository,
                 registry: ModelRegistry, store: ArtifactStore, announcer: RegistryService,
                 replicas: ReplicaView | None = None) -> None:
        self._settings = settings
        self._bus = bus
        self._events = events
        self._tasks = tasks
        self._registry = registry
        self._store = store
        self._announcer = announcer
        self._replicas = replicas or ReplicaView(settings.bus.signing_key)
        self.schemas = ModelSchemas(registry, settings.workflows)
        self._version_metadata: dict[tuple[str, int], dict[str, Any]] = {}  # versions never change: cached for good
        self._ok_metrics: dict[str, tuple[Counter, Histogram]] = {}  # a model served is a known model: bounded
        # In-process the server batches by itself; across a broker, fewer and larger bus requests pay.
        self._coalescer = (
            PredictCoalescer(self._request_rows, max_rows=settings.serving.max_batch_size,
                             pipeline=settings.http.predict_pipeline or self._replicas.serving)
            if settings.transport != "memory" else None
        )

    # --- workflows and training -----------------------------------------------------------

    @property
    def workflows(self) -> dict[str, Workflow]:
        return self._settings.workflows

    def workflow(self, name: str) -> Workflow:
        """The workflow called `name`; `NotFound` naming the ones there are."""
        try:
            return self._settings.workflows[name]
        except KeyError:
            raise NotFound(f"unknown workflow {name!r}", details={"workflow": name,
                                                                  "workflows": sorted(self._settings.workflows)}) from None

    async def train(self, workflow: str, body: Any, *, actor: str, correlation_id: str) -> Task:
        """Validate a train request (`{"params": {...}}`) against the workflow and the limits, queue it, audit it."""
        declared = self.workflow(workflow)
        params = resolve_params(declared, body)
        check_train_limits(params, self._settings.limits_for(declared), n_inputs=self.schemas.width(declared.model))
        task = await self._submit(workflow, params.model_dump(), correlation_id)
        await self._audit("train", actor, correlation_id, task=task.task_id, workflow=workflow)
        return task

    async def _submit(self, workflow: str, params: dict[str, Any], correlation_id: str) -> Task:
        """Record the task, then send the command; if sending fails the task is failed, not lost."""
        limit = self._settings.limits.max_queued_tasks
        _, queued = await asyncio.to_thread(self._tasks.list, status="queued", limit=1)
        if queued >= limit:
            raise TooManyRequests(f"{queued} tasks are queued, the most limits.max_queued_tasks allows ({limit}); "
                                  "retry later", details={"limit": limit, "retry_after_s": QUEUE_RETRY_AFTER_S})
        task_id = new_id()
        task = await asyncio.to_thread(self._tasks.create, task_id, workflow, params, correlation_id)
        command = TrainCommand(task_id, workflow, params).message(correlation_id=correlation_id, headers={"task_id": task_id})
        try:
            await self._bus.send(contracts.TRAIN, command)
        except SkipperError as exc:
            error = {"code": exc.code, "message": f"could not queue the task: {exc.message}", "details": {}}
            await asyncio.to_thread(self._tasks.finish, task_id, "failed", error=error)
            raise Unavailable(f"training is unavailable: {exc.message}", details={"task_id": task_id}) from exc
        TRAIN_REQUESTS.labels(workflow).inc()
        await self._events.emit(EventKind.TASK_QUEUED, task_id=task_id, correlation_id=correlation_id, workflow=workflow,
                                params=params)
        return task

    # --- tasks ----------------------------------------------------------------------------

    async def task(self, task_id: str) -> Task:
        return await asyncio.to_thread(self._tasks.get, task_id)

    async def tasks(self, *, workflow: str | None, status: str | None, limit: int, offset: int) -> TaskPage:
        """A page of tasks, newest first; `limit` is capped by `http.page_size_max`."""
        limit = min(limit, self._settings.http.page_size_max)
        tasks, total = await asyncio.to_thread(self._tasks.list, workflow=workflow, status=status, limit=limit,
                                               offset=offset)
        return TaskPage(tasks, total, limit, offset)

    async def cancel(self, task_id: str, *, actor: str, correlation_id: str) -> Task:
        """Cancel a queued or running task (a running one stops at its next epoch); `Conflict` once finished."""
        error = {"code": "cancelled", "message": "cancelled by request", "details": {}}
        if not await asyncio.to_thread(self._tasks.finish, task_id, "cancelled", error=error):
            task = await asyncio.to_thread(self._tasks.get, task_id)
            raise Conflict(f"task {task_id} already {task.status}", details={"status": task.status})
        await self._bus.publish(contracts.TASK_CANCELLED, TaskCancelled(task_id).message(correlation_id=correlation_id))
        await self._events.emit(EventKind.TASK_CANCELLED, task_id=task_id, correlation_id=correlation_id)
        task = await asyncio.to_thread(self._tasks.get, task_id)
        await self._audit("cancel", actor, correlation_id, task=task.task_id, workflow=task.workflow)
        return task

    # --- models ---------------------------------------------------------------------------

    async def models(self) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self._registry.models)

    async def versions(self, model: str) -> list[ModelVersion]:
        """Every version of `model`, oldest first; `production` marks the served one."""
        return await asyncio.to_thread(self._registry.versions, model)

    async def version(self, model: str, version: int) -> ModelVersion:
        return await asyncio.to_thread(self._registry.get, model, version)

    async def deploy(self, model: str, version: int, *, actor: str, correlation_id: str) -> ModelVersion:
        """Make a version production (a promotion or a rollback) and broadcast it to every server."""
        deployed = await asyncio.to_thread(self._registry.deploy, model, version)
        self.schemas.update(model, deployed.metadata)
        await self._announcer.announce(deployed, correlation_id)
        await self._audit("deploy", actor, correlation_id, model=model, version=version)
        return deployed

    async def artifact(self, model: str, version: int) -> tuple[ModelVersion, bytes]:
        """A version and its archive's bytes."""
        found = await self.version(model, version)
        return found, await asyncio.to_thread(self._store.read, found.path)

    # --- servers --------------------------------------------------------------------------

    def servers(self) -> list[dict[str, Any]]:
        """The serving replicas heard from lately, with the model versions each serves."""
        return self._replicas.replicas()

    # --- predictions ----------------------------------------------------------------------

    def ready(self) -> bool:
        """Whether this api can take predictions now (its bus is connected)."""
        return self._bus.connected

    async def features(self, model: str, version: int | None = None) -> list[str]:
        """The feature names of the production version (or of `version`); `NotFound` or `ModelNotReady` otherwise."""
        if version is None:
            return await self.schemas.features(model)
        return list((await self.metadata(model, version)).get("features") or [])

    async def metadata(self, model: str, version: int) -> dict[str, Any]:
        """A version's artifact metadata (features, targets, kind, classes); `NotFound` for an unknown one."""
        cached = self._version_metadata.get((model, version))
        if cached is None:
            found = await self.version(model, version)
            cached = self._version_metadata[(model, version)] = found.metadata
        return cached

    async def production(self, model: str) -> ModelVersion:
        """The production version of `model`: `ModelNotReady` while none is trained, `NotFound` for an unknown model."""
        versions = await asyncio.to_thread(self._registry.production, model)
        if versions:
            return versions[0]
        if self.schemas.known(model):
            raise ModelNotReady(f"model {model!r} has no trained version yet; train its workflow first",
                                details={"model": model})
        raise NotFound(f"unknown model {model!r}", details={"model": model})

    async def served_version(self, model: str) -> int | None:
        """The version of `model` the servers hold (asking one of them over the bus), or None when none has it."""
        msg = Message(type=contracts.PREDICT_STATUS, body={"model": model})
        try:
            reply = await self._bus.request(contracts.predict_queue(model), msg,
                                            timeout=self._settings.http.predict_timeout_s)
        except SkipperError:  # no consumer, no answer in time, an error: not ready, whichever
            return None
        version = reply.data.get("version")
        return version if isinstance(version, int) else None

    async def predict(self, model: str, body: Any, *, correlation_id: str) -> dict[str, Any]:
        """Validate `{"instances": [...]}` against the model's features and predict; counted per model and outcome."""
        started = time.perf_counter()
        try:
            rows = parse_instances(body, await self.schemas.features(model), self._settings.http.max_instances)
        except SkipperError as exc:
            self._count_failure(model, exc)
            raise
        return await self.predict_rows(model, rows, correlation_id=correlation_id, started=started)

    async def predict_rows(self, model: str, rows: list[list[float]], *, correlation_id: str,
                           started: float | None = None, version: int | None = None) -> dict[str, Any]:
        """Predict already validated rows (in feature order): `{"predictions", "model", "model_version"}`.

        With a `version`, only a server holding that version answers (`ModelNotReady` otherwise).
        """
        started = time.perf_counter() if started is None else started
        try:
            if self._coalescer is not None:
                reply = await self._coalescer.predict(model, rows, correlation_id, version)
            else:
                reply = await self._request_rows(model, rows, correlation_id, version)
        except NoConsumers as exc:
            self._count_failure(model, exc)
            raise NoConsumers(f"no server has model {model!r} loaded", details={**exc.details, "model": model}) from None
        except SkipperError as exc:
            self._count_failure(model, exc)
            raise
        ok = self._ok_metrics.get(model)
        if ok is None:  # one `labels()` lookup per model, not two per request
            ok = self._ok_metrics[model] = (PREDICTIONS.labels(model, "ok"), PREDICT_SECONDS.labels(model))
        ok[0].inc()
        ok[1].observe(time.perf_counter() - started)
        return reply

    def rejected(self, model: str, exc: SkipperError) -> None:
        """Count a prediction request refused before it reached `predict_rows` (invalid input), like `predict` does."""
        self._count_failure(model, exc)

    def _count_failure(self, model: str, exc: SkipperError) -> None:
        PREDICTIONS.labels(model if self.schemas.known(model) else OTHER_MODEL, exc.code).inc()

    async def _request_rows(self, model: str, rows: list[list[float]], correlation_id: str,
                            version: int | None = None) -> dict[str, Any]:
        msg = PredictRequest(model, rows, version).message(correlation_id=correlation_id)
        reply = await self._bus.request(contracts.predict_queue(model), msg, timeout=self._settings.http.predict_timeout_s)
        return reply.data

    # --- audit ----------------------------------------------------------------------------

    async def _audit(self, action: str, actor: str, correlation_id: str, **fields: Any) -> None:
        """Record a state change with the name of the key that made it (never the key): `GET /events?kind=audit`.

        Kept out of the task's own timeline (no `task_id` on the event; `task` among its fields).
        """
        await self._events.emit(EventKind.AUDIT, correlation_id=correlation_id, action=action, key=actor, **fields)
