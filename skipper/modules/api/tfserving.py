"""TensorFlow Serving's REST API at `/v1/models`: predict (row and columnar forms), model status, metadata.

Thin: requests become `ApiService` calls (the same bus request and micro-batcher as the native
predict route); errors are `{"error": "<text>"}`, 400 / 404 / 503 as TF Serving maps them.
Outputs are the tensors of `tensors.py`: one tensor answers as its values, several as objects by
name. See docs/protocols.md.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict
from starlette.responses import JSONResponse, Response

from skipper.core.errors import BadRequest, SkipperError, Unavailable, ValidationFailed
from skipper.core.jsonio import FastJSONResponse
from skipper.core.routing import STRING_ERRORS, Call, Endpoint, RouteGroup
from skipper.modules.api import tensors
from skipper.modules.api.models import ModelPath, VersionPath
from skipper.modules.api.service import ApiService
from skipper.modules.api.validation import parse_instances

SIGNATURE = "serving_default"
_DTYPES = {"FP32": "DT_FLOAT", "BYTES": "DT_STRING"}


class PredictRequest(BaseModel):
    """`instances` (rows: lists in feature order or objects by feature name) or `inputs` (columnar), not both."""

    model_config = ConfigDict(extra="allow")
    signature_name: str | None = None
    instances: list[Any] | None = None
    inputs: list[Any] | dict[str, list[Any]] | None = None


class PredictResponse(BaseModel):
    """`predictions` answers `instances`; `outputs` answers `inputs`."""

    predictions: list[Any] | None = None
    outputs: list[Any] | dict[str, list[Any]] | None = None


class VersionStatus(BaseModel):
    version: str
    state: str
    status: dict[str, str]


class ModelStatus(BaseModel):
    model_version_status: list[VersionStatus]


class ModelMetadata(BaseModel):
    """`model_spec` and `metadata.signature_def.signature_def.serving_default`."""

    model_spec: dict[str, Any]
    metadata: dict[str, Any]


_ERRORS = {400: "Invalid input", 503: "No server has the model (or this version) loaded",
           504: "No server replied in time"}


class TfServingRoutes:
    def __init__(self, service: ApiService, max_instances: int) -> None:
        self._service = service
        self._max_instances = max_instances

    def routes(self) -> list[RouteGroup]:
        tags = ("TensorFlow Serving",)
        predict = "Predict with the production version (or a given version, when a server holds it)."
        return [RouteGroup("/v1/models", [
            Endpoint("POST", "/{model}:predict", self.predict, scope="predict", path_params=ModelPath,
                     body=PredictRequest, body_required=True, validate_body=False, responses={200: PredictResponse},
                     errors=_ERRORS, tags=tags, summary=predict),
            Endpoint("POST", "/{model}/versions/{version}:predict", self.predict, scope="predict",
                     path_params=VersionPath, body=PredictRequest, body_required=True, validate_body=False,
                     responses={200: PredictResponse}, errors=_ERRORS, tags=tags, summary=predict),
            Endpoint("GET", "/{model}", self.status, scope="predict", path_params=ModelPath,
                     responses={200: ModelStatus}, errors={503: "No server has the model loaded"}, tags=tags,
                     summary="The version the servers hold, AVAILABLE."),
            Endpoint("GET", "/{model}/versions/{version}", self.status, scope="predict", path_params=VersionPath,
                     responses={200: ModelStatus}, tags=tags,
                     summary="A version's state: AVAILABLE when the servers hold it, END otherwise."),
            Endpoint("GET", "/{model}/metadata", self.metadata, scope="predict", path_params=ModelPath,
                     responses={200: ModelMetadata}, errors={503: "No version trained yet"}, tags=tags,
                     summary="The production version's serving_default signature."),
            Endpoint("GET", "/{model}/versions/{version}/metadata", self.metadata, scope="predict",
                     path_params=VersionPath, responses={200: ModelMetadata}, tags=tags,
                     summary="A version's serving_default signature."),
        ], errors=STRING_ERRORS)]

    async def predict(self, call: Call[ModelPath | VersionPath, None, Any]) -> Response:
        model = call.path.model
        version = call.path.version if isinstance(call.path, VersionPath) else None
        try:
            columnar, rows = _rows(call.body, await self._service.features(model, version), self._max_instances)
        except SkipperError as exc:
            self._service.rejected(model, exc)
            raise
        try:
            reply = await self._service.predict_rows(model, rows, correlation_id=call.correlation_id, version=version)
        except ValidationFailed as exc:
            raise BadRequest(exc.message) from None
        outputs = tensors.to_tensors(reply["predictions"])
        if columnar:
            return FastJSONResponse({"outputs": outputs[0].rows if len(outputs) == 1 else {t.name: t.rows for t in outputs}})
        if len(outputs) == 1:
            return FastJSONResponse({"predictions": outputs[0].rows})
        return FastJSONResponse({"predictions": [{t.name: t.rows[i] for t in outputs} for i in range(len(rows))]})

    async def status(self, call: Call[ModelPath | VersionPath, None, None]) -> Response:
        model = call.path.model
        if isinstance(call.path, VersionPath):
            version = (await self._service.version(model, call.path.version)).version  # NotFound: 404
        else:
            version = (await self._service.production(model)).version
        held = await self._service.served_version(model)
        if held is None:
            raise Unavailable(f"no server has model {model!r} loaded", details={"model": model})
        if not isinstance(call.path, VersionPath):
            version = held
        state = "AVAILABLE" if held == version else "END"
        return JSONResponse({"model_version_status": [
            {"version": str(version), "state": state, "status": {"error_code": "OK", "error_message": ""}}]})

    async def metadata(self, call: Call[ModelPath | VersionPath, None, None]) -> Response:
        model = call.path.model
        if isinstance(call.path, VersionPath):
            version, metadata = call.path.version, await self._service.metadata(model, call.path.version)
        else:
            production = await self._service.production(model)
            version, metadata = production.version, production.metadata
        signature = {
            "inputs": _tensor_info([tensors.input_spec(metadata)]),
            "outputs": _tensor_info(tensors.output_specs(metadata)),
            "method_name": "tensorflow/serving/predict",
        }
        return JSONResponse({
            "model_spec": {"name": model, "signature_name": "", "version": str(version)},
            "metadata": {"signature_def": {"signature_def": {SIGNATURE: signature}}},
        })


def _tensor_info(specs: list[tensors.TensorSpec]) -> dict[str, Any]:
    return {spec.name: {"dtype": _DTYPES.get(spec.datatype, "DT_FLOAT"), "name": f"{spec.name}:0", "tensor_shape": {
        "dim": [{"size": str(d), "name": ""} for d in spec.shape], "unknown_rank": False}} for spec in specs}


def _rows(body: Any, features: list[str], max_rows: int) -> tuple[bool, list[list[float]]]:
    """(whether the request was columnar, the rows in feature order); `BadRequest` when invalid."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object with 'instances' or 'inputs'")
    signature = body.get("signature_name", SIGNATURE)
    if signature != SIGNATURE:
        raise BadRequest(f"unknown signature_name {signature!r}; this model has {SIGNATURE!r}")
    if "instances" in body and "inputs" in body:
        raise BadRequest("send either 'instances' (rows) or 'inputs' (columns), not both")
    if "instances" in body:
        return False, _parse(body["instances"], features, max_rows)
    if "inputs" not in body:
        raise BadRequest("the request must have 'instances' (rows) or 'inputs' (columns)")
    inputs = body["inputs"]
    if isinstance(inputs, dict) and set(inputs) == {tensors.INPUT}:
        inputs = inputs[tensors.INPUT]  # the one named input: the feature matrix
    if isinstance(inputs, dict):  # one column per feature
        unknown = sorted(set(inputs) - set(features))
        if unknown:
            raise BadRequest(f"inputs has unknown feature {unknown[0]!r}; the features are {', '.join(features)}")
        missing = [f for f in features if f not in inputs]
        if missing:
            raise BadRequest(f"inputs is missing feature {missing[0]!r}")
        columns = [inputs[f] for f in features]
        if not all(isinstance(c, list) for c in columns) or len({len(c) for c in columns}) != 1:
            raise BadRequest("every column of inputs must be a list of the same length")
        inputs = [list(row) for row in zip(*columns, strict=True)]
    return True, _parse(inputs, features, max_rows)


def _parse(instances: Any, features: list[str], max_rows: int) -> list[list[float]]:
    try:
        return parse_instances({"instances": instances}, features, max_rows)
    except ValidationFailed as exc:
        raise BadRequest(exc.message) from None
