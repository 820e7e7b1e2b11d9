"""The inference protocols' HTTP contract, in-process: Open Inference Protocol (`/v2`) and TensorFlow
Serving (`/v1/models`) over the real api module on the memory transport.

A small module plays the serving role on the bus the way servers do it (one version held per model,
`predict.status`, version-pinned requests), so these run without TensorFlow. Each protocol's answers
are compared with the native route's for the same rows. Real clients against real servers:
tests/e2e/test_protocols_live.py.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from skipper.app.runtime import Runtime
from skipper.core import contracts
from skipper.core.bus import Transport
from skipper.core.errors import ModelNotReady
from skipper.core.messages import Message
from skipper.core.module import Module
from skipper.core.settings import load_settings

BASE = "/api/v1/skipper"
DIABETES = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]
WINE = [f"f{i}" for i in range(13)]
CLASSES = ["class_0", "class_1", "class_2"]
ROWS = [[0.01 * (i + 1) * (j - 4) for j in range(10)] for i in range(3)]
WINE_ROWS = [[float((i + j) % 5) for j in range(13)] for i in range(4)]


class FakeServer(Module):
    """Holds one version of each model and answers predict and status requests as a server does."""

    name = "fake-server"

    def __init__(self, held: dict[str, int]) -> None:
        self.held = held

    def register(self, bus: Transport) -> None:
        for model in self.held:
            bus.consume(contracts.predict_queue(model), self.predict)

    async def predict(self, msg: Message) -> Message:
        model = msg.data["model"]
        held = self.held[model]
        if msg.type == contracts.PREDICT_STATUS:
            return msg.reply({"model": model, "version": held})
        if msg.data.get("version", held) != held:
            raise ModelNotReady(f"version {msg.data['version']} of model {model!r} is not loaded")
        rows = msg.data["instances"]
        predictions = [sum(r) for r in rows] if model == "diabetes" else [classify(r) for r in rows]
        return msg.reply({"predictions": predictions, "model": model, "model_version": held})


def classify(row: list[float]) -> dict[str, Any]:
    weights = [abs(v) + 1.0 for v in row[:3]]
    probabilities = [w / sum(weights) for w in weights]
    return {"label": CLASSES[probabilities.index(max(probabilities))],
            "probabilities": dict(zip(CLASSES, probabilities, strict=True))}


@dataclass
class Api:
    http: httpx.AsyncClient
    runtime: Runtime

    async def native(self, model: str, rows: list[list[float]]) -> dict[str, Any]:
        response = await self.http.post(f"{BASE}/models/{model}/predict", json={"instances": rows})
        assert response.status_code == 200, response.text
        return dict(response.json())


def add_version(runtime: Runtime, model: str, metadata: dict[str, Any]) -> None:
    data = f"{model}-{metadata}".encode()
    sha = hashlib.sha256(data).hexdigest()
    path = runtime.container.artifact_store().put(model, sha, data)
    runtime.container.registry().add_version(model=model, sha256=sha, size=len(data), path=str(path), metrics={},
                                             metadata=metadata, task_id=None)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    settings = load_settings(environ={}, overrides={"data_dir": str(tmp_path), "http": {"predict_timeout_s": 1,
                                                                                         "max_instances": 8}})
    runtime = Runtime(settings, frozenset({"api"}))
    runtime.modules.append(FakeServer({"diabetes": 2, "wine": 1}))
    await runtime.start()
    regression = {"features": DIABETES, "kind": "regression", "targets": ["target"]}
    add_version(runtime, "diabetes", regression)
    add_version(runtime, "diabetes", {**regression, "seed": 2})  # v2: production, held by the server
    add_version(runtime, "wine", {"features": WINE, "kind": "classification", "targets": ["target"], "classes": CLASSES})
    transport = httpx.ASGITransport(app=runtime.app())
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            yield Api(client, runtime)
    finally:
        await runtime.stop()


def string_error(response: httpx.Response, status: int) -> str:
    """The protocols' error shape: `{"error": "<text>"}`, never an object."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"], body
    return str(body["error"])


def tensor(rows: list[list[float]], datatype: str = "FP32", name: str = "input") -> dict[str, Any]:
    return {"name": name, "shape": [len(rows), len(rows[0])], "datatype": datatype, "data": [v for r in rows for v in r]}


# --- Open Inference Protocol ---------------------------------------------------------------------


