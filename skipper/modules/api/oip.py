"""The Open Inference Protocol (KServe V2) over HTTP/REST at `/v2`: what Triton's and KServe's clients call.

Thin: requests become `ApiService` calls (the same bus request and micro-batcher as the native
predict route); errors are `{"error": "<text>"}`. Tensors are JSON only: the binary tensor
extension is not offered (`GET /v2` lists no extensions), a request with binary input data is a
400, and a request asking for binary outputs (Triton's client does when no outputs are named)
gets JSON tensors, which every client reads. See docs/protocols.md.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from skipper import __version__
from skipper.core import numbers
from skipper.core.errors import BadRequest, ModelNotReady, SkipperError, ValidationFailed
from skipper.core.jsonio import FastJSONResponse
from skipper.core.routing import STRING_ERRORS, Call, Endpoint, RouteGroup, header
from skipper.modules.api import tensors
from skipper.modules.api.models import ModelPath, VersionPath
from skipper.modules.api.service import ApiService

PLATFORM = "keras"
BINARY_HEADER = b"inference-header-content-length"
BINARY_REFUSED = "binary tensor data is not supported; send the tensors as JSON (binary_data=False)"


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class Live(BaseModel):
    live: bool


class Ready(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    """A model version's input (the feature matrix) and outputs; -1 is the batch dimension."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, Any] = Field(default_factory=dict, description="`features`: the input's columns, in order")


class InferInput(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]


