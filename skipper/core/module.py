"""What every module provides to the process that runs it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from skipper.core.auth import CredentialSource
from skipper.core.bus import Transport
from skipper.core.routing import Endpoint, RouteGroup


class Module:
    """A module registers bus handlers and HTTP routes; the container decides which run.

    Lifecycle: `register(bus)` before the bus starts, `start()` after it has started, `drain()`
    as soon as shutdown begins, `stop()` before the bus closes. Modules never import each other.
    """

    name = "module"

    def register(self, bus: Transport) -> None:
        """Declare consumers and subscribers on `bus`."""

    def routes(self) -> Sequence[Endpoint | RouteGroup]:
        """Declared HTTP routes: endpoints under the API base path (relative, e.g. `/tasks`), or groups
        with their own prefix and error style (the inference protocols at the root path)."""
        return []

    def credentials(self) -> Sequence[CredentialSource]:
        """Kinds of credential this module accepts beside API keys (the dashboard's session cookie)."""
        return []

    async def start(self) -> None:
        """Begin work that needs a running bus (catch-up, background loops)."""

    async def drain(self) -> None:
        """Shutdown has begun (SIGTERM): stop taking new work now; what is in flight goes on until `stop()`."""

    async def stop(self) -> None:
        """Finish in-flight work and release resources."""

    def ready(self) -> bool:
        """Whether this module can do its job now (drives `/ready`)."""
        return True

    def readiness(self) -> dict[str, Any]:
        """Extra fields for `/ready`, e.g. `{"models": {...}}` from the serving module."""
        return {}
