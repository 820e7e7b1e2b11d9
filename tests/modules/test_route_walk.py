"""Every route x {no key, unknown key, key without the scope, key with the scope}, generated from the
app's own route table and `openapi.json`, so a new route cannot slip through unprotected.

Also: the scope each route needs follows the policy of docs/security.md, the open routes are exactly
the documented ones, and a root-path route group with the inference protocols' string error style
writes its 400/401/403/404/415/422 as `{"error": "<text>"}`.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel, Field
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from skipper.app.runtime import Runtime
from skipper.core.module import Module
from skipper.core.routing import STRING_ERRORS, Call, Endpoint, RouteGroup
from skipper.core.settings import load_settings
from tests.apphelpers import SCOPES, bearer, scoped_keys

BASE = "/api/v1/skipper"
OPEN_ROUTES = {("GET", f"{BASE}/health"), ("GET", f"{BASE}/ready"), ("GET", f"{BASE}/metrics"),
               ("GET", f"{BASE}/openapi.json"), ("GET", f"{BASE}/docs"),
               ("GET", "/v2/health/live"), ("GET", "/v2/health/ready")}  # the Open Inference Protocol's health
PROTOCOLS = ("/v2", "/v1/models/")  # Open Inference Protocol, TensorFlow Serving: at the root, string errors
# Open, and not in openapi.json: assets, the dashboard's login and logout, and `/` (a redirect to the dashboard).
OPEN_HIDDEN = {("GET", f"{BASE}/docs/{{asset}}"), ("GET", f"{BASE}/ui/static/{{asset}}"), ("GET", f"{BASE}/ui/login"),
               ("POST", f"{BASE}/ui/login"), ("POST", f"{BASE}/ui/logout"), ("GET", "/")}
UI = f"{BASE}/ui"
UNKNOWN_KEY = "sk_" + "x" * 43


def expected_scope(method: str, path: str) -> str:
    """The policy of docs/security.md, written independently of the route declarations."""
    if (method, path) in OPEN_ROUTES:
        return "open"
    if method == "GET" and path.startswith(f"{BASE}/ui/"):
        return "read"  # a dashboard page shows; its forms need the action's own scope
    if path.startswith(PROTOCOLS) or path.endswith(("/predict", "/execute_sync")):
        return "predict"
    if path.endswith(("/train", "/execute_async", "/cancel")) or (method == "DELETE" and path.startswith(f"{BASE}/tasks/")):
        return "train"
    if path.endswith(("/deploy", "/artifact")):
        return "deploy"
    if method == "GET":
        return "read"
    return "admin"


class Clients:
    def __init__(self, app: Any, keys: dict[str, str]) -> None:
        self.app, self.keys = app, keys
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1")

    async def call(self, method: str, url: str, key: str | None) -> httpx.Response:
        headers = bearer(key) if key else {}
        if method in ("POST", "PUT", "DELETE"):
            return await self.http.request(method, url, json={}, headers=headers)
        if url.endswith("/events/stream"):  # endless: refused at once, or streaming (the ASGI client waits for the end)
            try:
                return await asyncio.wait_for(self.http.request(method, url, headers=headers), 0.5)
            except TimeoutError:
                return httpx.Response(200, text="(streaming)")
        return await self.http.request(method, url, headers=headers)


@pytest.fixture
async def clients(tmp_path: Path) -> AsyncIterator[Clients]:
    keys, entries = scoped_keys()
    settings = load_settings(environ={}, overrides={"data_dir": str(tmp_path), "auth": {"keys": entries},
                                                    "http": {"predict_timeout_s": 0.2}})
    runtime = Runtime(settings, frozenset({"api"}))
    await runtime.start()
    c = Clients(runtime.app(), keys)
    try:
        yield c
    finally:
        await c.http.aclose()
        await runtime.stop()


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method.upper(), path, op) for path, ops in document["paths"].items() for method, op in ops.items()]


def concrete(path: str, op: dict[str, Any]) -> str:
    """The path with each parameter replaced by its documented example."""
    examples = {p["name"]: p["schema"]["examples"][0] for p in op.get("parameters", []) if p["in"] == "path"}
    return re.sub(r"{([^}]+)}", lambda m: str(examples[m.group(1)]), path)


def error_code(response: httpx.Response, path: str) -> str:
    """Skipper's error code; the inference protocols' routes answer `{"error": "<text>"}` instead."""
    error = response.json()["error"]
    if path.startswith(PROTOCOLS):
        assert isinstance(error, str) and error, f"{path}: {response.text}"
        return {401: "unauthorized", 403: "forbidden"}.get(response.status_code, "?")
    return str(error["code"])


def assert_unauthorized(response: httpx.Response, where: str, path: str = BASE) -> None:
    assert response.status_code == 401, f"{where}: {response.status_code} {response.text}"
    assert response.headers["www-authenticate"] == "Bearer", where
    assert error_code(response, path) == "unauthorized", where


async def test_every_route_refuses_callers_without_a_fitting_key(clients: Clients) -> None:
    document = (await clients.http.get(f"{BASE}/openapi.json")).json()
    walked = operations(document)
    assert len(walked) >= 19
    for method, path, op in walked:
        scope = op["x-skipper-scope"]
        where = f"{method} {path} ({scope})"
        assert scope == expected_scope(method, path), f"{where}: the policy says {expected_scope(method, path)}"
        url = concrete(path, op)
        if scope == "open":
            assert op["security"] == [], where
            for key in [None, UNKNOWN_KEY, *clients.keys.values()]:  # open whatever key is sent
                response = await clients.call(method, url, key)
                assert response.status_code not in (401, 403), f"{where} with {key}: {response.text}"
            continue
        assert op["security"] == [{"apiKey": []}], where
        assert {"401", "403"} <= set(op["responses"]), f"{where}: 401/403 undocumented"
        assert_unauthorized(await clients.call(method, url, None), f"{where}, no key", path)
        assert_unauthorized(await clients.call(method, url, UNKNOWN_KEY), f"{where}, unknown key", path)
        for other in SCOPES:
            response = await clients.call(method, url, clients.keys[other])
            if other in (scope, "admin"):
                assert response.status_code not in (401, 403), f"{where} with the {other} key: {response.text}"
            else:
                assert response.status_code == 403, f"{where} with the {other} key: {response.status_code}"
                assert error_code(response, path) == "forbidden", where


async def test_every_route_of_the_app_is_in_openapi_json_or_is_open_or_is_a_dashboard_page(clients: Clients) -> None:
    # Given the routes the app really serves, and what openapi.json (hence the walk above) covers
    document = (await clients.http.get(f"{BASE}/openapi.json")).json()
    documented = {(m, p) for m, p, _ in operations(document)}
    declared = {(e.method, g.prefix + e.path): e for g in clients.app.state.route_groups for e in g.endpoints}
    served = {(m, r.path) for r in clients.app.routes if isinstance(r, Route) for m in (r.methods or ()) if m != "HEAD"}
    # Then every served route is declared, and every declared one is documented or open
    assert served == set(declared)
    hidden = {route: e for route, e in declared.items() if route not in documented}
    assert {route for route, e in hidden.items() if e.scope == "open"} == OPEN_HIDDEN
    # protected ones outside the walk above are the dashboard's pages and forms, which the next test walks
    protected = {route for route, e in hidden.items() if e.scope != "open"}
    assert protected and all(path.startswith(UI + "/") for _, path in protected), "protected routes missing from the walks"
    assert {route for route in documented if expected_scope(*route) == "open"} == OPEN_ROUTES


async def test_every_dashboard_route_refuses_callers_without_a_fitting_key(clients: Clients) -> None:
    # Given the dashboard's routes (not in openapi.json), and this browser's CSRF token for its forms
    login = await clients.http.get(f"{UI}/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', login.text)
    assert login.status_code == 200 and csrf, login.text
    form = {"csrf": csrf.group(1)}
    examples = {"task_id": "3f2c9a0d4b1e4c7f8a6b5d4c3b2a1f0e", "workflow": "diabetes", "model": "diabetes", "version": "1"}
    walked = [(e.method, g.prefix + e.path, e.scope) for g in clients.app.state.route_groups for e in g.endpoints
              if g.prefix == UI and e.scope != "open"]
    assert len(walked) >= 10

    async def call(method: str, url: str, key: str | None) -> httpx.Response:
        headers = bearer(key) if key else {}
        if method == "POST":
            return await clients.http.post(url, data=form, headers=headers)
        return await clients.http.get(url, headers=headers)

    def refused(response: httpx.Response, method: str, where: str) -> None:
        if method == "GET":  # a page sends a browser to the login page
            assert response.status_code == 303, f"{where}: {response.status_code}"
            assert response.headers["location"].startswith(f"{UI}/login?next="), where
        else:
            assert response.status_code == 401, f"{where}: {response.status_code}"

    for method, path, scope in walked:
        where = f"{method} {path} ({scope})"
        assert scope == expected_scope(method, path), f"{where}: the policy says {expected_scope(method, path)}"
        url = re.sub(r"{([^}]+)}", lambda m: examples[m.group(1)], path)
        refused(await call(method, url, None), method, f"{where}, no key")
        refused(await call(method, url, UNKNOWN_KEY), method, f"{where}, unknown key")
        for other in SCOPES:
            response = await call(method, url, clients.keys[other])
            if other in (scope, "admin"):
                assert response.status_code not in (401, 403), f"{where} with the {other} key: {response.status_code}"
                assert not response.headers.get("location", "").startswith(f"{UI}/login"), where
            else:
                assert response.status_code == 403, f"{where} with the {other} key: {response.status_code}"


async def test_a_key_is_sent_as_bearer_and_anything_else_is_401(clients: Clients) -> None:
    url = f"{BASE}/workflows"
    assert (await clients.http.get(url, headers=bearer(clients.keys["read"]))).status_code == 200
    for header in [f"Basic {clients.keys['read']}", clients.keys["read"], "Bearer ", "Bearer  "]:
        assert_unauthorized(await clients.http.get(url, headers={"authorization": header}), header)


async def test_metrics_need_the_read_scope_when_protected(tmp_path: Path) -> None:
    keys, entries = scoped_keys()
    settings = load_settings(environ={}, overrides={"data_dir": str(tmp_path), "auth": {"keys": entries,
                                                                                        "protect_metrics": True}})
    runtime = Runtime(settings, frozenset({"api"}))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=runtime.app()), base_url="http://127.0.0.1") as c:
        assert_unauthorized(await c.get(f"{BASE}/metrics"), "metrics")
        assert (await c.get(f"{BASE}/metrics", headers=bearer(keys["predict"]))).status_code == 403
        assert (await c.get(f"{BASE}/metrics", headers=bearer(keys["read"]))).status_code == 200
        assert (await c.get(f"{BASE}/health")).status_code == 200


# --- a root-path route group in the inference protocols' error style -------------------------------


class ModelName(BaseModel):
    model: str = Field(pattern=r"^[a-z]{1,16}$", examples=["iris"])


class InferBody(BaseModel):
    inputs: list[float] = Field(min_length=1)


class ProtocolModule(Module):
    """A stand-in for an inference protocol: a route group at the root path with string errors."""

    name = "protocol"

    def routes(self) -> Sequence[Endpoint | RouteGroup]:
        async def live(call: Call[None, None, None]) -> Response:
            return JSONResponse({"live": True})

        async def infer(call: Call[ModelName, None, InferBody]) -> Response:
            return JSONResponse({"model_name": call.path.model, "outputs": [sum(call.body.inputs)]})

        return [RouteGroup("/proto", [
            Endpoint("GET", "/health/live", live, scope="open"),
            Endpoint("POST", "/models/{model}/infer", infer, scope="predict", path_params=ModelName, body=InferBody,
                     body_required=True),
        ], errors=STRING_ERRORS)]


async def test_a_root_route_group_writes_its_errors_as_a_string(tmp_path: Path) -> None:
    keys, entries = scoped_keys()
    settings = load_settings(environ={}, overrides={"data_dir": str(tmp_path), "auth": {"keys": entries}})
    runtime = Runtime(settings, frozenset({"api"}))
    runtime.modules.append(ProtocolModule())
    app = runtime.app()

    def string_error(response: httpx.Response, status: int) -> str:
        assert response.status_code == status, response.text
        body = response.json()
        assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"], body
        return str(body["error"])

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as c:
        url = "/proto/models/iris/infer"
        assert (await c.get("/proto/health/live", headers={"authorization": "Bearer nope"})).json() == {"live": True}
        string_error(await c.post(url, json={"inputs": [1.0]}), 401)
        assert (await c.post(url, json={"inputs": [1.0]})).headers["www-authenticate"] == "Bearer"
        string_error(await c.post(url, json={"inputs": [1.0]}, headers=bearer(keys["read"])), 403)
        predict = bearer(keys["predict"])
        ok = await c.post(url, json={"inputs": [1.0, 2.0]}, headers=predict)
        assert ok.status_code == 200 and ok.json() == {"model_name": "iris", "outputs": [3.0]}
        string_error(await c.post(url, content=b'{"inputs": [1]}', headers={**predict, "content-type": "text/plain"}),
                     415)
        string_error(await c.post(url, content=b"{nope", headers={**predict, "content-type": "application/json"}), 400)
        assert "inputs" in string_error(await c.post(url, json={"inputs": []}, headers=predict), 422)
        string_error(await c.post("/proto/models/NOT-A-NAME/infer", json={"inputs": [1.0]}, headers=predict), 404)
        string_error(await c.get("/proto/no/such/route"), 404)
        string_error(await c.get("/proto/health/live", headers={"host": "evil.example"}), 400)
        # Skipper's own routes keep their shape beside it
        skipper = await c.get(f"{BASE}/workflows")
        assert skipper.status_code == 401 and skipper.json()["error"]["code"] == "unauthorized"
        document = (await c.get(f"{BASE}/openapi.json")).json()
        infer_doc = document["paths"]["/proto/models/{model}/infer"]["post"]
        assert infer_doc["responses"]["401"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/StringError"}
