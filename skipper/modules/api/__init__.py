"""The api module: HTTP API, task table, model registry and artifact store. Owns the database."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from skipper.core import contracts, signing
from skipper.core.auth import CredentialSource
from skipper.core.bus import Transport
from skipper.core.errors import ArtifactRejected
from skipper.core.events import EventEmitter
from skipper.core.messages import Message
from skipper.core.module import Module
from skipper.core.repositories import ModelRegistry, TaskRepository
from skipper.core.routing import API_BASE, Endpoint, RouteGroup
from skipper.core.settings import Settings
from skipper.modules.api.artifacts import ArtifactStore
from skipper.modules.api.dashboard import Dashboard
from skipper.modules.api.legacy import LegacyRoutes
from skipper.modules.api.oip import OipRoutes
from skipper.modules.api.registry import RegistryService
from skipper.modules.api.replicas import ReplicaView
from skipper.modules.api.routes import ApiRoutes
from skipper.modules.api.service import ApiService
from skipper.modules.api.tfserving import TfServingRoutes

log = logging.getLogger("skipper.api")


class ApiModule(Module):
    name = "api"

    def __init__(self, *, settings: Settings, bus: Transport, events: EventEmitter, tasks: TaskRepository,
                 registry: ModelRegistry, store: ArtifactStore) -> None:
        self._bus = bus
        self._settings = settings
        self.registry = RegistryService(settings=settings, bus=bus, events=events, tasks=tasks, registry=registry,
                                        store=store)
        self.replicas = ReplicaView(settings.bus.signing_key)
        self.service = ApiService(settings=settings, bus=bus, events=events, tasks=tasks, registry=registry, store=store,
                                  announcer=self.registry, replicas=self.replicas)
        self._api = ApiRoutes(self.service)
        self._legacy = LegacyRoutes(self.service, settings.http.max_json_depth, settings.compat.default_workflow)
        self._oip = OipRoutes(self.service, settings.http.max_instances)
        self._tfserving = TfServingRoutes(self.service, settings.http.max_instances)
        self._dashboard = Dashboard(self.service, settings)

    def register(self, bus: Transport) -> None:
        self.registry.register(bus)
        # Another api replica may have promoted a version: keep this replica's feature schemas current.
        bus.subscribe(contracts.MODEL_PUBLISHED, self._on_published)
        bus.subscribe(contracts.SERVER_ANNOUNCED, self.replicas.on_announced)

    async def _on_published(self, msg: Message) -> None:
        try:
            signing.verify(self._settings.bus.signing_key, msg.headers)
        except ArtifactRejected as exc:  # someone else on the broker: keep the schemas the registry announced
            log.warning("ignoring a model announcement: %s", exc.message, extra={"correlation_id": msg.correlation_id})
            return
        self.service.schemas.update(str(msg.headers.get("model")), msg.headers.get("metadata") or {})

    def routes(self) -> Sequence[Endpoint | RouteGroup]:
        # Starlette tries routes in order: every protocol's predict route first (the hot path), and the
        # original's `tasks/execute_*` before `tasks/{task_id}`.
        native, legacy = self._api.routes(), self._legacy.routes()
        protocols = [*self._oip.routes(), *self._tfserving.routes()]
        hot = [RouteGroup(g.prefix, [e for e in g.endpoints if _predicts(e)], g.errors)
               for g in [RouteGroup(API_BASE, native), *protocols, RouteGroup(API_BASE, legacy)]]
        rest = [RouteGroup(g.prefix, [e for e in g.endpoints if not _predicts(e)], g.errors)
                for g in [RouteGroup(API_BASE, [*legacy, *native]), *protocols]]
        return [*(g for g in hot + rest if g.endpoints), *self._dashboard.routes()]

    def credentials(self) -> Sequence[CredentialSource]:
        sessions = self._dashboard.sessions
        return [sessions] if sessions.enabled else []

    def ready(self) -> bool:
        return self._bus.connected


def _predicts(endpoint: Endpoint) -> bool:
    return endpoint.method == "POST" and endpoint.scope == "predict"
