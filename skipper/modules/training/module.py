"""The training module: consumes train commands, trains in worker threads, reports to the registry.

Per command: claim the task from the registry (it may have been cancelled or already done),
train in a thread this module owns (never on the event loop), send progress every epoch,
then either the packaged artifact, a cancel acknowledgement, or a failure. Deterministic
failures (`SkipperError`: bad data, bad params, divergence) are reported once; anything else
is raised so the bus retries the command and finally dead-letters it.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import Histogram
from pydantic import ValidationError

from skipper.core import artifacts, contracts
from skipper.core.bus import Transport
from skipper.core.contracts import (
    ClaimReply,
    EventKind,
    TaskCancelAck,
    TaskCancelled,
    TaskClaim,
    TaskFailed,
    TaskProgress,
    TrainCommand,
)
from skipper.core.errors import NotFound, SkipperError, Unavailable, ValidationFailed
from skipper.core.events import EventEmitter
from skipper.core.limits import check_train_limits
from skipper.core.messages import Message
from skipper.core.metrics import TRAINING_BUCKETS
from skipper.core.module import Module
from skipper.core.settings import Settings, TrainingSettings, TrainParams, Workflow
from skipper.modules.training import packaging
from skipper.modules.training.jobs import DEFAULT_TRAINER, Deadline, EpochReport, TrainJob, resolve_trainer

log = logging.getLogger("skipper.training")
TRAINING_SECONDS = Histogram("skipper_training_seconds", "Wall time of a training task, by workflow and outcome",
                             ["workflow", "outcome"], buckets=TRAINING_BUCKETS)

_tf_lock = threading.Lock()
_tf_configured = False


def configure_tensorflow(training: TrainingSettings) -> None:
    """Apply the TensorFlow thread-pool sizes once per process, before TensorFlow initialises.

    Runs in a worker thread (it imports TensorFlow). Too late (TensorFlow already running,
    e.g. the serving module loaded a model first) is logged, not fatal.
    """
    global _tf_configured
    if training.tf_intra_op_threads <= 0 and training.tf_inter_op_threads <= 0:
        return
    with _tf_lock:
        if _tf_configured:
            return
        _tf_configured = True
        try:
            import tensorflow as tf

            if training.tf_intra_op_threads > 0:
                tf.config.threading.set_intra_op_parallelism_threads(training.tf_intra_op_threads)
            if training.tf_inter_op_threads > 0:
                tf.config.threading.set_inter_op_parallelism_threads(training.tf_inter_op_threads)
        except Exception:  # an initializer that raises would break the whole pool
            log.warning("could not set TensorFlow thread counts", exc_info=True)


@dataclass(slots=True)
class _Run:
    """A task training in this process: its stop signal, and whether (and how) the run is over."""

    stop: threading.Event = field(default_factory=threading.Event)
    over: asyncio.Event = field(default_factory=asyncio.Event)
    completed: bool = False  # the run ended with an outcome for the task (not with an exception)


@dataclass(frozen=True, slots=True)
class _Packaged:
    path: Path  # the archive, on disk: a large one is sent in chunks, never read whole
    size: int
    sha256: str
    metadata: dict[str, Any]


class TrainingModule(Module):
    """Runs train commands from the `train` queue, `settings.training.concurrency` at a time."""

    name = "training"

    def __init__(self, *, settings: Settings, bus: Transport, events: EventEmitter) -> None:
        self._settings = settings
        self._bus = bus
        self._events = events
        self._concurrency = settings.training.concurrency
        self._executor = ThreadPoolExecutor(
            max_workers=self._concurrency,
            thread_name_prefix="skipper-train",
            initializer=configure_tensorflow,
            initargs=(settings.training,),
        )
        self._running: dict[str, _Run] = {}  # task id -> the run training it here
        self._stopping = False

    # --- lifecycle ----------------------------------------------------------------------------

    def register(self, bus: Transport) -> None:
        # prefetch == threads: a command taken off the queue always has a thread to run on.
        bus.consume(contracts.TRAIN, self._on_train, prefetch=self._concurrency)
        bus.subscribe(contracts.TASK_CANCELLED, self._on_cancel)

    async def stop(self) -> None:
        """Interrupt running trainings at their next batch; their commands go back to the bus."""
        self._stopping = True
        for run in self._running.values():
            run.stop.set()
        await asyncio.to_thread(self._executor.shutdown, wait=True)

    def ready(self) -> bool:
        return not self._stopping

    def readiness(self) -> dict[str, Any]:
        return {"training": {"running": sorted(self._running), "concurrency": self._concurrency}}

    # --- handlers -----------------------------------------------------------------------------

    async def _on_cancel(self, msg: Message) -> Message | None:
        try:
            task_id = TaskCancelled.from_body(msg.body).task_id
        except ValidationFailed:
            return None
        run = self._running.get(task_id)
        if run is not None:
            log.info("cancelling task %s", task_id, extra={"correlation_id": msg.correlation_id})
            run.stop.set()
        return None

    async def _on_train(self, msg: Message) -> Message | None:
        body = msg.body if isinstance(msg.body, dict) else {}
        task_id = body.get("task_id")
        if not isinstance(task_id, str) or not task_id:
            # Nothing to report against and a retry cannot help: drop it, loudly.
            log.error("dropping a train command without a task_id (%s)", msg.id, extra={"correlation_id": msg.correlation_id})
            return None
        cid = msg.correlation_id or task_id
        extra = {"correlation_id": cid}
        while (running := self._running.get(task_id)) is not None:
            # A second command for a task training here (e.g. re-sent after a broker drop). Acking
            # it now would leave the run in progress as the task's only hope: if this process died,
            # nothing would bring the task back. Held unacknowledged, it goes back to the queue if we
            # die. A run that ends with an outcome (its artifact, its failure report, a cancel) makes
            # this one redundant; a run that raised did not finish the task, so this one goes on.
            log.warning("task %s is already training here; holding this command until that run ends", task_id,
                        extra=extra)
            await running.over.wait()
            if running.completed:
                return None
        if self._stopping:
            raise Unavailable("the trainer is stopping; the command goes back to the queue")
        # Registered before the claim, so a cancel that races the claim is not lost.
        run = _Run()
        self._running[task_id] = run
        try:
            claim = TaskClaim(task_id, msg.attempt).message(correlation_id=cid)
            reply = await self._bus.request(contracts.REGISTRY, claim, timeout=self._settings.bus.request_timeout_s)
            if not ClaimReply.from_body(reply.body).proceed:
                log.info("task %s is not to run (cancelled or finished); skipping", task_id, extra=extra)
                run.completed = True
                return None
            await self._train(task_id, cid, body, msg.attempt, run.stop)
            run.completed = True
            return None
        finally:
            self._running.pop(task_id, None)
            run.over.set()

    async def _train(self, task_id: str, cid: str, body: dict[str, Any], attempt: int, stop: threading.Event) -> None:
        # The model and its archive are written under the data dir (a volume), not /tmp (often a tmpfs).
        workdir = self._settings.data_dir / "training"
        workdir.mkdir(parents=True, exist_ok=True)
        outdir = Path(tempfile.mkdtemp(prefix="skipper-train-", dir=workdir))
        try:
            await self._train_in(task_id, cid, body, attempt, stop, outdir)
        finally:
            await asyncio.to_thread(shutil.rmtree, outdir, True)

    async def _train_in(self, task_id: str, cid: str, body: dict[str, Any], attempt: int, stop: threading.Event,
                        outdir: Path) -> None:
        extra = {"correlation_id": cid}
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        try:
            workflow_name, workflow, params = self._resolve(body)
            await self._events.emit(
                EventKind.TASK_STARTED,
                task_id=task_id,
                correlation_id=cid,
                workflow=workflow_name,
                model=workflow.model,
                attempt=attempt,
                epochs=params.epochs,
            )
            log.info("training task %s (workflow %s, attempt %d)", task_id, workflow_name, attempt + 1, extra=extra)
            packaged = await loop.run_in_executor(
                self._executor, self._run, loop, task_id, cid, workflow_name, workflow, params, stop, outdir
            )
        except SkipperError as exc:  # deterministic: report once, never retry
            self._observe(body, "failed", started)
            await self._fail(task_id, cid, exc)
            return

        if packaged is None or stop.is_set():
            if self._stopping:
                # Not a user's cancel: raise so the bus hands the command to another trainer.
                raise Unavailable("the trainer stopped during the task; it will run again")
            log.info("task %s cancelled", task_id, extra=extra)
            self._observe(body, "cancelled", started)
            await self._bus.send(contracts.REGISTRY, TaskCancelAck(task_id).message(correlation_id=cid))
            await self._events.emit(EventKind.TASK_CANCELLED, task_id=task_id, correlation_id=cid)
            return

        headers = {
            "task_id": task_id,
            "model": workflow.model,
            "sha256": packaged.sha256,
            "metadata": packaged.metadata,
        }
        await self._deliver(packaged, headers, cid)
        duration = round(time.monotonic() - started, 3)
        self._observe(body, "succeeded", started)
        log.info(
            "task %s trained %s in %.1fs: %s (%d bytes, sha256 %s)",
            task_id,
            workflow.model,
            duration,
            packaged.metadata["metrics"],
            packaged.size,
            packaged.sha256,
            extra=extra,
        )
        await self._events.emit(
            EventKind.TASK_TRAINED,
            task_id=task_id,
            correlation_id=cid,
            model=workflow.model,
            sha256=packaged.sha256,
            bytes=packaged.size,
            metrics=packaged.metadata["metrics"],
            duration_s=duration,
        )

    def _observe(self, body: dict[str, Any], outcome: str, started: float) -> None:
        name = body.get("workflow")
        workflow = name if isinstance(name, str) and name in self._settings.workflows else "_other"  # bounded labels
        TRAINING_SECONDS.labels(workflow, outcome).observe(time.monotonic() - started)

    async def _deliver(self, packaged: _Packaged, headers: dict[str, Any], cid: str) -> None:
        """Send the artifact to the registry: one message when small, else in chunks, each stored before the next.

        Chunks go as requests, so the registry has written one before the next leaves (never more
        than one chunk in memory here, none queued on the broker); the final `model.artifact`
        names the upload, and the registry checks size and checksum before registering it.
        """
        if packaged.size <= self._settings.bus.inline_artifact_max_bytes:
            data = await asyncio.to_thread(packaged.path.read_bytes)
            await self._bus.send(contracts.REGISTRY, Message(type=contracts.MODEL_ARTIFACT, body=data, headers=headers,
                                                             correlation_id=cid))
            return
        upload = uuid.uuid4().hex
        chunk_bytes = self._settings.bus.artifact_chunk_bytes
        with open(packaged.path, "rb") as archive:
            offset = 0
            while chunk := await asyncio.to_thread(archive.read, chunk_bytes):
                piece = Message(type=contracts.MODEL_ARTIFACT_CHUNK, body=chunk, correlation_id=cid,
                                headers={"model": headers["model"], "upload": upload, "offset": offset})
                await self._bus.request(contracts.REGISTRY, piece, timeout=self._settings.bus.request_timeout_s)
                offset += len(chunk)
        await self._bus.send(contracts.REGISTRY, Message(
            type=contracts.MODEL_ARTIFACT, body={"upload": upload, "size": packaged.size}, headers=headers,
            correlation_id=cid))

    def _resolve(self, body: dict[str, Any]) -> tuple[str, Workflow, TrainParams]:
        command = TrainCommand.from_body(body)
        name, given = command.workflow, command.params
        workflow = self._settings.workflows.get(name)
        if workflow is None:
            raise NotFound(f"unknown workflow {name!r}", details={"workflow": name})
        try:
            # The api sends fully resolved params; merging onto the defaults also accepts a partial set.
            params = TrainParams.model_validate({**workflow.params.model_dump(), **given})
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_context=False)
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors)
            raise ValidationFailed(f"invalid params: {problems}", details={"errors": errors}) from None
        return name, workflow, params

    async def _fail(self, task_id: str, cid: str, exc: SkipperError) -> None:
        error = exc.to_payload()["error"]
        log.warning("task %s failed: %s", task_id, exc.message, extra={"correlation_id": cid})
        await self._bus.send(contracts.REGISTRY, TaskFailed(task_id, error).message(correlation_id=cid))
        await self._events.emit(EventKind.TASK_FAILED, task_id=task_id, correlation_id=cid, error=error)

    # --- the worker thread --------------------------------------------------------------------

    def _run(
        self,
        loop: asyncio.AbstractEventLoop,
        task_id: str,
        cid: str,
        workflow_name: str,
        workflow: Workflow,
        params: TrainParams,
        stop: threading.Event,
        outdir: Path,
    ) -> _Packaged | None:
        """Train and package (blocking). None when the task was cancelled."""
        trainer = resolve_trainer(workflow.trainer)
        limits = self._settings.limits_for(workflow)
        check_train_limits(params, limits)  # again where it runs, whoever sent the command
        deadline = Deadline(limits.max_train_seconds)

        def report_epoch(report: EpochReport) -> None:
            # Wait for the send: keeps progress in order and ahead of the artifact, and slows a
            # trainer down rather than queueing unboundedly when the bus is slow.
            future = None
            try:
                future = asyncio.run_coroutine_threadsafe(self._progress(task_id, cid, report), loop)
                future.result(timeout=self._settings.bus.request_timeout_s)
            except Exception:  # progress is best-effort (the artifact is what counts); loop may be closing
                if future is not None:
                    future.cancel()
                log.warning("could not report progress of task %s", task_id, exc_info=True, extra={"correlation_id": cid})

        # The caller owns `outdir` and removes it.
        model_path = outdir / artifacts.MODEL_FILE
        job = TrainJob(
            task_id=task_id,
            workflow_name=workflow_name,
            workflow=workflow,
            params=params,
            data_dir=self._settings.data_dir,
            model_path=model_path,
            report_epoch=report_epoch,
            stop_requested=deadline.stop_condition(stop.is_set),
            correlation_id=cid,
            limits=limits,
        )
        result = trainer(job)
        if not stop.is_set():
            deadline.check()
        if result.cancelled or stop.is_set():
            return None
        if not model_path.is_file():
            trainer_path = workflow.trainer or DEFAULT_TRAINER
            raise RuntimeError(f"trainer {trainer_path} returned without saving the model to {model_path}")
        metadata = packaging.build_metadata(
            name=workflow.model,
            workflow=workflow_name,
            kind=workflow.kind,
            features=result.features,
            targets=result.targets,
            classes=result.classes,
            metrics=result.metrics,
            params=params.model_dump(mode="json"),
            task_id=task_id,
            parameters=result.parameters,
        )
        archive = outdir / "artifact.tar.gz"
        size, sha256, metadata = packaging.package_file(model_path, metadata, archive)
        model_path.unlink()  # only the archive is needed from here on
        return _Packaged(archive, size, sha256, metadata)

    async def _progress(self, task_id: str, cid: str, report: EpochReport) -> None:
        progress = TaskProgress(task_id, report.epoch, report.epochs, report.loss, dict(report.metrics))
        await self._bus.send(contracts.REGISTRY, progress.message(correlation_id=cid))
        await self._events.emit(
            EventKind.TASK_PROGRESS,
            task_id=task_id,
            correlation_id=cid,
            epoch=report.epoch,
            epochs=report.epochs,
            loss=report.loss,
            metrics=dict(report.metrics),
        )
