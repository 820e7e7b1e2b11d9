"""Real clients against real Skipper processes: Triton's HTTP client (`tritonclient[http]`) speaking the
Open Inference Protocol, plain HTTP speaking TensorFlow Serving's REST API and the original Skipper
contract; on the memory transport (all in one process) and on RabbitMQ with the roles split.
Every answer is compared with the native route's predictions for the same rows.
"""

from __future__ import annotations

import json
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.liveserver import FEATURES, LiveSkipper, live_skipper
from tests.processes import ROW, Cluster, eventually, http, postgres_schema, train
from tests.services import RABBITMQ_URL, require_postgres, require_rabbitmq

pytestmark = pytest.mark.tensorflow  # the live servers train

ROWS = np.array([ROW, [-v for v in ROW], [0.0] * 10], dtype=np.float32)  # float32: what the client sends


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveSkipper]:
    """All in one process: diabetes v1 then v2 (so v1 is a version no server holds), and wine (classification)."""
    with live_skipper(tmp_path_factory.mktemp("protocols-live"), epochs=1) as server:
        for workflow in ["diabetes", "wine"]:
            assert train(server.role, workflow, epochs=1)["status"] == "succeeded"
        eventually(lambda: server.role.models() == {"diabetes": 2, "wine": 1}, what="diabetes v2 and wine v1 served")
        yield server


def native(api: str, model: str, rows: list[list[float]]) -> list[Any]:
    status, body = http("POST", f"{api}/models/{model}/predict", {"instances": rows})
    assert status == 200, body
    return list(body["predictions"])


def matrix(rows: np.ndarray) -> triton.InferInput:
    tensor = triton.InferInput("input", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows, binary_data=False)
    return tensor


def json_outputs(*names: str) -> list[triton.InferRequestedOutput]:
    return [triton.InferRequestedOutput(name, binary_data=False) for name in names]


def refused(call: Any, status: str) -> str:
    with pytest.raises(InferenceServerException) as caught:
        call()
    assert caught.value.status() == status, caught.value
    return str(caught.value.message())


def check_triton_client(port: int, api: str, held: int, not_held: int | None) -> None:
    """Health, metadata, infer (JSON tensors), versioned infer and error cases through Triton's client."""
    client = triton.InferenceServerClient(url=f"127.0.0.1:{port}")
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.get_server_metadata()["name"] == "skipper"
        metadata = client.get_model_metadata("diabetes")
        assert metadata["versions"] == [str(held)] and metadata["parameters"]["features"] == FEATURES
        assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 10]}]
        assert client.is_model_ready("diabetes") and client.is_model_ready("diabetes", str(held))
        assert not client.is_model_ready("nope")

        expected = native(api, "diabetes", ROWS.tolist())
        result = client.infer("diabetes", [matrix(ROWS)], outputs=json_outputs("predictions"), request_id="r-1")
        assert result.as_numpy("predictions").shape == (3, 1)
        assert result.as_numpy("predictions")[:, 0].tolist() == expected
        response = result.get_response()
        assert response["model_version"] == str(held) and response["id"] == "r-1"
        # no outputs named: the client asks for binary outputs and reads the JSON ones it gets
        assert client.infer("diabetes", [matrix(ROWS)]).as_numpy("predictions")[:, 0].tolist() == expected
        pinned = client.infer("diabetes", [matrix(ROWS)], model_version=str(held), outputs=json_outputs("predictions"))
        assert pinned.as_numpy("predictions")[:, 0].tolist() == expected

        if not_held is not None:
            assert not client.is_model_ready("diabetes", str(not_held))
            message = refused(lambda: client.infer("diabetes", [matrix(ROWS)], model_version=str(not_held)), "503")
            assert f"version {not_held}" in message and f"production version, {held}" in message
        refused(lambda: client.infer("diabetes", [matrix(ROWS)], model_version="99"), "404")
        refused(lambda: client.infer("nope", [matrix(ROWS)]), "404")
        refused(lambda: client.infer("diabetes", [matrix(ROWS[:, :9])]), "400")
        binary = triton.InferInput("input", list(ROWS.shape), "FP32")
        binary.set_data_from_numpy(ROWS, binary_data=True)
        assert "binary" in refused(lambda: client.infer("diabetes", [binary]), "400")
        assert client.is_server_live()  # and it keeps serving
    finally:
        client.close()


def test_triton_client_on_the_memory_transport(live: LiveSkipper) -> None:
    check_triton_client(live.role.port, live.api, held=2, not_held=1)
    # a classification model: probabilities [n, classes] and label [n]
    client = triton.InferenceServerClient(url=f"127.0.0.1:{live.role.port}")
    try:
        rows = np.random.default_rng(0).normal(size=(4, 13)).astype(np.float32) * 10
        result = client.infer("wine", [matrix(rows)], outputs=json_outputs("probabilities", "label"))
        expected = native(live.api, "wine", rows.tolist())
        assert result.as_numpy("probabilities").tolist() == [list(p["probabilities"].values()) for p in expected]
        assert [str(label) for label in result.as_numpy("label")] == [p["label"] for p in expected]
    finally:
        client.close()


