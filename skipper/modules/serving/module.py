"""The serving module: receives models by fanout, catches up from the registry, serves predictions."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from skipper.core import contracts, signing
from skipper.core.bus import Transport
from skipper.core.contracts import EventKind, ModelAnnouncement, PredictReply, PredictRequest
from skipper.core.errors import ArtifactRejected, ModelNotReady, SkipperError, ValidationFailed
from skipper.core.events import EventEmitter
from skipper.core.messages import Message
from skipper.core.metrics import BATCH_BUCKETS
from skipper.core.module import Module
from skipper.core.settings import Settings
from skipper.modules.serving import store
from skipper.modules.serving.batching import Batcher, rows_from_instances
from skipper.modules.serving.keras_import import trains_here
from skipper.modules.serving.memory import Footprint, MemoryGuard, footprint
from skipper.modules.serving.predictor import Predictor, resolve_predictor
from skipper.modules.serving.presence import Presence
from skipper.modules.serving.release import Release, supersedes
from skipper.modules.serving.tfpools import size_tensorflow_pools

log = logging.getLogger("skipper.serving")

CATCH_UP_INSTALLS = 3  # versions a catch-up installs at once

SERVED = Counter("skipper_served_predictions_total", "Predict requests this server answered", ["model"])
SERVED_VERSION = Gauge("skipper_served_model_version", "The model version this server serves", ["model"])
BATCH_ROWS = Histogram("skipper_batch_rows", "Rows per model call (micro-batch size)", ["model"], buckets=BATCH_BUCKETS)
QUEUED_ROWS = Gauge("skipper_batch_queue_rows", "Rows waiting for a model call", ["model"])


@dataclass(slots=True)
class Loaded:
    """A model version this process serves, with its own batcher."""

    release: Release
    predictor: Predictor
    batcher: Batcher
    directory: Path
    footprint: Footprint
    served: Any  # this model's child of the SERVED counter: one `labels()` lookup per version, not per request

    @property
    def version(self) -> int:
        return self.release.version


class ServingModule(Module):
    """Keeps the production version of every model loaded and answers `predict` requests."""

    name = "serving"

    def __init__(self, *, settings: Settings, bus: Transport, events: EventEmitter, role: str = "server") -> None:
        size_tensorflow_pools(settings.serving)  # before any model loads: TensorFlow reads them once
        self._keras_without_sklearn = not trains_here(role)  # see keras_import
        self._settings = settings
        self._bus = bus
        self._events = events
        self.presence = Presence(bus=bus, settings=settings, role=role, versions=self.versions)
        self._models: dict[str, Loaded] = {}
        # What a model's predict queue carries, by message type: the handler gets the version held.
        self._on_predict_queue: dict[str, Callable[[Message, Loaded], Awaitable[Message]]] = {
            contracts.PREDICT_REQUEST: self._predict, contracts.PREDICT_STATUS: self._status}
        self._retiring: list[Loaded] = []  # swapped out, finishing their requests: still in memory
        self._loading: dict[str, Footprint] = {}  # model -> the version being loaded now
        self._guard = MemoryGuard.from_settings(settings.serving)
        self._locks: dict[str, asyncio.Lock] = {}
        self._catch_up_task: asyncio.Task[None] | None = None
        self._catch_up_again = False
        self._resync_task: asyncio.Task[None] | None = None
        self._refused: set[tuple[str, str, int]] = set()  # (model, sha256, seq) installs rejected: not retried
        self._background: set[asyncio.Task[None]] = set()
        self._attached: set[str] = set()  # models whose predict queue this server consumes
        self._attaching: set[str] = set()  # ... of which the broker has not confirmed the consumer yet
        self._ready = False
        self._draining = False

    # --- Module ----------------------------------------------------------------------------

    def register(self, bus: Transport) -> None:
        bus.subscribe(contracts.MODEL_PUBLISHED, self.on_published)
        bus.on_connected(self.catch_up)
        # No predict consumer yet: each model's queue is consumed once a version of it is loaded.

    async def start(self) -> None:
        await self.presence.start()

    async def drain(self) -> None:
        """Shutdown began: not ready, and no new predict requests (those taken are answered before the bus closes)."""
        self._draining = True
        await self.presence.stop()
        if self._resync_task is not None:
            self._resync_task.cancel()
        for model in sorted(self._attached):
            try:
                await self._bus.detach(contracts.predict_queue(model))
            except Exception:
                log.warning("could not stop consuming predict requests for %s", model, exc_info=True)
        self._attached.clear()

    async def stop(self) -> None:
        tasks = [t for t in [self._resync_task, self._catch_up_task, *self._background] if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for loaded in self._models.values():
            await loaded.batcher.drained()
            await asyncio.to_thread(store.remove, loaded.directory)

    def ready(self) -> bool:
        return self._ready and not self._draining

    def readiness(self) -> dict[str, Any]:
        return {"models": self.versions()}

    def versions(self) -> dict[str, int]:
        """The version of each model this server serves now: loaded, and its predict queue consumed.

        (A model whose consumer the broker has not confirmed yet is left out: a client that saw it
        in `/ready` and predicted at once would be told nobody serves it.)
        """
        return {name: loaded.version for name, loaded in self._models.items() if name not in self._attaching}

    def loaded(self, model: str) -> Loaded | None:
        """What serves `model` now, if anything."""
        return self._models.get(model)

    # --- predictions ---------------------------------------------------------------------

    async def on_predict(self, msg: Message) -> Message:
        """Handle a `predict.request`: validate, join a batch, reply with this request's slice.

        A request naming a `version` is answered only by that version: a server holds one version
        of each model (the production one), so any other is `ModelNotReady` naming the one it holds.
        A `predict.status` request on the same queue is answered with the version held.
        """
        if not isinstance(msg.body, dict):
            raise ValidationFailed("a predict request body must be a JSON object")
        name = msg.body.get("model")
        loaded = self._models.get(name) if isinstance(name, str) else None
        if loaded is None:
            raise ModelNotReady(f"no version of model {name!r} is loaded on this server", details={"model": name})
        handler = self._on_predict_queue.get(msg.type)
        if handler is None:
            raise ValidationFailed(f"unknown message type {msg.type!r} on a predict queue", details={"type": msg.type})
        return await handler(msg, loaded)

    async def _status(self, msg: Message, loaded: Loaded) -> Message:
        return msg.reply({"model": loaded.release.model, "version": loaded.version})

    async def _predict(self, msg: Message, loaded: Loaded) -> Message:
        request = PredictRequest.from_body(msg.body)
        name = request.model
        if request.version is not None and request.version != loaded.version:
            wanted = request.version
            raise ModelNotReady(
                f"version {wanted} of model {name!r} is not loaded: servers hold the production version, "
                f"{loaded.version}; deploy version {wanted} to serve it",
                details={"model": name, "version": wanted, "served_version": loaded.version})
        rows = rows_from_instances(request.instances, loaded.predictor.n_features)
        try:
            predictions = await loaded.batcher.submit(rows)
        except SkipperError:
            raise
        except Exception as exc:
            log.exception("prediction with %s v%d failed", name, loaded.version,
                          extra={"correlation_id": msg.correlation_id})
            await self._events.emit(EventKind.PREDICT_FAILED, correlation_id=msg.correlation_id, model=name,
                                    version=loaded.version, error=f"{type(exc).__name__}: {exc}")
            raise
        loaded.served.inc()
        return msg.reply(PredictReply(predictions, name, loaded.version).to_body())

    # --- model distribution --------------------------------------------------------------

    async def on_published(self, msg: Message) -> None:
        """A `model.published` fanout: install it unless what we serve is as recent."""
        headers = msg.headers
        task_id = headers.get("task_id") if isinstance(headers.get("task_id"), str) else None  # a freshly trained version
        try:
            release = Release.parse(headers)
            data = ModelAnnouncement.from_body(msg.body).artifact
        except ArtifactRejected as exc:
            await self._rejected(headers.get("model"), headers.get("version"), headers.get("sha256"), exc,
                                 msg.correlation_id, task_id)
            return
        try:
            await self.install(release, data, correlation_id=msg.correlation_id, task_id=task_id)
        except ArtifactRejected:
            pass  # reported by install; the old version keeps serving
        except SkipperError as exc:  # registry unreachable for the bytes: catch up (with backoff) until it answers
            log.warning("could not fetch %s v%d (%s); catching up with the registry", release.model, release.version,
                        exc, extra={"correlation_id": msg.correlation_id})
            await self.catch_up()

    async def install(self, release: Release, data: bytes | None = None, *, correlation_id: str | None = None,
                      task_id: str | None = None) -> bool:
        """Install `release` (fetching its bytes when `data` is None); False when not newer.

        Raises `ArtifactRejected` (after emitting `model.rejected`) when it fails its checks;
        the version already serving keeps serving.
        """
        async with self._locks.setdefault(release.model, asyncio.Lock()):
            current = self._models.get(release.model)
            if current is not None and not supersedes(release, current.release):
                log.info("ignoring %s v%d (seq %d): serving v%d (seq %d)", release.model, release.version,
                         release.seq, current.version, current.release.seq, extra={"correlation_id": correlation_id})
                return False
            try:
                # First, and never remembered as refused: a forged announcement must not shadow the genuine one.
                signing.verify(self._settings.bus.signing_key, asdict(release))
            except ArtifactRejected as exc:
                await self._rejected(release.model, release.version, release.sha256, exc, correlation_id, task_id)
                raise
            refused = (release.model, release.sha256, release.seq)
            if refused in self._refused:
                return False  # rejected before (and reported): a periodic re-check must not retry it
            started = time.perf_counter()
            needs = footprint(release.metadata, release.size)
            try:
                if release.size > self._settings.serving.max_artifact_bytes:
                    raise ArtifactRejected(f"artifact is {release.size} bytes, over the limit",
                                           details={"limit": self._settings.serving.max_artifact_bytes})
                # Before fetching: a version that cannot fit is refused without moving its bytes.
                self._guard.check(release.model, release.version, needs, held=self._held(),
                                  loading=list(self._loading.values()))
                self._loading[release.model] = needs
                archive: bytes | Path = data if data is not None else await self._fetch(release, correlation_id)
                try:
                    factory = resolve_predictor(self._settings, release.model)
                    prepared = await asyncio.to_thread(
                        store.prepare, archive, name=release.model, version=release.version, sha256=release.sha256,
                        seq=release.seq, settings=self._settings, factory=factory, without_sklearn=self._keras_without_sklearn,
                    )
                finally:
                    if isinstance(archive, Path):  # the download, once extracted (or refused)
                        await asyncio.to_thread(archive.unlink, True)
            except ArtifactRejected as exc:
                self._refused.add(refused)
                await self._rejected(release.model, release.version, release.sha256, exc, correlation_id, task_id)
                raise
            finally:
                self._loading.pop(release.model, None)
                data = None  # the archive's bytes are not needed once extracted and loaded
            inline_rows = self._swap(release, prepared, needs)
        await self._serve_requests_for(release.model)
        self._spawn(self.presence.announce())  # the replica view shows the new version at once
        took_ms = round((time.perf_counter() - started) * 1000, 1)
        log.info("installed %s v%d (seq %d) in %.0f ms %s; full batch %.2f ms, batches up to %d rows run inline",
                 release.model, release.version, release.seq, took_ms, prepared.timings, prepared.batch_ms, inline_rows,
                 extra={"correlation_id": correlation_id})
        await self._events.emit(EventKind.MODEL_INSTALLED, correlation_id=correlation_id, task_id=task_id, model=release.model,
                                 version=release.version, sha256=release.sha256, took_ms=took_ms)
        return True

    def _held(self) -> list[Footprint]:
        return [loaded.footprint for loaded in (*self._models.values(), *self._retiring)]

    def _swap(self, release: Release, prepared: store.Prepared, needs: Footprint) -> int:
        serving = self._settings.serving
        inline = prepared.batch_ms <= store.INLINE_BUDGET_MS
        # Too slow for a full batch inline: smaller batches still fit the budget (cost taken as proportional to rows).
        inline_rows = int(serving.max_batch_size * store.INLINE_BUDGET_MS / prepared.batch_ms) if not inline else 0
        batcher = Batcher(prepared.predictor.predict, max_rows=serving.max_batch_size,
                          max_wait_ms=serving.max_wait_ms, inline=inline, max_queued_rows=serving.max_queued_rows,
                          on_batch=BATCH_ROWS.labels(release.model).observe, inline_rows=inline_rows)
        old = self._models.get(release.model)
        # The swap: one reference assignment on the loop. Requests that already looked up
        # `old` finish on it; every later lookup sees the new version.
        self._models[release.model] = Loaded(release, prepared.predictor, batcher, prepared.directory, needs,
                                             SERVED.labels(release.model))
        SERVED_VERSION.labels(release.model).set(release.version)
        QUEUED_ROWS.labels(release.model).set_function(lambda: batcher.queued_rows)  # read at scrape time
        if old is not None:
            self._retiring.append(old)
            self._spawn(self._retire(old))
        return batcher.inline_rows

    async def _serve_requests_for(self, model: str) -> None:
        """Consume the model's predict queue from now on (once per model): only servers holding it take its requests."""
        if model in self._attached or self._draining:
            return
        self._attached.add(model)
        self._attaching.add(model)
        serving = self._settings.serving
        # Many requests in flight at once is what lets the batcher merge them.
        prefetch = max(self._settings.bus.prefetch, 2 * serving.max_batch_size)
        try:
            await self._bus.attach(contracts.predict_queue(model), self.on_predict, prefetch=prefetch)
        except SkipperError as exc:  # registered all the same: it starts when the broker is back
            log.warning("predict requests for %s will be taken once the broker is back: %s", model, exc)
        finally:
            self._attaching.discard(model)

    async def _retire(self, old: Loaded) -> None:
        """Release a swapped-out version once its last requests are answered: nothing may keep a reference."""
        try:
            await old.batcher.drained()
            await asyncio.to_thread(store.remove, old.directory)
        finally:
            self._retiring.remove(old)
        del old
        await asyncio.to_thread(store.recollect)

    async def _fetch(self, release: Release, correlation_id: str | None) -> Path:
        """Stream a version's artifact from the registry to a file, in ranges of `bus.artifact_chunk_bytes`.

        Never one bus message for a large artifact and never the whole of it in memory: each
        range is written to disk as it arrives; `store.prepare` checks the file's checksum.
        """
        chunk = self._settings.bus.artifact_chunk_bytes
        root = store.serving_root(self._settings)
        root.mkdir(parents=True, exist_ok=True)
        target = root / f".download-{release.model}-{release.version}-{uuid.uuid4().hex}.tar.gz"
        try:
            with open(target, "wb") as out:
                offset = 0
                while offset < release.size or offset == 0:
                    body = {"model": release.model, "version": release.version, "offset": offset, "length": chunk}
                    request = Message(type=contracts.REGISTRY_ARTIFACT, body=body, correlation_id=correlation_id)
                    reply = await self._bus.request(contracts.REGISTRY, request,
                                                    timeout=self._settings.serving.catch_up_timeout_s)
                    if not isinstance(reply.body, bytes):
                        raise ArtifactRejected("the registry answered an artifact request without bytes")
                    if not reply.body:
                        break  # past the end (a registry that knows a shorter file than announced)
                    await asyncio.to_thread(out.write, reply.body)
                    offset += len(reply.body)
                    if "offset" not in reply.headers:
                        break  # a registry that answers with the whole artifact at once
            return target
        except BaseException:
            target.unlink(missing_ok=True)
            raise

    async def _rejected(self, model: object, version: object, sha256: object, exc: ArtifactRejected,
                        correlation_id: str | None, task_id: str | None = None) -> None:
        log.error("rejected %s v%s: %s", model, version, exc.message, extra={"correlation_id": correlation_id})
        await self._events.emit(EventKind.MODEL_REJECTED, correlation_id=correlation_id, task_id=task_id, model=str(model),
                                version=version if isinstance(version, int) else None,
                                sha256=str(sha256), reason=exc.message)

    # --- catch-up ------------------------------------------------------------------------

    async def catch_up(self) -> None:
        """Reconcile with the registry in the background (never blocks start).

        Runs on every (re)connection, after an install that failed for want of the registry, and
        every `serving.resync_s`: a missed or failed announcement heals without a reconnect.
        """
        if self._draining:
            return
        if self._resync_task is None:
            self._resync_task = asyncio.create_task(self._resync_loop(), name="skipper.serving.resync")
        if self._catch_up_task is not None and not self._catch_up_task.done():
            self._catch_up_again = True  # reconnected mid catch-up: go round once more
            return
        self._catch_up_task = asyncio.create_task(self._catch_up_loop(), name="skipper.serving.catch_up")

    async def _resync_loop(self) -> None:
        while not self._draining:
            await asyncio.sleep(self._settings.serving.resync_s)
            if self._catch_up_task is None or self._catch_up_task.done():  # one already running covers it
                await self.catch_up()

    async def _catch_up_loop(self) -> None:
        attempt = 0
        while True:
            try:
                await self._catch_up_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = min(self._settings.bus.retry_backoff_s * 2**attempt, self._settings.bus.reconnect_backoff_max_s)
                # Loud at first, then one line in ten while the registry stays away.
                level = logging.WARNING if attempt < 3 or attempt % 10 == 0 else logging.DEBUG
                log.log(level, "catch-up failed (%s), retrying in %.2fs", exc, delay,
                        exc_info=not isinstance(exc, SkipperError))
                attempt += 1
                await asyncio.sleep(delay)
                continue
            self._ready = True
            if not self._catch_up_again:
                return
            self._catch_up_again, attempt = False, 0

    async def _catch_up_once(self) -> None:
        request = Message(type=contracts.REGISTRY_PRODUCTION, body={})
        reply = await self._bus.request(contracts.REGISTRY, request, timeout=self._settings.bus.request_timeout_s)
        entries = reply.data.get("models")
        if not isinstance(entries, list):
            raise ValidationFailed("registry.production reply lacks a 'models' list")
        releases: list[Release] = []
        for entry in entries:
            try:
                releases.append(Release.parse(entry if isinstance(entry, dict) else {}))
            except ArtifactRejected as exc:
                fields = entry if isinstance(entry, dict) else {}
                await self._rejected(fields.get("model"), fields.get("version"), fields.get("sha256"), exc,
                                     request.correlation_id)
        # A few at a time: one model's download and queue attach overlap another's load.
        slots = asyncio.Semaphore(CATCH_UP_INSTALLS)

        async def install(release: Release) -> None:
            # A bad artifact (reported by install) is not retried: serve the rest and stay ready.
            async with slots:
                with contextlib.suppress(ArtifactRejected):
                    await self.install(release, correlation_id=request.correlation_id)

        outcomes = await asyncio.gather(*(install(release) for release in releases), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome  # the first failure (the others were tried too): the loop retries

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
