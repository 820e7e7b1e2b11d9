"""What each client method sends and how it reads the answer, shared by `Client` and `AsyncClient` (no I/O here)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import quote

from skipper import __version__
from skipper.client.errors import VersionNotServing
from skipper.client.models import (
    Event,
    JsonList,
    Model,
    ModelSummary,
    ModelVersion,
    Predictions,
    TaskState,
    Workflow,
)

API_BASE = "/api/v1/skipper"
DEFAULT_URL = "http://127.0.0.1:8000"
EVENTS_PAGE = 200  # the events route's page size stays within every server's limit

R = TypeVar("R")


def api_url(url: str) -> str:
    """The API root for a server URL: `127.0.0.1:8000`, `http://host:8000/` and `http://host/api/v1/skipper` all work."""
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    return url if url.endswith(API_BASE) else url + API_BASE


def headers(api_key: str | None) -> dict[str, str]:
    out = {"accept": "application/json", "user-agent": f"skipper-client/{__version__}"}
    if api_key:
        out["authorization"] = f"Bearer {api_key}"
    return out


def segment(value: str | int) -> str:
    """A path segment, escaped so that a name cannot reach another route."""
    return quote(str(value), safe="")


@dataclass(frozen=True, slots=True)
class Call(Generic[R]):
    """One request and the function that turns its JSON answer into the method's result."""

    method: str
    path: str
    parse: Callable[[Any], R]
    params: dict[str, Any] = field(default_factory=dict)
    json: Any = None


def workflows() -> Call[JsonList[Workflow]]:
    return Call("GET", "/workflows", lambda body: JsonList([Workflow.from_json(w) for w in body["workflows"]], body))


def workflow(name: str) -> Call[Workflow]:
    return Call("GET", f"/workflows/{segment(name)}", Workflow.from_json)


def train(workflow: str, params: Mapping[str, Any]) -> Call[TaskState]:
    return Call("POST", f"/workflows/{segment(workflow)}/train", TaskState.from_json, json={"params": dict(params)})


def task(task_id: str) -> Call[TaskState]:
    return Call("GET", f"/tasks/{segment(task_id)}", TaskState.from_json)


def tasks(workflow: str | None, status: str | None, limit: int, offset: int) -> Call[dict[str, Any]]:
    query: dict[str, Any] = {"limit": limit, "offset": offset}
    query.update({k: v for k, v in (("workflow", workflow), ("status", status)) if v})
    return Call("GET", "/tasks", _object, params=query)


def cancel(task_id: str) -> Call[TaskState]:
    return Call("DELETE", f"/tasks/{segment(task_id)}", TaskState.from_json)


def events(task_id: str, offset: int) -> Call[list[dict[str, Any]]]:
    return Call("GET", f"/tasks/{segment(task_id)}/events", lambda body: list(body["events"]),
                params={"offset": offset, "limit": EVENTS_PAGE})


def stream_path(task_id: str) -> str:
    return f"/tasks/{segment(task_id)}/stream"


def models() -> Call[JsonList[ModelSummary]]:
    return Call("GET", "/models", lambda body: JsonList([ModelSummary.from_json(m) for m in body["models"]], body))


def model(name: str) -> Call[Model]:
    return Call("GET", f"/models/{segment(name)}", Model.from_json)


def deploy(name: str, version: int) -> Call[ModelVersion]:
    return Call("POST", f"/models/{segment(name)}/versions/{int(version)}/deploy", ModelVersion.from_json)


def artifact_path(name: str, version: int) -> str:
    return f"/models/{segment(name)}/versions/{int(version)}/artifact"


def predict(name: str, rows: Iterable[Any], version: int | None) -> Call[Predictions]:
    def parse(body: Any) -> Predictions:
        result = Predictions(list(body["predictions"]), body)
        if version is not None and result.model_version != version:
            raise VersionNotServing(
                f"{name} v{version} is not serving (v{result.model_version} answered); deploy it first: "
                f"skipper deploy {name} {version}", expected=version, serving=result.model_version)
        return result

    # A NumPy array (or anything with tolist) goes as nested lists; JSON has no arrays of its own.
    instances = rows.tolist() if hasattr(rows, "tolist") else list(rows)
    return Call("POST", f"/models/{segment(name)}/predict", parse, json={"instances": instances})


def event_list(raw: list[dict[str, Any]]) -> list[Event]:
    return [Event.from_json(e) for e in raw]


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ValueError("expected a JSON object")
    return body
