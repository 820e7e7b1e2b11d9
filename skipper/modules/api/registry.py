"""The api's bus side: task lifecycle from trainers, the model registry, artifacts, dead letters."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from skipper.core import contracts, signing
from skipper.core.artifacts import sha256_of
from skipper.core.bus import Transport
from skipper.core.contracts import ClaimReply, EventKind, ModelAnnouncement, TaskCancelAck, TaskClaim, TaskFailed, TaskProgress
from skipper.core.errors import ArtifactRejected, ValidationFailed
from skipper.core.events import EventEmitter
from skipper.core.messages import Message
from skipper.core.repositories import ModelRegistry, ModelVersion, TaskRepository
from skipper.core.settings import Settings
from skipper.modules.api.artifacts import ArtifactStore

log = logging.getLogger("skipper.registry")


class RegistryService:
    """Answers the `registry` queue and announces production versions on `model.published`."""

    def __init__(self, *, settings: Settings, bus: Transport, events: EventEmitter, tasks: TaskRepository,
                 registry: ModelRegistry, store: ArtifactStore) -> None:
        self._settings = settings
        self._bus = bus
        self._events = events
        self._tasks = tasks
        self._registry = registry
        self._store = store
        self._inline_max = settings.bus.inline_artifact_max_bytes
        self._chunk = settings.bus.artifact_chunk_bytes
        self._handlers = {
            contracts.TASK_CLAIM: self._claim,
            contracts.TASK_PROGRESS: self._progress,
            contracts.TASK_FAILED: self._failed,
            contracts.TASK_CANCEL_ACK: self._cancel_ack,
            contracts.MODEL_ARTIFACT: self._artifact,
            contracts.MODEL_ARTIFACT_CHUNK: self._artifact_chunk,
            contracts.REGISTRY_PRODUCTION: self._production,
            contracts.REGISTRY_ARTIFACT: self._artifact_bytes,
        }

    def register(self, bus: Transport) -> None:
        bus.consume(contracts.REGISTRY, self.handle)
        bus.consume(contracts.DEAD_LETTERS, self._dead_letter)

    async def handle(self, msg: Message) -> Message | None:
        handler = self._handlers.get(msg.type)
        if handler is None:
            raise ValidationFailed(f"registry does not handle messages of type {msg.type!r}")
        return await handler(msg)

    async def announce(self, version: ModelVersion, correlation_id: str | None = None, *, task_id: str | None = None) -> None:
        """Publish a production version to every server: inline bytes when small, else a reference.

        A freshly trained version carries its `task_id`: servers put it on their install events.
        """
        headers = signing.sign(self._settings.bus.signing_key,
                               version.announcement() | ({"task_id": task_id} if task_id else {}))
        inline = version.size <= self._inline_max
        announcement = ModelAnnouncement(await asyncio.to_thread(self._store.read, version.path) if inline else None)
        await self._bus.publish(contracts.MODEL_PUBLISHED,
                                announcement.message(correlation_id=correlation_id, headers=headers))
        await self._events.emit(EventKind.MODEL_PUBLISHED, correlation_id=correlation_id, task_id=version.task_id,
                                model=version.model, version=version.version, sha256=version.sha256, seq=version.seq)

    # --- task lifecycle -------------------------------------------------------------------

    async def _claim(self, msg: Message) -> Message:
        claim = TaskClaim.from_body(msg.body)
        proceed = await asyncio.to_thread(self._tasks.claim, claim.task_id)
        if proceed and claim.attempt > 0:
            await self._events.emit(EventKind.TASK_RETRIED, task_id=claim.task_id, correlation_id=msg.correlation_id,
                                    attempt=claim.attempt)
        return msg.reply(ClaimReply(proceed).to_body())

    async def _progress(self, msg: Message) -> None:
        progress = TaskProgress.from_body(msg.body)
        await asyncio.to_thread(self._tasks.progress, progress.task_id, progress.progress())

    async def _failed(self, msg: Message) -> None:
        failed = TaskFailed.from_body(msg.body)
        if await asyncio.to_thread(self._tasks.finish, failed.task_id, "failed", error=failed.error):
            await self._events.emit(EventKind.TASK_FAILED, task_id=failed.task_id, correlation_id=msg.correlation_id,
                                    error=failed.error)

    async def _cancel_ack(self, msg: Message) -> None:
        await self._events.emit(EventKind.TASK_CANCEL_ACKNOWLEDGED, task_id=TaskCancelAck.from_body(msg.body).task_id,
                                correlation_id=msg.correlation_id)

    async def _dead_letter(self, msg: Message) -> None:
        report = msg.data
        body = report.get("body") or {}
        task_id = body.get("task_id") if isinstance(body, dict) else None
        task_id = task_id or (report.get("headers") or {}).get("task_id")
        await self._events.emit(EventKind.MESSAGE_DEAD_LETTERED, task_id=task_id, correlation_id=msg.correlation_id,
                                queue=report.get("queue"), message_type=report.get("message_type"),
                                attempts=report.get("attempts"), error=report.get("error"))
        if task_id and report.get("queue") in (contracts.TRAIN, contracts.REGISTRY):
            error = {"code": "dead_lettered", "message": f"gave up after {report.get('attempts')} attempts: "
                     f"{report.get('error')}", "details": {"queue": report.get("queue")}}
            if await asyncio.to_thread(self._tasks.finish, task_id, "failed", error=error):
                await self._events.emit(EventKind.TASK_FAILED, task_id=task_id, correlation_id=msg.correlation_id,
                                        error=error)

    # --- registry -------------------------------------------------------------------------

    async def _artifact_chunk(self, msg: Message) -> Message:
        """One piece of a large artifact from a trainer, written at its offset; the reply says it is stored."""
        if not isinstance(msg.body, bytes):
            raise ArtifactRejected("model.artifact.chunk must carry bytes")
        headers = msg.headers
        await asyncio.to_thread(self._store.write_chunk, str(headers["model"]), str(headers["upload"]),
                                int(headers["offset"]), msg.body, max_bytes=self._settings.serving.max_artifact_bytes)
        return msg.reply({"stored": len(msg.body)})

    async def _artifact(self, msg: Message) -> None:
        headers = msg.headers
        task_id, model, sha = headers["task_id"], headers["model"], headers["sha256"]
        upload = msg.data.get("upload") if isinstance(msg.body, dict) else None
        if not isinstance(msg.body, bytes) and not isinstance(upload, str):
            raise ArtifactRejected("model.artifact must carry the archive as bytes, or name the upload of its chunks")
        if isinstance(msg.body, bytes) and sha256_of(msg.body) != sha:
            # Corrupt in transit: fail the task rather than register something else.
            error = ArtifactRejected("artifact checksum does not match", details={"model": model}).to_payload()["error"]
            await asyncio.to_thread(self._tasks.finish, task_id, "failed", error=error)
            return
        task = await asyncio.to_thread(self._tasks.get, task_id)
        workflow = self._settings.workflows.get(task.workflow)
        if workflow is None or workflow.model != model:
            # Only what a declared workflow produces becomes a version: nothing else reaches the servers.
            error = ArtifactRejected(f"model {model!r} is not what workflow {task.workflow!r} produces",
                                     details={"model": model, "workflow": task.workflow}).to_payload()["error"]
            if await asyncio.to_thread(self._tasks.finish, task_id, "failed", error=error):
                await self._events.emit(EventKind.TASK_FAILED, task_id=task_id, correlation_id=msg.correlation_id, error=error)
            return
        if task.status in ("cancelled", "failed"):
            log.info("dropping artifact of %s task %s", task.status, task_id, extra={"correlation_id": msg.correlation_id})
            return
        metadata: dict[str, Any] = headers.get("metadata") or {}
        if isinstance(msg.body, bytes):
            path, size = await asyncio.to_thread(self._store.put, model, sha, msg.body), len(msg.body)
        else:
            size = int(msg.data.get("size", -1))
            try:  # the chunks, checked against the size and checksum the trainer computed
                path = await asyncio.to_thread(self._store.commit, model, str(upload), sha, size)
            except ArtifactRejected as exc:
                if await asyncio.to_thread(self._tasks.finish, task_id, "failed", error=exc.to_payload()["error"]):
                    await self._events.emit(EventKind.TASK_FAILED, task_id=task_id, correlation_id=msg.correlation_id,
                                            error=exc.to_payload()["error"])
                return
        version, created = await asyncio.to_thread(
            self._registry.add_version, model=model, sha256=sha, size=size, path=str(path),
            metrics=metadata.get("metrics") or {}, metadata=metadata, task_id=task_id,
        )
        result = {"model": model, "model_version": version.version, "metrics": version.metrics}
        finished = await asyncio.to_thread(self._tasks.finish, task_id, "succeeded", result=result)
        if created or finished:
            await self._events.emit(EventKind.TASK_SUCCEEDED, task_id=task_id, correlation_id=msg.correlation_id, **result)
            await self.announce(version, msg.correlation_id, task_id=task_id)

    async def _production(self, msg: Message) -> Message:
        versions = await asyncio.to_thread(self._registry.production)
        key = self._settings.bus.signing_key
        return msg.reply({"models": [signing.sign(key, v.announcement()) for v in versions]})

    async def _artifact_bytes(self, msg: Message) -> Message:
        """A version's artifact: all of it, or the range `offset`/`length` asked for (at most one chunk)."""
        version = await asyncio.to_thread(self._registry.get, msg.data["model"], int(msg.data["version"]))
        headers: dict[str, Any] = {"sha256": version.sha256, "model": version.model, "version": version.version}
        if "offset" in msg.data:
            length = min(int(msg.data.get("length", self._chunk)), self._chunk)
            data, size = await asyncio.to_thread(self._store.read_range, version.path, int(msg.data["offset"]), length)
            return msg.reply(data, headers=headers | {"size": size, "offset": int(msg.data["offset"])})
        if version.size > self._chunk:
            raise ArtifactRejected(f"artifact is {version.size} bytes: ask for it in ranges of at most {self._chunk}",
                                   details={"size": version.size, "chunk": self._chunk})
        data = await asyncio.to_thread(self._store.read, version.path)
        return msg.reply(data, headers=headers)
