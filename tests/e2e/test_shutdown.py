"""Shutdown: readiness turns false the moment a stop signal arrives, before uvicorn drains HTTP."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import uvicorn

from skipper.core.roles import ROLES
from tests.apphelpers import running_skipper
from tests.conftest import eventually


async def test_readiness_turns_false_as_soon_as_shutdown_begins(tmp_path: Path) -> None:
    async with running_skipper(tmp_path, frozenset(ROLES)) as (client, runtime):
        ready: list[int] = []

        async def probe() -> None:
            ready.append((await client.get("/ready")).status_code)

        while not ready or ready[-1] != 200:  # caught up with the (empty) registry
            await probe()
            await asyncio.sleep(0.05)
        # A stop signal reaches the server uvicorn runs: it calls back into the runtime at once
        server = runtime.server(uvicorn.Config(runtime.app()))
        server.handle_exit(signal.SIGTERM, None)
        assert server.should_exit
        await eventually(lambda: runtime.stopping, timeout=2)
        response = await client.get("/ready")
        assert response.status_code == 503
        assert response.json()["status"] == "not_ready" and response.json()["stopping"] is True
        assert (await client.get("/health")).status_code == 200  # alive: it is finishing its work
