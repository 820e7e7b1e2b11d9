"""The composition root: settings -> transport -> repositories -> modules.

It sits beside `skipper.core`, not inside it: core knows no transport and no module. The
transport comes from the registry by `settings.transport`; modules are named by import path so
a role loads only what it runs (the api role never imports TensorFlow).
"""

from __future__ import annotations

from typing import Any

from dependency_injector import containers, providers

from skipper.core.bus import BusOptions
from skipper.core.db import Database
from skipper.core.events import EventEmitter
from skipper.core.imports import resolve
from skipper.core.repositories import EventRepository, ModelRegistry, TaskRepository
from skipper.core.settings import Settings
from skipper.transports import build_transport


def construct(path: str, **kwargs: Any) -> Any:
    """Import `package.module:Class` on first use and build it; keeps unused modules unimported."""
    return resolve(path, what="module")(**kwargs)


def bus_options(settings: Settings, role: str = "all") -> BusOptions:
    return BusOptions.from_settings(settings, role)


class Container(containers.DeclarativeContainer):
    settings = providers.Dependency(instance_of=Settings)
    role = providers.Dependency(instance_of=str, default="all")  # names the broker connections

    transport = providers.Singleton(build_transport, settings, providers.Callable(bus_options, settings, role))

    # Only the api role resolves these: trainers and servers never open the database.
    database = providers.Singleton(Database, url=settings.provided.resolved_database_url)
    tasks = providers.Singleton(TaskRepository, database)
    registry = providers.Singleton(ModelRegistry, database)
    event_log = providers.Singleton(EventRepository, database)
    artifact_store = providers.Singleton(
        construct, "skipper.modules.api.artifacts:ArtifactStore", root=settings.provided.artifact_dir
    )

    api_module = providers.Singleton(
        construct, "skipper.modules.api:ApiModule", settings=settings, bus=transport,
        events=providers.Factory(EventEmitter, transport, "api"), tasks=tasks, registry=registry, store=artifact_store,
    )
    logging_module = providers.Singleton(construct, "skipper.modules.logging:LoggingModule", events=event_log, tasks=tasks,
                                         settings=settings)
    training_module = providers.Singleton(
        construct, "skipper.modules.training:TrainingModule", settings=settings, bus=transport,
        events=providers.Factory(EventEmitter, transport, "trainer"),
    )
    serving_module = providers.Singleton(
        construct, "skipper.modules.serving:ServingModule", settings=settings, bus=transport,
        events=providers.Factory(EventEmitter, transport, "server"), role=role,
    )
