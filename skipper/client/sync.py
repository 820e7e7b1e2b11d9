"""`Client`: Skipper's HTTP API as typed Python calls (httpx, blocking)."""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import httpx
import httpx_sse

from skipper.client import calls
from skipper.client.calls import Call
from skipper.client.errors import ArtifactCorrupt, ServerUnreachable, error_from_response
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

R = TypeVar("R")

# The stream sends heartbeats; this long without a byte means it is gone and polling takes over.
STREAM_READ_TIMEOUT_S = 60.0


def unreachable(url: str, exc: httpx.TransportError) -> ServerUnreachable:
    """The client's error for a request that got no HTTP answer."""
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        return ServerUnreachable(f"cannot reach Skipper at {url}: {exc or type(exc).__name__}", url=url)
    if isinstance(exc, httpx.TimeoutException):
        return ServerUnreachable(f"Skipper at {url} did not answer in time ({type(exc).__name__})", url=url)
    return ServerUnreachable(f"the connection to Skipper at {url} failed: {exc or type(exc).__name__}", url=url)


@dataclass(frozen=True, slots=True, kw_only=True)
class Task(TaskState):
    """A training task, bound to the client that fetched it."""

    client: Client = field(repr=False, compare=False)

    def wait(self, on_progress: OnProgress | None = None, timeout: float | None = None, *, on_event: OnEvent | None = None,
             install_timeout: float = 30.0, poll_interval: float = 0.25) -> Task:
        """Follow the task until it is over; see `Client.wait`."""
        return self.client.wait(self.task_id, on_progress, timeout, on_event=on_event, install_timeout=install_timeout,
                                poll_interval=poll_interval)

    def refresh(self) -> Task:
        return self.client.task(self.task_id)

    def events(self) -> list[Event]:
        return self.client.events(self.task_id)

    def cancel(self) -> Task:
        return self.client.cancel(self.task_id)


