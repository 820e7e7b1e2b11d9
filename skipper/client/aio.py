"""`AsyncClient`: the same API as `Client`, for asyncio code (`await client.train(...)`)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import httpx
import httpx_sse

from skipper.client import calls
from skipper.client.calls import Call
from skipper.client.errors import ArtifactCorrupt, error_from_response
from skipper.client.follow import Follow, OnEvent, OnProgress, sse_data
from skipper.client.models import (
    Artifact,
    Event,
    JsonList,
    Model,
    ModelSummary,
    ModelVersion,
    Predictions,
    TaskList,
    TaskState,
    Workflow,
)
from skipper.client.sync import STREAM_READ_TIMEOUT_S, unreachable

R = TypeVar("R")


@dataclass(frozen=True, slots=True, kw_only=True)
class AsyncTask(TaskState):
    """A training task, bound to the `AsyncClient` that fetched it."""

    client: AsyncClient = field(repr=False, compare=False)

    async def wait(self, on_progress: OnProgress | None = None, timeout: float | None = None, *,
                   on_event: OnEvent | None = None, install_timeout: float = 30.0, poll_interval: float = 0.25) -> AsyncTask:
        """Follow the task until it is over; see `Client.wait`."""
        return await self.client.wait(self.task_id, on_progress, timeout, on_event=on_event,
                                      install_timeout=install_timeout, poll_interval=poll_interval)

    async def refresh(self) -> AsyncTask:
        return await self.client.task(self.task_id)

    async def events(self) -> list[Event]:
        return await self.client.events(self.task_id)

    async def cancel(self) -> AsyncTask:
        return await self.client.cancel(self.task_id)


class AsyncClient:
    """`Client` for asyncio: every method is a coroutine. Use it as an async context manager or `await aclose()`."""

    def __init__(self, url: str = calls.DEFAULT_URL, api_key: str | None = None, *, timeout: float = 30.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.url = calls.api_url(url)
        self._timeout = timeout
        self._http = httpx.AsyncClient(base_url=self.url, headers=calls.headers(api_key), timeout=timeout,
                                       transport=transport)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    # --- the API (documented on Client) -----------------------------------------------------

    async def workflows(self) -> JsonList[Workflow]:
        return await self._do(calls.workflows())

    async def workflow(self, name: str) -> Workflow:
        return await self._do(calls.workflow(name))

    async def train(self, workflow: str, /, **params: Any) -> AsyncTask:
        return self._task(await self._do(calls.train(workflow, params)))

    async def task(self, task_id: str) -> AsyncTask:
        return self._task(await self._do(calls.task(task_id)))

    async def tasks(self, workflow: str | None = None, status: str | None = None, *, limit: int = 50,
                    offset: int = 0) -> TaskList:
        body = await self._do(calls.tasks(workflow, status, limit, offset))
        return TaskList([self._task(TaskState.from_json(t)) for t in body["tasks"]], body)

    async def cancel(self, task_id: str) -> AsyncTask:
        return self._task(await self._do(calls.cancel(task_id)))

    async def events(self, task_id: str) -> list[Event]:
        found: list[dict[str, Any]] = []
        while True:
            page = await self._do(calls.events(task_id, len(found)))
            found += page
            if len(page) < calls.EVENTS_PAGE:
                return calls.event_list(found)

    async def wait(self, task_id: str, on_progress: OnProgress | None = None, timeout: float | None = None, *,
                   on_event: OnEvent | None = None, install_timeout: float = 30.0, poll_interval: float = 0.25) -> AsyncTask:
        follow = Follow(task_id, timeout=timeout, install_timeout=install_timeout, on_progress=on_progress,
                        on_event=on_event)
        await self._stream(follow)
        while True:
            state = await self._do(calls.task(task_id))
            offset = follow.poll_offset(state)
            while True:
                page = await self._do(calls.events(task_id, offset))
                follow.add_page(page, offset)
                offset += len(page)
                if len(page) < calls.EVENTS_PAGE:
                    break
            if follow.done(state):
                return self._task(follow.outcome(state))
            follow.check_deadline()
            await asyncio.sleep(follow.remaining(poll_interval))

    async def models(self) -> JsonList[ModelSummary]:
        return await self._do(calls.models())

    async def model(self, name: str) -> Model:
        return await self._do(calls.model(name))

    async def deploy(self, model: str, version: int) -> ModelVersion:
        return await self._do(calls.deploy(model, version))

    async def predict(self, model: str, rows: Iterable[Any], version: int | None = None) -> Predictions:
        return await self._do(calls.predict(model, rows, version))

    async def download_artifact(self, model: str, version: int, path: str | os.PathLike[str]) -> Artifact:
        target = Path(path)
        digest, size = hashlib.sha256(), 0
        try:
            async with self._http.stream("GET", calls.artifact_path(model, version)) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise error_from_response(response.status_code, response.content, response.headers)
                with tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", delete=False) as out:
                    try:
                        async for chunk in response.aiter_bytes():
                            digest.update(chunk)
                            size += len(chunk)
                            out.write(chunk)
                    except BaseException:
                        os.unlink(out.name)
                        raise
                expected = response.headers.get("x-sha256")
        except httpx.TransportError as exc:
            raise unreachable(self.url.removesuffix(calls.API_BASE), exc) from exc
        if expected and expected.lower() != digest.hexdigest():
            os.unlink(out.name)
            raise ArtifactCorrupt(f"{model} v{version}: downloaded sha256 {digest.hexdigest()} does not match {expected}")
        os.replace(out.name, target)
        return Artifact(path=str(target), sha256=digest.hexdigest(), size=size)

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise unreachable(self.url.removesuffix(calls.API_BASE), exc) from exc
        if response.status_code >= 400:
            raise error_from_response(response.status_code, response.content, response.headers)
        return response

    # --- internals --------------------------------------------------------------------------

    async def _do(self, call: Call[R]) -> R:
        response = await self.request(call.method, call.path, params=call.params or None, json=call.json)
        return call.parse(response.json())

    def _task(self, state: TaskState) -> AsyncTask:
        return AsyncTask(**{f: getattr(state, f) for f in TaskState.__dataclass_fields__}, client=self)

    async def _stream(self, follow: Follow) -> None:
        timeout = httpx.Timeout(self._timeout, read=STREAM_READ_TIMEOUT_S)
        try:
            async with httpx_sse.aconnect_sse(self._http, "GET", calls.stream_path(follow.task_id),
                                              timeout=timeout) as source:
                response = source.response
                if response.status_code == 404:
                    return
                if response.status_code >= 400:
                    await response.aread()
                    raise error_from_response(response.status_code, response.content, response.headers)
                async for message in source.aiter_sse():
                    data = sse_data(message.data)
                    if data is not None:
                        follow.add(data)
                    follow.check_deadline()
        except (httpx.TransportError, httpx_sse.SSEError):
            return
