"""One Skipper process: the modules of its roles, their bus, and their HTTP app."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator
from types import FrameType
from typing import Any

import uvicorn
from starlette.applications import Starlette

from skipper.app.container import Container
from skipper.core import heap
from skipper.core.http import create_app
from skipper.core.module import Module
from skipper.core.roles import role_label
from skipper.core.routing import API_BASE
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
        self._draining: asyncio.Task[None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    @property
    def stopping(self) -> bool:
        return self._draining is not None

    def begin_shutdown(self) -> None:
        """Shutdown has begun: every module stops taking new work now (readiness turns false at once).

        Called on the event loop when the process gets SIGTERM, before the HTTP server drains;
        `stop()` (from the lifespan) then waits for this, stops the modules and closes the bus.
        """
        if self._draining is None and self._started:
            self._draining = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        for module in reversed(self.modules):
            try:
                await module.drain()
            except Exception:
                log.exception("module %s failed to drain", module.name)

    def server(self, config: uvicorn.Config) -> uvicorn.Server:
        """A uvicorn server that calls `begin_shutdown` the moment a stop signal arrives."""
        return _Server(config, self)

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
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
        self.begin_shutdown()
        self._started = False
        assert self._draining is not None
        await self._draining
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

        return create_app(settings=self.settings, role=role_label(self.roles), modules=[*self.modules, _Lifecycle(self)],
                          lifespan=lifespan)


class _Lifecycle(Module):
    """Not ready from the moment shutdown begins, whatever the modules say (every role, the api included)."""

    name = "lifecycle"

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    def ready(self) -> bool:
        return not self._runtime.stopping

    def readiness(self) -> dict[str, Any]:
        return {"stopping": True} if self._runtime.stopping else {}


class _Server(uvicorn.Server):
    """uvicorn's server, telling the runtime that shutdown has begun as soon as the signal arrives.

    uvicorn alone would first stop listening and drain HTTP, and only then run the lifespan
    shutdown; the modules would keep taking bus work (predict requests) all that time.
    """

    def __init__(self, config: uvicorn.Config, runtime: Runtime) -> None:
        super().__init__(config)
        self._runtime = runtime

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            heap.freeze()  # the modules have started: what they built stays, and needs no more scans
        if self.started and "api" in self._runtime.roles:
            host = self.config.host
            shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else (f"[{host}]" if ":" in host else host)
            port = self.servers[0].sockets[0].getsockname()[1] if self.servers and self.servers[0].sockets else self.config.port
            url = f"http://{shown}:{port}{API_BASE}/ui/"
            log.info("dashboard ready at %s", url, extra={"url": url})

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        loop = self._runtime.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._runtime.begin_shutdown)
