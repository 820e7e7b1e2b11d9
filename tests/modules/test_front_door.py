"""The front door dispatches prediction routes itself: what Starlette's stack did for them, it still does.

Prediction routes (`POST`, scope `predict`) skip Starlette's middleware and router. These tests
pin what a client of such a route relies on: path parameters, the correlation id, the Host
allow-list, CORS when configured, and every failure answered as JSON in the route group's own
error style (a lost database a 503, a bug a 500), with the process serving on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx
import pytest
from pydantic import BaseModel
from sqlalchemy import create_engine
from starlette.responses import JSONResponse, Response

from skipper.core.errors import NotFound
from skipper.core.http import create_app
from skipper.core.module import Module
from skipper.core.routing import STRING_ERRORS, Call, Endpoint, RouteGroup
from skipper.core.settings import load_settings
from tests.processes import free_port


class ModelPath(BaseModel):
    model: str


class Predicts(Module):
    """Prediction routes under Skipper's errors and under the inference protocols' string errors."""

    name = "predicts"

    def __init__(self) -> None:
        self.engine = create_engine(f"postgresql+psycopg://skipper@127.0.0.1:{free_port()}/skipper",
                                    connect_args={"connect_timeout": 2})  # nothing listens: a real OperationalError

    def routes(self) -> Sequence[Endpoint | RouteGroup]:
        def endpoints() -> list[Endpoint]:
            return [Endpoint("POST", "/{model}:predict", self.predict, scope="predict", path_params=ModelPath),
                    Endpoint("GET", "/{model}:predict", self.predict, scope="predict", path_params=ModelPath)]

        return [*endpoints(), RouteGroup("/v9", endpoints(), STRING_ERRORS)]

    async def predict(self, call: Call[ModelPath, None, None]) -> Response:
        match call.path.model:
            case "lost":
                with self.engine.connect():
                    raise AssertionError("unreachable: nothing listens on that port")
            case "bug":
                raise RuntimeError("a bug in a handler")
            case "missing":
                raise NotFound("no such model", details={"model": "missing"})
        return JSONResponse({"model": call.path.model, "method": call.request.method,
                             "correlation_id": call.correlation_id})


def client(http: dict[str, Any] | None = None) -> httpx.AsyncClient:
    settings = load_settings(environ={}, overrides={"http": http or {}})
    app = create_app(settings=settings, role="api", modules=[Predicts()])
    # Not raised into the test: the 500 is what a client sees (uvicorn logs the re-raised exception).
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1")


BASES = ["/api/v1/skipper", "/v9"]


@pytest.mark.parametrize("base", BASES)
async def test_a_prediction_route_gets_its_path_parameters_and_the_correlation_id(base: str) -> None:
    async with client() as http:
        response = await http.post(f"{base}/iris:predict", json={}, headers={"x-correlation-id": "req-7"})
        assert response.status_code == 200, response.text
        assert response.json() == {"model": "iris", "method": "POST", "correlation_id": "req-7"}
        assert response.headers["x-correlation-id"] == "req-7"
        made = await http.post(f"{base}/iris:predict", json={}, headers={"x-correlation-id": "bad id; drop table"})
        assert made.json()["correlation_id"] == made.headers["x-correlation-id"] != "bad id; drop table"
        # the same path by another method goes through Starlette, with the same handler and headers
        other = await http.get(f"{base}/iris:predict", headers={"x-correlation-id": "req-8"})
        assert other.json() == {"model": "iris", "method": "GET", "correlation_id": "req-8"}
        assert other.headers["x-correlation-id"] == "req-8"
        refused = await http.put(f"{base}/iris:predict", json={})
        assert refused.status_code == 405 and set(refused.headers["allow"].split(", ")) >= {"GET", "POST"}


async def test_every_failure_of_a_prediction_route_is_json_in_its_groups_style_and_serving_goes_on() -> None:
    async with client() as http:
        lost = await http.post("/api/v1/skipper/lost:predict", json={})
        assert lost.status_code == 503 and lost.json()["error"]["code"] == "unavailable", lost.text
        bug = await http.post("/api/v1/skipper/bug:predict", json={}, headers={"x-correlation-id": "req-9"})
        assert bug.status_code == 500 and bug.json()["error"]["code"] == "internal_error", bug.text
        assert "a bug" not in bug.text  # a bug's text is for the log, not the client
        assert bug.headers["x-correlation-id"] == "req-9"
        missing = await http.post("/api/v1/skipper/missing:predict", json={})
        assert missing.status_code == 404 and missing.json()["error"]["details"] == {"model": "missing"}
        # the inference protocols' style: one string
        assert (await http.post("/v9/lost:predict", json={})).json() == {
            "error": "the database connection was lost; retry the request"}
        bug = await http.post("/v9/bug:predict", json={})
        assert (bug.status_code, bug.json()) == (500, {"error": "internal server error"})
        assert (await http.post("/v9/iris:predict", json={})).status_code == 200


async def test_a_prediction_from_a_host_not_served_here_is_refused() -> None:
    async with client() as http:
        refused = await http.post("/api/v1/skipper/iris:predict", json={}, headers={"host": "evil.example",
                                                                                   "x-correlation-id": "req-1"})
        assert refused.status_code == 400 and "allowed_hosts" in refused.json()["error"]["message"]
        assert refused.headers["x-correlation-id"] == "req-1"
        refused = await http.post("/v9/iris:predict", json={}, headers={"host": "evil.example"})
        assert refused.status_code == 400 and "allowed_hosts" in refused.json()["error"]
        # two Host headers: the first decides, as it does for the cross-site check that compares Origin with it
        twice = [("host", "evil.example"), ("host", "127.0.0.1"), ("content-type", "application/json")]
        assert (await http.post("/api/v1/skipper/iris:predict", content=b"{}", headers=twice)).status_code == 400


async def test_with_cors_configured_a_prediction_from_a_listed_origin_is_answered_with_cors_headers() -> None:
    async with client({"cors_origins": ["https://ui.example"]}) as http:
        ok = await http.post("/api/v1/skipper/iris:predict", json={}, headers={"origin": "https://ui.example"})
        assert ok.status_code == 200, ok.text
        assert ok.headers["access-control-allow-origin"] == "https://ui.example"
        assert "x-correlation-id" in ok.headers["access-control-expose-headers"]
        refused = await http.post("/api/v1/skipper/iris:predict", json={}, headers={"origin": "http://evil.example"})
        assert refused.status_code == 403 and "access-control-allow-origin" not in refused.headers
        preflight = await http.options("/api/v1/skipper/iris:predict", headers={
            "origin": "https://ui.example", "access-control-request-method": "POST"})
        assert preflight.headers["access-control-allow-origin"] == "https://ui.example"
