"""One Skipper process: the modules of its roles, their bus, and their HTTP app."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette

from skipper.core.container import Container
from skipper.core.http import create_app
from skipper.core.module import Module
from skipper.core.roles import role_label
from skipper.core.settings import Settings

log = logging.getLogger("skipper.runtime")


class Runtime:
    """Builds the modules a set of roles needs and runs their lifecycle around the bus."""

    def __init__(self, settings: Settings, roles: frozenset[str]) -> None:
        self.settings = settings
        self.roles = roles
        self.container = Container(settings=settings, role=role_label(roles))
        self.bus = self.container.transport()
        self.modules: list[Module] = []
        if "api" in roles:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
            self.modules += [self.container.logging_module(), self.container.api_module()]
        if "trainer" in roles:
            self.modules.append(self.container.training_module())
        if "server" in roles:
            self.modules.append(self.container.serving_module())
        self._started = False

    async def start(self) -> None:
        if "api" in self.roles:
            self.container.database().create_schema()
        for module in self.modules:
            module.register(self.bus)
        await self.bus.start()
        for module in self.modules:
            await module.start()
        self._started = True
        log.info("skipper started", extra={"roles": sorted(self.roles), "transport": self.settings.transport})

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        for module in reversed(self.modules):
            try:
                await module.stop()
            except Exception:
                log.exception("module %s failed to stop cleanly", module.name)
        await self.bus.close()
        if "api" in self.roles:
            self.container.database().dispose()
        log.info("skipper stopped")

    def app(self) -> Starlette:
        @contextlib.asynccontextmanager
        async def lifespan(_: Starlette) -> AsyncIterator[None]:
            await self.start()
            try:
                yield
            finally:
                await self.stop()

        return create_app(role=role_label(self.roles), modules=self.modules, lifespan=lifespan)