async def test_oip_health_server_and_model_metadata(api: Api) -> None:
    c = api.http
    assert (await c.get("/v2/health/live")).json() == {"live": True}
    ready = await c.get("/v2/health/ready")
    assert ready.status_code == 200 and ready.json() == {"ready": True}
    server = (await c.get("/v2")).json()
    assert server["name"] == "skipper" and isinstance(server["version"], str) and server["extensions"] == []

    metadata = (await c.get("/v2/models/diabetes")).json()
    assert metadata == {"name": "diabetes", "versions": ["2"], "platform": "keras",
                        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 10]}],
                        "outputs": [{"name": "predictions", "datatype": "FP32", "shape": [-1, 1]}],
                        "parameters": {"features": DIABETES}}
    assert (await c.get("/v2/models/diabetes/versions/1")).json()["versions"] == ["1"]
    wine = (await c.get("/v2/models/wine")).json()
    assert wine["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 13]}]
    assert wine["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]},
                               {"name": "label", "datatype": "BYTES", "shape": [-1]}]

    # ready: 200 only when a server holds the model (or that version)
    assert (await c.get("/v2/models/diabetes/ready")).json() == {"name": "diabetes", "ready": True}
    assert (await c.get("/v2/models/diabetes/versions/2/ready")).status_code == 200
    not_held = await c.get("/v2/models/diabetes/versions/1/ready")
    assert not_held.status_code == 503 and not_held.json() == {"name": "diabetes", "ready": False}
    no_server = await c.get("/v2/models/breast_cancer/ready")  # a workflow's model, never trained
    assert no_server.status_code == 503 and no_server.json() == {"name": "breast_cancer", "ready": False}
    assert "unknown model" in string_error(await c.get("/v2/models/nope/ready"), 404)
    string_error(await c.get("/v2/models/diabetes/versions/9/ready"), 404)
    string_error(await c.get("/v2/models/nope"), 404)
    string_error(await c.get("/v2/models/diabetes/versions/9"), 404)
    string_error(await c.get("/v2/models/breast_cancer"), 503)


async def test_oip_infer_answers_what_the_native_route_answers(api: Api) -> None:
    c = api.http
    native = await api.native("diabetes", ROWS)
    request = {"id": "req-1", "inputs": [tensor(ROWS)]}
    # Triton's client sends no content type
    answer = await c.post("/v2/models/diabetes/infer", content=httpx.Request("POST", "/", json=request).content)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"model_name": "diabetes", "model_version": "2", "id": "req-1", "outputs": [
        {"name": "predictions", "datatype": "FP32", "shape": [3, 1], "data": native["predictions"]}]}
    # nested data, other numeric datatypes, a pinned version: the same predictions
    nested = {"inputs": [{"name": "x", "shape": [3, 10], "datatype": "FP64", "data": ROWS}]}
    assert (await c.post("/v2/models/diabetes/versions/2/infer", json=nested)).json()["outputs"][0]["data"] == \
        native["predictions"]
    ints = [[i + j for j in range(10)] for i in range(2)]
    for datatype in ["INT32", "INT64"]:
        out = (await c.post("/v2/models/diabetes/infer", json={"inputs": [tensor(ints, datatype)]})).json()
        assert out["outputs"][0]["data"] == (await api.native("diabetes", ints))["predictions"], datatype
        assert "id" not in out

    # classification: probabilities [n, classes] and label [n], selectable by `outputs`
    native = await api.native("wine", WINE_ROWS)
    out = (await c.post("/v2/models/wine/infer", json={"inputs": [tensor(WINE_ROWS)]})).json()
    assert out["outputs"] == [
        {"name": "probabilities", "datatype": "FP32", "shape": [4, 3],
         "data": [p for row in native["predictions"] for p in row["probabilities"].values()]},
        {"name": "label", "datatype": "BYTES", "shape": [4], "data": [row["label"] for row in native["predictions"]]}]
    only = (await c.post("/v2/models/wine/infer", json={"inputs": [tensor(WINE_ROWS)], "outputs": [
        {"name": "label", "parameters": {"binary_data": True}}]})).json()  # asked binary, answered JSON
    assert [o["name"] for o in only["outputs"]] == ["label"] and only["outputs"][0]["data"] == out["outputs"][1]["data"]