def test_tf_serving_rest_over_plain_http(live: LiveSkipper) -> None:
    root = live.url
    rows = ROWS.tolist()
    expected = [[p] for p in native(live.api, "diabetes", rows)]
    columns = {name: [row[j] for row in rows] for j, name in enumerate(FEATURES)}
    assert http("POST", f"{root}/v1/models/diabetes:predict", {"instances": rows}) == (200, {"predictions": expected})
    objects = [dict(zip(FEATURES, row, strict=True)) for row in rows]
    assert http("POST", f"{root}/v1/models/diabetes/versions/2:predict", {"instances": objects})[1] == {
        "predictions": expected}
    assert http("POST", f"{root}/v1/models/diabetes:predict", {"inputs": columns}) == (200, {"outputs": expected})
    wine_rows = [[1.0] * 13, [-1.0] * 13]
    wine = native(live.api, "wine", wine_rows)
    assert http("POST", f"{root}/v1/models/wine:predict", {"inputs": wine_rows})[1] == {"outputs": {
        "probabilities": [list(p["probabilities"].values()) for p in wine], "label": [p["label"] for p in wine]}}

    ok = {"error_code": "OK", "error_message": ""}
    assert http("GET", f"{root}/v1/models/diabetes") == (200, {"model_version_status": [
        {"version": "2", "state": "AVAILABLE", "status": ok}]})
    status, metadata = http("GET", f"{root}/v1/models/diabetes/metadata")
    signature = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert status == 200 and set(signature["outputs"]) == {"predictions"}
    assert http("POST", f"{root}/v1/models/diabetes:predict", {"instances": rows, "inputs": rows})[0] == 400
    status, body = http("POST", f"{root}/v1/models/diabetes/versions/1:predict", {"instances": rows})
    assert status == 503 and isinstance(body["error"], str)


def test_responses_carry_the_correlation_id_and_do_not_name_the_server_software(live: LiveSkipper) -> None:
    with urllib.request.urlopen(f"{live.api}/health", timeout=10) as response:
        assert response.status == 200
        assert response.headers.get("x-correlation-id")
        assert response.headers.get("date")
        assert response.headers.get("server") is None


def test_a_client_of_the_original_skipper_trains_polls_and_predicts(live: LiveSkipper) -> None:
    api = live.api
    status, queued = http("POST", f"{api}/tasks/breast_cancer/execute_async",
                          {"task_type": "training", "payload": '{"epochs": 1}', "description": "from the old client"})
    assert status == 202 and queued["task_status"] == "Processing", queued
    polls: list[int] = []

    def finished() -> dict[str, Any] | None:
        status, body = http("GET", f"{api}/tasks/{queued['task_id']}")
        polls.append(status)
        return body if status == 200 else None

    done = eventually(finished, timeout=120, interval=0.1, what="training finished")
    assert polls[0] == 202 and done["task_status"] == "Success", (polls, done)
    version = json.loads(done["outcome"])["model_version"]
    features = http("GET", f"{live.url}/v2/models/breast_cancer")[1]["parameters"]["features"]
    row = {name: 0.5 for name in features}
    eventually(lambda: live.role.models().get("breast_cancer") == version, what="breast_cancer served")
    status, answer = http("POST", f"{api}/tasks/breast_cancer/execute_sync",
                          {"task_type": "serving", "payload": "", "data": row})
    assert status == 202 and answer["task_id"] == "-" and answer["task_status"] == "Success", answer
    outcome = json.loads(answer["outcome"])
    assert outcome["predictions"] == native(api, "breast_cancer", [[0.5] * len(features)])
    assert http("POST", f"{api}/tasks/execute_sync", {"task_type": "training", "payload": ""}) == (
        202, {"task_id": "-", "task_status": "Wrong task type"})


@pytest.mark.multiprocess
def test_triton_client_on_rabbitmq_with_the_roles_split(tmp_path: Path) -> None:
    require_rabbitmq()
    require_postgres()
    with postgres_schema() as database_url:
        cluster = Cluster(env={"SKIPPER_TRANSPORT": "rabbitmq", "SKIPPER_BROKER_URL": RABBITMQ_URL,
                               "SKIPPER_DATABASE_URL": database_url, "SKIPPER_NAMESPACE": f"oip-{uuid.uuid4().hex[:10]}",
                               "SKIPPER_LOG_JSON": "false", "SKIPPER_HTTP__PREDICT_TIMEOUT_S": "5"}, workdir=tmp_path)
        try:
            api = cluster.start("api", "api")
            cluster.start("trainer", "trainer")
            server = cluster.start("server", "server")
            assert train(api, "diabetes", epochs=1)["status"] == "succeeded"
            eventually(lambda: server.models() == {"diabetes": 1}, what="the server holds diabetes v1")
            check_triton_client(api.port, api.url, held=1, not_held=None)
        except BaseException:
            print(cluster.logs())
            raise
        finally:
            cluster.stop()
