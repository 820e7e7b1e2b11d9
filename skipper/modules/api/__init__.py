"""The api module: HTTP API, task table, model registry and artifact store. Owns the database."""

from __future__ import annotations

from starlette.routing import BaseRoute

from skipper.core import contracts
from skipper.core.bus import Transport
from skipper.core.events import EventEmitter
from skipper.core.messages import Message
from skipper.core.module import Module
from skipper.core.repositories import ModelRegistry, TaskRepository
from skipper.core.settings import Settings
from skipper.modules.api.artifacts import ArtifactStore
from skipper.modules.api.legacy import LegacyRoutes
from skipper.modules.api.registry import RegistryService
from skipper.modules.api.routes import ApiRoutes


class ApiModule(Module):
    name = "api"

    def __init__(self, *, settings: Settings, bus: Transport, events: EventEmitter, tasks: TaskRepository,
                 registry: ModelRegistry, store: ArtifactStore) -> None:
        self._bus = bus
        self.service = RegistryService(bus=bus, events=events, tasks=tasks, registry=registry, store=store,
                                       inline_max_bytes=settings.bus.inline_artifact_max_bytes)
        self.api = ApiRoutes(settings=settings, bus=bus, events=events, tasks=tasks, registry=registry, store=store,
                             service=self.service)
        self._legacy = LegacyRoutes(self.api, settings.http.max_body_bytes, settings.http.max_instances)

    def register(self, bus: Transport) -> None:
        self.service.register(bus)
        # Another api replica may have promoted a version: keep this replica's feature schemas current.
        bus.subscribe(contracts.MODEL_PUBLISHED, self._on_published)

    async def _on_published(self, msg: Message) -> None:
        self.api.schemas.update(str(msg.headers.get("model")), msg.headers.get("metadata") or {})

    def routes(self) -> list[BaseRoute]:
        return self.api.routes() + self._legacy.routes()

    def ready(self) -> bool:
        return self._bus.connected