async def test_oip_errors_are_a_string_with_the_protocols_status(api: Api) -> None:
    c = api.http
    url = "/v2/models/diabetes/infer"
    bad: list[tuple[Any, str]] = [
        ({"inputs": [{**tensor(ROWS), "shape": [3, 9]}]}, "10 features"),
        ({"inputs": [{**tensor(ROWS), "shape": [3]}]}, "shape"),
        ({"inputs": [{**tensor(ROWS), "shape": [4, 10]}]}, "elements"),
        ({"inputs": [{**tensor(ROWS), "data": tensor(ROWS)["data"][:-1]}]}, "elements"),
        ({"inputs": [tensor(ROWS, "BOOL")]}, "BOOL"),
        ({"inputs": [tensor(ROWS, "BYTES")]}, "BYTES"),
        ({"inputs": [{**tensor(ROWS), "data": ["a"] * 30}]}, "numbers"),
        ({"inputs": [tensor([[1e39] * 10])]}, "finite FP32"),
        ({"inputs": [tensor([[0.0] * 9 + [-1e39]])]}, "-1e+39 is not a finite FP32"),
        ({"inputs": [{**tensor([[0.0] * 10]), "data": [0.0] * 9 + [True]}]}, "numbers, got bool"),
        ({"inputs": [{**tensor([[0.0] * 10]), "shape": [True, 10]}]}, "shape must be"),
        ({"inputs": [tensor(ROWS, "FP16")]}, "input 'input': datatype 'FP16'"),
        ({"inputs": [tensor([[1.5] * 10], "INT32")]}, "integers"),
        ({"inputs": [tensor([[2**31] * 10], "INT32")]}, "range"),
        ({"inputs": [tensor([[0.0] * 10]) for _ in range(9)]}, "one tensor"),
        ({"inputs": [tensor(ROWS), tensor(ROWS)]}, "one tensor"),
        ({"inputs": []}, "one tensor"),
        ({"inputs": [{**tensor(ROWS), "parameters": {"binary_data_size": 120}}]}, "binary"),
        ({"inputs": [tensor(ROWS)], "outputs": [{"name": "nope"}]}, "unknown output"),
        ({"instances": ROWS}, "one tensor"),
        ({"inputs": [tensor([[0.0] * 10] * 9)]}, "between 1 and 8 rows"),
    ]
    for body, words in bad:
        assert words in string_error(await c.post(url, json=body), 400), body
    # the binary tensor extension is not offered: a body carrying binary data is refused, never misread
    binary = await c.post(url, content=b'{"inputs": []}\x00\x00', headers={"inference-header-content-length": "14"})
    assert "binary" in string_error(binary, 400)
    header_only = await c.post(url, json={"inputs": [tensor(ROWS)]}, headers={"inference-header-content-length": "9"})
    assert "binary" in string_error(header_only, 400)
    string_error(await c.post(url, content=b"{not json"), 400)
    overflow = b'{"inputs": [{"name": "x", "shape": [1, 10], "datatype": "FP64", "data": [1e400, 0, 0, 0, 0, 0, 0, 0, 0, 0]}]}'
    assert "finite" in string_error(await c.post(url, content=overflow), 400)
    assert "unknown model" in string_error(await c.post("/v2/models/nope/infer", json={"inputs": [tensor(ROWS)]}), 404)
    string_error(await c.post("/v2/models/diabetes/versions/7/infer", json={"inputs": [tensor(ROWS)]}), 404)
    not_loaded = string_error(await c.post("/v2/models/diabetes/versions/1/infer", json={"inputs": [tensor(ROWS)]}), 503)
    assert "version 1" in not_loaded
    never_trained = {"inputs": [tensor([[0.0] * 30])]}
    assert "no trained version" in string_error(await c.post("/v2/models/breast_cancer/infer", json=never_trained), 503)
    string_error(await c.get("/v2/no/such/route"), 404)
    # the process keeps serving
    assert (await c.post(url, json={"inputs": [tensor(ROWS)]})).status_code == 200


# --- TensorFlow Serving ----------------------------------------------------------------------------


async def test_tf_serving_row_and_columnar_forms_answer_what_the_native_route_answers(api: Api) -> None:
    c = api.http
    native = [[p] for p in (await api.native("diabetes", ROWS))["predictions"]]
    objects = [dict(zip(DIABETES, row, strict=True)) for row in ROWS]
    columns = {name: [row[j] for row in ROWS] for j, name in enumerate(DIABETES)}
    for url in ["/v1/models/diabetes:predict", "/v1/models/diabetes/versions/2:predict"]:
        for body in [{"instances": ROWS}, {"instances": objects, "signature_name": "serving_default"}]:
            answer = await c.post(url, json=body)
            assert answer.status_code == 200 and answer.json() == {"predictions": native}, answer.text
        for body in [{"inputs": ROWS}, {"inputs": columns}, {"inputs": {"input": ROWS}}]:
            assert (await c.post(url, json=body)).json() == {"outputs": native}, body

    wine = (await api.native("wine", WINE_ROWS))["predictions"]
    probabilities = [list(p["probabilities"].values()) for p in wine]
    labels = [p["label"] for p in wine]
    rows = (await c.post("/v1/models/wine:predict", json={"instances": WINE_ROWS})).json()
    assert rows == {"predictions": [{"probabilities": p, "label": lab} for p, lab in zip(probabilities, labels,
                                                                                          strict=True)]}
    columnar = (await c.post("/v1/models/wine:predict", json={"inputs": WINE_ROWS})).json()
    assert columnar == {"outputs": {"probabilities": probabilities, "label": labels}}