class RequestedOutput(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str


class InferRequest(BaseModel):
    """One input tensor, the feature matrix `[rows, features]`, row-major data (flat or nested)."""

    model_config = ConfigDict(extra="allow")
    id: str | None = None
    inputs: list[InferInput] = Field(min_length=1, max_length=1)
    outputs: list[RequestedOutput] | None = None


class InferOutput(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    data: list[Any]


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[InferOutput]


_ERRORS = {400: "Invalid input: shape, datatype, element count, non-finite values, binary data",
           503: "No server has the model (or this version) loaded", 504: "No server replied in time"}


class OipRoutes:
    """`/v2/...`: health, server and model metadata, readiness, infer (optionally for one version)."""

    def __init__(self, service: ApiService, max_instances: int) -> None:
        self._service = service
        self._max_instances = max_instances

    def routes(self) -> list[RouteGroup]:
        tags = ("Open Inference Protocol",)
        infer = "Infer with the production version (or a given version, when a server holds it)."
        return [RouteGroup("/v2", [
            Endpoint("POST", "/models/{model}/infer", self.infer, scope="predict", path_params=ModelPath,
                     body=InferRequest, body_required=True, validate_body=False, responses={200: InferResponse},
                     errors=_ERRORS, tags=tags, summary=infer, precheck=_no_binary_body),
            Endpoint("POST", "/models/{model}/versions/{version}/infer", self.infer, scope="predict",
                     path_params=VersionPath, body=InferRequest, body_required=True, validate_body=False,
                     responses={200: InferResponse}, errors=_ERRORS, tags=tags, summary=infer, precheck=_no_binary_body),
            Endpoint("GET", "", self.server_metadata, scope="predict", responses={200: ServerMetadata}, tags=tags,
                     summary="Server name, version and protocol extensions (none: tensors are JSON)."),
            Endpoint("GET", "/health/live", self.live, scope="open", responses={200: Live}, tags=tags,
                     summary="Liveness."),
            Endpoint("GET", "/health/ready", self.ready, scope="open", responses={200: Ready, 503: Ready}, tags=tags,
                     summary="Readiness: 200 when this process can take inference requests."),
            Endpoint("GET", "/models/{model}", self.metadata, scope="predict", path_params=ModelPath,
                     responses={200: ModelMetadata}, tags=tags, errors={503: "No version trained yet"},
                     summary="The production version's inputs and outputs."),
            Endpoint("GET", "/models/{model}/versions/{version}", self.metadata, scope="predict",
                     path_params=VersionPath, responses={200: ModelMetadata}, tags=tags,
                     summary="A version's inputs and outputs."),
            Endpoint("GET", "/models/{model}/ready", self.model_ready, scope="predict", path_params=ModelPath,
                     responses={200: ModelReady, 503: ModelReady}, tags=tags,
                     summary="200 when a server holds the model, 503 otherwise."),
            Endpoint("GET", "/models/{model}/versions/{version}/ready", self.model_ready, scope="predict",
                     path_params=VersionPath, responses={200: ModelReady, 503: ModelReady}, tags=tags,
                     summary="200 when a server holds this version, 503 otherwise."),
        ], errors=STRING_ERRORS)]

    # --- health and metadata --------------------------------------------------------------

    async def server_metadata(self, call: Call[None, None, None]) -> Response:
        return JSONResponse({"name": "skipper", "version": __version__, "extensions": []})

    async def live(self, call: Call[None, None, None]) -> Response:
        return JSONResponse({"live": True})

    async def ready(self, call: Call[None, None, None]) -> Response:
        ready = self._service.ready()
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    async def metadata(self, call: Call[ModelPath | VersionPath, None, None]) -> Response:
        model, version = call.path.model, _version(call.path)
        if version is None:
            production = await self._service.production(model)
            version, metadata = production.version, production.metadata
        else:
            metadata = await self._service.metadata(model, version)
        return JSONResponse({
            "name": model, "versions": [str(version)], "platform": PLATFORM,
            "inputs": [tensors.input_spec(metadata).to_json()],
            "outputs": [spec.to_json() for spec in tensors.output_specs(metadata)],
            "parameters": {"features": list(metadata.get("features") or [])},
        })

    async def model_ready(self, call: Call[ModelPath | VersionPath, None, None]) -> Response:
        model, version = call.path.model, _version(call.path)
        try:
            if version is None:
                await self._service.production(model)  # NotFound for an unknown model
            else:
                await self._service.version(model, version)  # NotFound for an unknown version
        except ModelNotReady:
            return JSONResponse({"name": model, "ready": False}, status_code=503)
        held = await self._service.served_version(model)
        ready = held is not None and (version is None or held == version)
        return JSONResponse({"name": model, "ready": ready}, status_code=200 if ready else 503)

    # --- inference ------------------------------------------------------------------------

    async def infer(self, call: Call[ModelPath | VersionPath, None, Any]) -> Response:
        model, version = call.path.model, _version(call.path)
        body = call.body
        try:
            request_id, rows, wanted = _parse(body, len(await self._service.features(model, version)),
                                              self._max_instances)
        except SkipperError as exc:
            self._service.rejected(model, exc)
            raise
        try:
            reply = await self._service.predict_rows(model, rows, correlation_id=call.correlation_id, version=version)
        except ValidationFailed as exc:  # the server refused the rows: still the client's input
            raise BadRequest(exc.message) from None
        answer: dict[str, Any] = {"model_name": model, "model_version": str(reply["model_version"])}
        if request_id is not None:
            answer["id"] = request_id
        answer["outputs"] = _outputs(reply["predictions"], wanted)
        return FastJSONResponse(answer)


def _outputs(predictions: list[Any], wanted: list[str] | None) -> list[dict[str, Any]]:
    """The output tensors as JSON: `predictions` (`[rows, 1]`, the data as the server sent it) for the usual
    one-target regression, the general conversion (`tensors.to_tensors`) for anything else."""
    if (wanted is None or wanted == ["predictions"]) and predictions and set(map(type, predictions)) == numbers.FLOATS:
        return [{"name": "predictions", "datatype": "FP32", "shape": [len(predictions), 1], "data": predictions}]
    return [{"name": t.name, "datatype": t.datatype, "shape": t.shape, "data": t.flat()}
            for t in tensors.select(tensors.to_tensors(predictions), wanted)]


def _no_binary_body(request: Request) -> None:
    """A body with binary tensor data announces its JSON part's length in this header: refuse it before parsing."""
    if header(request, BINARY_HEADER) is not None:
        raise BadRequest(BINARY_REFUSED)


def _version(path: ModelPath | VersionPath) -> int | None:
    return path.version if isinstance(path, VersionPath) else None


def _parse(body: Any, width: int, max_rows: int) -> tuple[str | None, list[list[float]], list[str] | None]:
    """(the request's id, the feature rows, the outputs asked for or None for all); `BadRequest` when invalid."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object with 'inputs'")
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest("id must be a string")
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise BadRequest(f"inputs must hold exactly one tensor, the feature matrix [rows, {width}]")
    tensor = inputs[0]
    parameters = tensor.get("parameters")
    if isinstance(parameters, dict) and "binary_data_size" in parameters:
        raise BadRequest(BINARY_REFUSED)
    if "data" not in tensor:
        raise BadRequest(f"input {tensor.get('name')!r} has no data")
    rows = tensors.matrix(tensor["data"], tensor.get("datatype"), tensor.get("shape"), width, max_rows, tensor.get("name"))
    outputs = body.get("outputs")
    if outputs is None:
        return request_id, rows, None
    if not isinstance(outputs, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs):
        raise BadRequest("outputs must be a list of {\"name\": ...} objects")
    return request_id, rows, [o["name"] for o in outputs]
