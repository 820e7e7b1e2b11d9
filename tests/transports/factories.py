"""Transport factories for the conformance suite: one entry per transport variant.

Each factory returns an async context manager yielding `make(namespace) -> Transport`,
so a test can build several transports that share one broker (separate "processes").
A new transport joins the suite by adding an entry to `FACTORIES`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

from skipper.core.bus import BusOptions, Transport
from skipper.transports.memory import MemoryTransport

MakeTransport = Callable[[BusOptions], Transport]


@contextlib.asynccontextmanager
async def memory_factory() -> AsyncIterator[MakeTransport]:
    # One process, one bus: every "process" of a test shares the same instance per namespace.
    instances: dict[str, MemoryTransport] = {}

    def make(options: BusOptions) -> Transport:
        return instances.setdefault(options.namespace, MemoryTransport(options))

    yield make


Factory = Callable[[], contextlib.AbstractAsyncContextManager[MakeTransport]]

FACTORIES: dict[str, Factory] = {"memory": memory_factory}


def _register_broker_factories() -> None:
    from tests.transports import factory_dramatiq, factory_rabbitmq

    FACTORIES.update(factory_rabbitmq.FACTORIES)
    FACTORIES.update(factory_dramatiq.FACTORIES)


_register_broker_factories()