async def test_tf_serving_status_metadata_and_errors(api: Api) -> None:
    c = api.http
    ok = {"error_code": "OK", "error_message": ""}
    assert (await c.get("/v1/models/diabetes")).json() == {
        "model_version_status": [{"version": "2", "state": "AVAILABLE", "status": ok}]}
    assert (await c.get("/v1/models/diabetes/versions/2")).json()["model_version_status"][0]["state"] == "AVAILABLE"
    assert (await c.get("/v1/models/diabetes/versions/1")).json() == {
        "model_version_status": [{"version": "1", "state": "END", "status": ok}]}  # known, not loaded
    string_error(await c.get("/v1/models/diabetes/versions/5"), 404)
    string_error(await c.get("/v1/models/nope"), 404)
    string_error(await c.get("/v1/models/breast_cancer"), 503)

    metadata = (await c.get("/v1/models/wine/metadata")).json()
    assert metadata["model_spec"] == {"name": "wine", "signature_name": "", "version": "1"}
    signature = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["method_name"] == "tensorflow/serving/predict"
    assert signature["inputs"]["input"]["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in signature["inputs"]["input"]["tensor_shape"]["dim"]] == ["-1", "13"]
    assert signature["outputs"]["label"]["dtype"] == "DT_STRING"
    assert [d["size"] for d in signature["outputs"]["probabilities"]["tensor_shape"]["dim"]] == ["-1", "3"]
    versioned = (await c.get("/v1/models/diabetes/versions/1/metadata")).json()
    assert versioned["model_spec"]["version"] == "1"
    string_error(await c.get("/v1/models/diabetes/versions/5/metadata"), 404)

    url = "/v1/models/diabetes:predict"
    for body, words in [({"instances": ROWS, "inputs": ROWS}, "not both"), ({}, "'instances'"),
                        ({"instances": [[1.0] * 9]}, "expected 10"), ({"instances": [{"nope": 1.0}]}, "unknown feature"),
                        ({"inputs": {"age": [1.0]}}, "missing feature"), ({"inputs": {**{f: [1.0] for f in DIABETES},
                                                                                      "age": [1.0, 2.0]}}, "same length"),
                        ({"instances": ROWS, "signature_name": "other"}, "signature_name"),
                        ({"instances": [["x"] * 10]}, "must be a number"), ({"instances": []}, "non-empty")]:
        assert words in string_error(await c.post(url, json=body), 400), body
    string_error(await c.post("/v1/models/nope:predict", json={"instances": ROWS}), 404)
    string_error(await c.post("/v1/models/diabetes/versions/1:predict", json={"instances": ROWS}), 503)
    string_error(await c.post("/v1/models/breast_cancer:predict", json={"instances": [[0.0] * 30]}), 503)
    string_error(await c.get("/v1/models/diabetes:predict"), 404)


# --- predictions as tensors, for every kind of model ----------------------------------------------


def test_several_targets_become_side_by_side_columns_in_the_order_the_server_answered() -> None:
    from skipper.modules.api.tensors import output_specs, to_tensors

    regression = to_tensors([{"a": 1.0, "b": 2.0}, {"a": 3.0, "b": 4.0}])
    assert [(t.name, t.shape, t.flat()) for t in regression] == [("predictions", [2, 2], [1.0, 2.0, 3.0, 4.0])]
    heads = {"colour": {"label": "red", "probabilities": {"red": 0.9, "blue": 0.1}},
             "size": {"label": "L", "probabilities": {"S": 0.2, "M": 0.3, "L": 0.5}}}
    probabilities, label = to_tensors([heads])
    assert (probabilities.shape, probabilities.flat()) == ([1, 5], [0.9, 0.1, 0.2, 0.3, 0.5])
    assert (label.datatype, label.shape, label.flat()) == ("BYTES", [1, 2], ["red", "L"])
    metadata = {"kind": "classification", "targets": ["colour", "size"],
                "classes": {"colour": ["red", "blue"], "size": ["S", "M", "L"]}}
    assert [(s.name, s.shape) for s in output_specs(metadata)] == [("probabilities", [-1, 5]), ("label", [-1, 2])]
    assert [(s.name, s.shape) for s in output_specs({"kind": "regression", "targets": ["a", "b"]})] == [
        ("predictions", [-1, 2])]


@pytest.mark.parametrize("predictions", [[152.5, -3.25], [152.5, 7], [4, 5]])
@pytest.mark.parametrize("wanted", [None, ["predictions"]])
def test_one_target_regression_outputs_are_the_general_conversion(predictions: list[Any], wanted: list[str] | None) -> None:
    # The usual answer (floats, one target) skips building tensors; it must say exactly what the general path says.
    from skipper.modules.api import oip, tensors

    general = [{"name": t.name, "datatype": t.datatype, "shape": t.shape, "data": t.flat()}
               for t in tensors.select(tensors.to_tensors(predictions), wanted)]
    assert oip._outputs(predictions, wanted) == general
    assert [type(v) for v in oip._outputs(predictions, wanted)[0]["data"]] == [float] * len(predictions)
