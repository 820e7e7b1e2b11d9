"""`skipper.client` against a live all-in-one Skipper process: typed results, typed errors, following a task."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from skipper.client import (
    ApiError,
    ArtifactCorrupt,
    AsyncClient,
    BadRequest,
    Client,
    Conflict,
    Forbidden,
    InvalidInput,
    ModelNotReady,
    ModelRejected,
    NotFound,
    PayloadTooLarge,
    Progress,
    RequestTimeout,
    ServerError,
    ServerUnreachable,
    TaskFailed,
    TooManyRequests,
    Unauthorized,
    Unavailable,
    UnsupportedMediaType,
    VersionNotServing,
    WaitTimeout,
)
from tests.fakeapi import KEY, FakeApi, serving
from tests.liveserver import FEATURES, LiveSkipper, live_skipper
from tests.processes import ROW, free_port

pytestmark = pytest.mark.tensorflow  # the live server trains


@pytest.fixture
def client(skipper_server: LiveSkipper) -> Iterator[Client]:
    with Client(skipper_server.url) as c:
        yield c


@pytest.fixture(scope="module")
def fake() -> Iterator[tuple[FakeApi, str]]:
    api = FakeApi()
    with serving(api) as url:
        yield api, url


# --- typed results and following a task ------------------------------------------------------


def test_train_then_wait_reports_every_epoch_and_returns_once_the_new_version_serves(client: Client) -> None:
    seen: list[Progress] = []
    task = client.train("diabetes", epochs=3, hidden_units=[16])
    assert task.status == "queued" and task.params["epochs"] == 3 and task.params["hidden_units"] == [16]
    done = task.wait(on_progress=seen.append, timeout=180)
    assert [p.epoch for p in seen] == [1, 2, 3] and all(p.epochs == 3 for p in seen)
    assert all(p.loss is not None and p.val_loss is not None for p in seen)
    assert done.status == "succeeded" and done.result is not None
    assert done.installation is not None and done.installation.installed
    assert done.installation.version == done.result.model_version
    assert {"rmse", "mae"} <= set(done.result.metrics)
    # The version serves already: a prediction right after the wait gets it.
    predictions = client.predict("diabetes", [ROW])
    assert predictions.model_version == done.result.model_version and len(predictions) == 1
    # The server tags its install with the task that trained the version (the registry passes task_id on).
    kinds = [e.kind for e in done.events()]
    assert kinds[0] == "task.queued" and "model.installed" in kinds and kinds.count("task.progress") == 3


def test_results_are_typed_and_keep_the_servers_json(client: Client, skipper_server: LiveSkipper) -> None:
    workflows = client.workflows()
    assert {w.name for w in workflows} >= {"diabetes", "wine"} and workflows.raw == skipper_server.get("/workflows")
    diabetes = next(w for w in workflows if w.name == "diabetes")
    assert diabetes.model == "diabetes" and diabetes.kind == "regression" and diabetes.params["epochs"] == 100
    model = client.model("diabetes")
    assert model.features == FEATURES and model.production_version is not None
    assert any(v.task_id == skipper_server.task_id for v in model.versions)
    summary = {m.model: m for m in client.models()}["diabetes"]
    assert summary.production_version == model.production_version and summary.versions == len(model.versions)
    page = client.tasks(workflow="diabetes", status="succeeded", limit=1)
    assert len(page) == 1 and page.total >= 1 and page[0].status == "succeeded"
    by_name = client.predict("diabetes", [dict(zip(FEATURES, ROW, strict=True)), ROW])
    assert len(by_name) == 2 and by_name[0] == pytest.approx(by_name[1])
    assert client.predict("diabetes", np.array([ROW, ROW])) == by_name  # a NumPy array goes as nested lists


def test_waiting_for_a_finished_task_returns_at_once_with_its_install(client: Client, skipper_server: LiveSkipper) -> None:
    done = client.task(skipper_server.task_id).wait(timeout=30)
    assert done.result is not None and done.result.model_version == skipper_server.version
    assert done.installation is not None and done.installation.installed


def test_deploy_and_download_an_artifact_checked_against_its_sha256(client: Client, skipper_server: LiveSkipper,
                                                                    tmp_path: Path) -> None:
    deployed = client.deploy("diabetes", skipper_server.version)
    assert deployed.production and deployed.version == skipper_server.version
    saved = client.download_artifact("diabetes", skipper_server.version, tmp_path / "model.tar.gz")
    version = next(v for v in client.model("diabetes").versions if v.version == skipper_server.version)
    assert saved.sha256 == version.sha256 and saved.size == version.size
    assert (tmp_path / "model.tar.gz").stat().st_size == version.size
    assert [p.name for p in tmp_path.iterdir()] == ["model.tar.gz"]  # no temporary file left


async def test_the_async_client_has_the_same_api(skipper_server: LiveSkipper) -> None:
    async with AsyncClient(skipper_server.url) as client:
        assert "diabetes" in {w.name for w in await client.workflows()}
        task = await client.task(skipper_server.task_id)
        done = await task.wait(timeout=30)
        assert done.installation is not None and done.installation.version == skipper_server.version
        assert len(await client.predict("diabetes", [ROW, ROW])) == 2
        with pytest.raises(InvalidInput) as info:
            await client.train("diabetes", epochs=0)
        assert info.value.field == "params.epochs"


# --- typed errors, one per status the server gives ---------------------------------------------


def test_400_malformed_json(client: Client) -> None:
    with pytest.raises(BadRequest) as info:
        client.request("POST", "/models/diabetes/predict", content=b'{"instances": [',
                       headers={"content-type": "application/json"})
    assert info.value.status == 400 and info.value.code == "bad_request" and "JSON" in info.value.message


@pytest.mark.parametrize("call", ["task", "train", "model", "deploy", "predict"])
def test_404_unknown_names(client: Client, call: str) -> None:
    calls = {"task": lambda: client.task("no-such-task"), "train": lambda: client.train("no-such-workflow"),
             "model": lambda: client.model("no-such-model"), "deploy": lambda: client.deploy("diabetes", 999),
             "predict": lambda: client.predict("no-such-model", [ROW])}
    with pytest.raises(NotFound) as info:
        calls[call]()
    assert info.value.status == 404 and info.value.code == "not_found"


def test_409_cancelling_a_finished_task(client: Client, skipper_server: LiveSkipper) -> None:
    with pytest.raises(Conflict) as info:
        client.cancel(skipper_server.task_id)
    assert info.value.details["status"] == "succeeded"


def test_413_a_body_over_the_limit(client: Client) -> None:
    with pytest.raises(PayloadTooLarge) as info:
        client.predict("diabetes", [[0.12345678901234567] * 10] * 8000)  # ~1.5 MB against the default 1 MiB
    assert info.value.details["limit_bytes"] == 1024 * 1024


@pytest.mark.parametrize(("call", "field"), [("rows", "instances[0]"), ("feature", "instances[0].colour"),
                                             ("params", "params.epochs")])
def test_422_names_the_field(client: Client, call: str, field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        if call == "rows":
            client.predict("diabetes", [[1.0, 2.0]])
        elif call == "feature":
            client.predict("diabetes", [{"colour": 1.0}])
        else:
            client.train("diabetes", epochs=0)
    assert info.value.status == 422 and info.value.field == field


def test_503_a_model_with_no_version_yet(client: Client) -> None:
    with pytest.raises(ModelNotReady) as info:
        client.predict("wine", [[0.0] * 13])
    assert isinstance(info.value, Unavailable) and info.value.status == 503 and info.value.code == "model_not_ready"


def test_504_no_reply_in_time(tmp_path: Path) -> None:
    # A server whose predict timeout is shorter than any model call answers every prediction 504.
    timeout = {"SKIPPER_HTTP__PREDICT_TIMEOUT_S": "0.000001"}
    with live_skipper(tmp_path, timeout, epochs=1) as slow, Client(slow.url) as client, pytest.raises(RequestTimeout) as info:
        client.predict("diabetes", [ROW])
    assert info.value.status == 504 and info.value.code == "timeout"


def test_no_server_at_the_url_is_server_unreachable() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with Client(url, timeout=5) as client, pytest.raises(ServerUnreachable) as info:
        client.workflows()
    assert info.value.url == url and "cannot reach" in info.value.message


def test_predicting_with_a_version_that_is_not_serving(client: Client, skipper_server: LiveSkipper) -> None:
    assert client.predict("diabetes", [ROW], version=client.model("diabetes").production_version).model_version
    with pytest.raises(VersionNotServing) as info:
        client.predict("diabetes", [ROW], version=999)
    assert info.value.expected == 999 and info.value.serving is not None


# --- the auth contract and other statuses, from a real HTTP server ------------------------------


def test_401_and_403_from_the_bearer_key_contract(fake: tuple[FakeApi, str]) -> None:
    api, url = fake
    with Client(url) as anonymous, pytest.raises(Unauthorized) as info:
        anonymous.request("GET", "/auth/read")
    assert info.value.code == "unauthorized" and info.value.headers["www-authenticate"] == "Bearer"
    with Client(url, api_key=KEY) as keyed:
        assert keyed.request("GET", "/auth/read").json() == {"ok": True}
        with pytest.raises(Forbidden) as forbidden:
            keyed.request("GET", "/auth/admin")
    assert forbidden.value.status == 403 and forbidden.value.code == "forbidden"
    assert [auth for _, path, auth in api.seen if path.endswith("/auth/read")] == [None, f"Bearer {KEY}"]


@pytest.mark.parametrize(("status", "error"), [(415, UnsupportedMediaType), (429, TooManyRequests), (502, ServerError)])
def test_other_statuses_map_to_their_types(fake: tuple[FakeApi, str], status: int, error: type[ApiError]) -> None:
    with Client(fake[1]) as client, pytest.raises(error) as info:
        client.request("POST", f"/status/{status}")
    assert info.value.status == status
    if status == 429:
        assert isinstance(info.value, TooManyRequests) and info.value.retry_after == 2.0
    if status == 502:  # not Skipper's error shape: the start of the body becomes the message
        assert "Bad Gateway" in info.value.message


def test_wait_follows_the_event_stream_when_the_server_has_one(fake: tuple[FakeApi, str]) -> None:
    api, url = fake
    seen: list[Progress] = []
    with Client(url) as client:
        done = client.wait("streamed", on_progress=seen.append, timeout=10)
    # The fake's polling route lists no events for this task: these came through the stream.
    assert [(p.epoch, p.loss, p.val_loss) for p in seen] == [(1, 100.0, 120.0), (2, 50.0, 60.0), (3, 100.0 / 3, 40.0)]
    assert done.installation is not None and done.installation.installed and done.installation.version == 7
    assert ("GET", "/api/v1/skipper/tasks/streamed/stream", "text/event-stream") in api.seen


def test_wait_raises_when_the_task_failed_or_its_version_was_rejected(fake: tuple[FakeApi, str]) -> None:
    with Client(fake[1]) as client:
        with pytest.raises(TaskFailed, match="unobtainium"):
            client.wait("failed", timeout=10)
        with pytest.raises(ModelRejected) as rejected:
            client.wait("rejected", timeout=10)
        assert rejected.value.reason == "checksum mismatch" and rejected.value.task.result is not None
        with pytest.raises(WaitTimeout):
            client.wait("stuck", timeout=0.5, poll_interval=0.05)


def test_a_download_that_does_not_match_its_sha256_is_refused(fake: tuple[FakeApi, str], tmp_path: Path) -> None:
    with Client(fake[1]) as client, pytest.raises(ArtifactCorrupt):
        client.download_artifact("diabetes", 1, tmp_path / "model.tar.gz")
    assert list(tmp_path.iterdir()) == []


def test_the_client_imports_neither_tensorflow_nor_the_server() -> None:
    code = ("import sys, skipper.client; heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('tensorflow', 'keras', 'numpy', 'starlette', 'sqlalchemy', 'uvicorn', 'pika', 'dramatiq')); "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)
