"""Serving a Skipper runtime over real HTTP inside the test's event loop (streams need a real server:
httpx's ASGI transport waits for the whole response)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import uvicorn

from skipper.app.runtime import Runtime
from skipper.core.settings import load_settings
from tests.processes import free_port

BASE = "/api/v1/skipper"


@contextlib.asynccontextmanager
async def served(data_dir: Path, roles: frozenset[str], **overrides: Any) -> AsyncIterator[tuple[str, Runtime]]:
    """A runtime behind uvicorn on a free loopback port: yields (the API's base URL, the runtime)."""
    port = free_port()
    settings = load_settings(environ={}, overrides={"data_dir": str(data_dir), "port": port, **overrides})
    runtime = Runtime(settings, roles)
    config = uvicorn.Config(runtime.app(), host="127.0.0.1", port=port, lifespan="on", access_log=False,
                            log_config=None, timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(400):
            if server.started:
                break
            if task.done():
                task.result()
            await asyncio.sleep(0.025)
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{port}{BASE}", runtime
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)
