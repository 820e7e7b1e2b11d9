"""Running Skipper in-process for tests: a Runtime on the memory transport and an HTTP client on its app."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from skipper.app.runtime import Runtime
from skipper.core.settings import load_settings

BASE = "/api/v1/skipper"


@contextlib.asynccontextmanager
async def running_skipper(
    data_dir: Path, roles: frozenset[str], **overrides: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    settings = load_settings(environ={}, overrides={"data_dir": str(data_dir), **overrides})
    runtime = Runtime(settings, roles)
    await runtime.start()
    transport = httpx.ASGITransport(app=runtime.app())
    try:
        async with httpx.AsyncClient(transport=transport, base_url=f"http://127.0.0.1{BASE}") as client:
            yield client, runtime
    finally:
        await runtime.stop()


async def wait_for_task(client: httpx.AsyncClient, task_id: str, statuses: set[str], timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        task = (await client.get(f"/tasks/{task_id}")).json()
        if task["status"] in statuses:
            return task  # type: ignore[no-any-return]
        if time.monotonic() > deadline:
            raise AssertionError(f"task {task_id} still {task['status']} after {timeout}s: {task}")
        await asyncio.sleep(0.1)


SCOPES = ("read", "predict", "train", "deploy", "admin")


def scoped_keys() -> tuple[dict[str, str], list[dict[str, Any]]]:
    """One fresh API key per scope: ({scope: key}, the `auth.keys` entries)."""
    from skipper.core.apikeys import new_key

    keys, entries = {}, []
    for scope in SCOPES:
        key, entry = new_key(f"{scope}-key", [scope])
        keys[scope] = key
        entries.append(entry)
    return keys, entries


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}