class Client:
    """A Skipper server's API: `Client("http://127.0.0.1:8000", api_key=...)`. Use it as a context manager or `close()` it."""

    def __init__(self, url: str = calls.DEFAULT_URL, api_key: str | None = None, *, timeout: float = 30.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.url = calls.api_url(url)
        self._timeout = timeout
        self._http = httpx.Client(base_url=self.url, headers=calls.headers(api_key), timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # --- the API ----------------------------------------------------------------------------

    def workflows(self) -> JsonList[Workflow]:
        """The workflows the server can train, with their default parameters."""
        return self._do(calls.workflows())

    def workflow(self, name: str) -> Workflow:
        return self._do(calls.workflow(name))

    def train(self, workflow: str, /, **params: Any) -> Task:
        """Queue a training task; `params` override the workflow's defaults (`epochs=5, hidden_units=[64, 32]`)."""
        return self._task(self._do(calls.train(workflow, params)))

    def task(self, task_id: str) -> Task:
        return self._task(self._do(calls.task(task_id)))

    def tasks(self, workflow: str | None = None, status: str | None = None, *, limit: int = 50, offset: int = 0) -> TaskList:
        """Tasks, newest first, filtered by workflow and status; `.total` counts them all."""
        body = self._do(calls.tasks(workflow, status, limit, offset))
        return TaskList([self._task(TaskState.from_json(t)) for t in body["tasks"]], body)

    def cancel(self, task_id: str) -> Task:
        """Cancel a queued or running task (a running one stops at its next epoch); `Conflict` once it finished."""
        return self._task(self._do(calls.cancel(task_id)))

    def events(self, task_id: str) -> list[Event]:
        """Every event of a task so far, oldest first."""
        found: list[dict[str, Any]] = []
        while True:
            page = self._do(calls.events(task_id, len(found)))
            found += page
            if len(page) < calls.EVENTS_PAGE:
                return calls.event_list(found)

    def wait(self, task_id: str, on_progress: OnProgress | None = None, timeout: float | None = None, *,
             on_event: OnEvent | None = None, install_timeout: float = 30.0, poll_interval: float = 0.25) -> Task:
        """Follow a task until it failed, was cancelled, or succeeded and a server installed its version.

        `on_progress(Progress)` is called once per epoch, `on_event(Event)` for every event. Returns the
        finished task (`.result`, `.installation`); raises `TaskFailed`, `TaskCancelled`, `ModelRejected`,
        or `WaitTimeout` after `timeout` seconds. When no server reports the install within
        `install_timeout` seconds of success, returns with `installation` None.
        """
        follow = Follow(task_id, timeout=timeout, install_timeout=install_timeout, on_progress=on_progress,
                        on_event=on_event)
        self._stream(follow)
        while True:
            state = self._do(calls.task(task_id))
            offset = follow.poll_offset(state)
            while True:
                page = self._do(calls.events(task_id, offset))
                follow.add_page(page, offset)
                offset += len(page)
                if len(page) < calls.EVENTS_PAGE:
                    break
            if follow.done(state):
                return self._task(follow.outcome(state))
            follow.check_deadline()
            time.sleep(follow.remaining(poll_interval))

    def models(self) -> JsonList[ModelSummary]:
        return self._do(calls.models())

    def model(self, name: str) -> Model:
        """A model's versions with their metrics; `production_version` is the one serving."""
        return self._do(calls.model(name))

    def deploy(self, model: str, version: int) -> ModelVersion:
        """Make `version` production (promote or roll back); every server swaps to it."""
        return self._do(calls.deploy(model, version))

    def predict(self, model: str, rows: Iterable[Any], version: int | None = None) -> Predictions:
        """Predictions from the production version for `rows`: lists in feature order, {feature: value} objects, or a 2-D array.

        With `version`, raises `VersionNotServing` unless that version answered.
        """
        return self._do(calls.predict(model, rows, version))

    def download_artifact(self, model: str, version: int, path: str | os.PathLike[str]) -> Artifact:
        """Save a version's artifact (tar.gz) to `path`, checked against the server's sha256."""
        target = Path(path)
        digest, size = hashlib.sha256(), 0
        try:
            with self._http.stream("GET", calls.artifact_path(model, version)) as response:
                if response.status_code >= 400:
                    response.read()
                    raise error_from_response(response.status_code, response.content, response.headers)
                with tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", delete=False) as out:
                    try:
                        for chunk in response.iter_bytes():
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

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Any API call (`path` below /api/v1/skipper); error statuses raise the typed errors."""
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise unreachable(self.url.removesuffix(calls.API_BASE), exc) from exc
        if response.status_code >= 400:
            raise error_from_response(response.status_code, response.content, response.headers)
        return response

    # --- internals --------------------------------------------------------------------------

    def _do(self, call: Call[R]) -> R:
        response = self.request(call.method, call.path, params=call.params or None, json=call.json)
        return call.parse(response.json())

    def _task(self, state: TaskState) -> Task:
        return Task(**{f: getattr(state, f) for f in TaskState.__dataclass_fields__}, client=self)

    def _stream(self, follow: Follow) -> None:
        """Feed `follow` from the task's event stream until it ends; returns at once when the server has none."""
        timeout = httpx.Timeout(self._timeout, read=STREAM_READ_TIMEOUT_S)
        try:
            with httpx_sse.connect_sse(self._http, "GET", calls.stream_path(follow.task_id), timeout=timeout) as source:
                response = source.response
                if response.status_code == 404:
                    return  # no stream on this server (or no such task: polling says which)
                if response.status_code >= 400:
                    response.read()
                    raise error_from_response(response.status_code, response.content, response.headers)
                for message in source.iter_sse():
                    data = sse_data(message.data)
                    if data is not None:
                        follow.add(data)
                    follow.check_deadline()
        except (httpx.TransportError, httpx_sse.SSEError):
            return  # the stream broke or is not one: polling picks up from what was seen
