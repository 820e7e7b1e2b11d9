from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from skipper.core.bus import BusOptions, Transport
from skipper.core.messages import new_id
from tests.liveserver import LiveSkipper, live_skipper
from tests.transports.doomed import Doomed, doomed_consumer
from tests.transports.factories import FACTORIES


async def eventually(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02) -> None:
    """Wait until `predicate()` holds; fail with the timeout otherwise."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


async def holds_for(predicate: Callable[[], bool], seconds: float = 0.3) -> None:
    """Assert that `predicate()` keeps holding for `seconds` (nothing more arrives: no duplicate, no extra retry)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert predicate()
        await asyncio.sleep(0.02)


class BusFactory:
    """Builds started transports on one namespace; closes them all at the end."""

    def __init__(self, make: Callable[[BusOptions], Transport], namespace: str, variant: str = "memory") -> None:
        self._make = make
        self.namespace = namespace
        self.variant = variant
        self.built: list[Transport] = []
        self.doomed: list[Doomed] = []

    def options(self, **overrides: object) -> BusOptions:
        base = {"namespace": self.namespace, "retry_backoff_s": 0.05, "retry_backoff_max_s": 0.2, "max_retries": 2}
        base.update(overrides)
        return BusOptions(**base)

    def __call__(self, **overrides: object) -> Transport:
        transport = self._make(self.options(**overrides))
        if transport not in self.built:
            self.built.append(transport)
        return transport

    async def doomed_consumer(self, queue: str, **overrides: object) -> Doomed:
        """A consumer of `queue`, in a "process" of its own, whose handler hangs until it is killed."""
        options = self.options(**overrides)
        in_process = self(**overrides) if self.variant == "memory" else None
        doomed = await doomed_consumer(self.variant, in_process, options, queue)
        self.doomed.append(doomed)
        return doomed


@pytest.fixture(params=sorted(FACTORIES))
async def bus_factory(request: pytest.FixtureRequest) -> AsyncIterator[BusFactory]:
    async with FACTORIES[request.param]() as make:
        factory = BusFactory(make, f"test-{new_id()[:12]}", request.param)
        yield factory
        for doomed in factory.doomed:
            await doomed.kill()
        for transport in factory.built:
            await transport.close()


@pytest.fixture(scope="session")
def skipper_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveSkipper]:
    """One live all-in-one Skipper process for the client and CLI tests, with diabetes trained once."""
    with live_skipper(tmp_path_factory.mktemp("skipper-live")) as server:
        yield server
