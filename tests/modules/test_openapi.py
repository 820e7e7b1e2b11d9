"""openapi.json is a valid OpenAPI 3.1 document generated from the route declarations; the docs page
serves it with assets shipped in the package; and requests generated from it (schemathesis, a bounded
number of examples per operation) never get a 5xx from the api."""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from openapi_spec_validator import validate
from schemathesis.specs.openapi.checks import positive_data_acceptance

from skipper.app.runtime import Runtime
from skipper.core import contracts
from skipper.core.bus import Transport
from skipper.core.docs import ASSETS, SERVED
from skipper.core.messages import Message
from skipper.core.module import Module
from skipper.core.settings import load_settings
from tests.apphelpers import running_skipper, scoped_keys

BASE = "/api/v1/skipper"
ROOT = Path(__file__).resolve().parents[2]
FEATURES = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]
# Not ready: a readiness body, not an error.
NOT_READY = {(f"{BASE}/ready", "503"), ("/v2/health/ready", "503"), ("/v2/models/{model}/ready", "503"),
             ("/v2/models/{model}/versions/{version}/ready", "503")}


async def test_openapi_json_is_a_valid_openapi_3_1_document_with_every_input_and_error(tmp_path: Path) -> None:
    async with running_skipper(tmp_path, frozenset({"api", "trainer", "server"})) as (client, _):
        document = (await client.get("/openapi.json")).json()
    validate(document)  # raises with every problem
    assert document["openapi"] == "3.1.0"
    for path, operations in document["paths"].items():
        names = set(re.findall(r"{([^}]+)}", path))
        for method, op in operations.items():
            where = f"{method.upper()} {path}"
            assert op["summary"] and op["operationId"], where
            declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert declared == names, f"{where}: path parameters {declared} vs {names}"
            success = [s for s in op["responses"] if s.startswith("2")]
            assert success and all(op["responses"][s]["content"] for s in success), where
            # the inference protocols at the root path write their errors as {"error": "<text>"}
            error_schema = "StringError" if path.startswith(("/v2", "/v1/models/")) else "ErrorResponse"
            for status, response in op["responses"].items():
                if status[0] in "45" and (path, status) not in NOT_READY:
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": f"#/components/schemas/{error_schema}"}, where
    error = document["components"]["schemas"]["ErrorResponse"]
    assert error["properties"]["error"]["$ref"].endswith("ErrorBody")
    train = document["paths"][f"{BASE}/workflows/{{workflow}}/train"]["post"]
    body = train["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
    overrides = document["components"]["schemas"]["TrainOverrides"]["properties"]
    assert document["components"]["schemas"][body]["properties"]["params"]
    assert overrides["epochs"]["anyOf"][0] == {"maximum": 100000, "minimum": 1, "type": "integer"}
    tasks = {p["name"]: p for p in document["paths"][f"{BASE}/tasks"]["get"]["parameters"]}
    assert tasks["status"]["schema"]["anyOf"][0]["enum"] == ["queued", "running", "succeeded", "failed", "cancelled"]
    assert tasks["limit"]["schema"]["maximum"] == 1000 and not tasks["limit"]["required"]


async def test_the_docs_page_loads_nothing_from_elsewhere_and_its_assets_ship_in_the_package(tmp_path: Path) -> None:
    _, entries = scoped_keys()
    async with running_skipper(tmp_path, frozenset({"api"}), auth={"keys": entries}) as (client, _):
        page = await client.get("/docs")  # open, like openapi.json, even with keys configured
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "script-src 'self'" in csp
        links = re.findall(r'(?:src|href|data-spec)="([^"]+)"', page.text)
        assert links and all(link.startswith(f"{BASE}/") for link in links), links
        assert (await client.get("/openapi.json")).status_code == 200
        for link in links:
            if link.endswith(".json"):
                continue
            asset = await client.get(link.removeprefix(BASE))
            assert asset.status_code == 200 and asset.content == (ASSETS / link.rsplit("/", 1)[-1]).read_bytes()
        js = await client.get("/docs/swagger-ui-bundle.js")
        assert js.headers["content-type"].startswith("text/javascript") and len(js.content) > 500_000
        assert "SwaggerUIBundle" in js.text
        assert "Apache License" in (await client.get("/docs/LICENSE")).text
        for name in ["../settings.py", "docs.js.map", "VERSION"]:
            assert (await client.get(f"/docs/{name}")).status_code == 404
    assert "validatorUrl: null" in (ASSETS / "docs.js").read_text()
    assert set(SERVED) <= {p.name for p in ASSETS.iterdir()}
    # and the wheel takes them: a package-data glob of pyproject.toml covers each (for `skipper`, or for any package)
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    for name in SERVED:
        shipped = [glob for glob in package_data.get("skipper", []) if fnmatch(f"core/static/swagger-ui/{name}", glob)]
        shipped += [glob for glob in package_data.get("*", []) if fnmatch(f"static/swagger-ui/{name}", glob)]
        assert shipped, f"{name} is not package data: the installed package would serve no docs page"


# --- property-based requests from openapi.json --------------------------------------------------------


class FakeServer(Module):
    """Plays the serving role on the bus: sums each row."""

    name = "fake-server"

    def register(self, bus: Transport) -> None:
        bus.consume(contracts.predict_queue("diabetes"), self.predict)

    async def predict(self, msg: Message) -> Message:
        if msg.type == contracts.PREDICT_STATUS:  # which version do you hold?
            return msg.reply({"model": msg.data["model"], "version": 1})
        rows = msg.data["instances"]
        return msg.reply({"predictions": [sum(r) for r in rows], "model": msg.data["model"], "model_version": 1})


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    data_dir = tmp_path_factory.mktemp("schemathesis")
    keys, entries = scoped_keys()
    settings = load_settings(environ={}, overrides={
        "data_dir": str(data_dir), "auth": {"keys": entries},
        "http": {"allowed_hosts": ["testserver"], "predict_timeout_s": 2},  # schemathesis's test client's Host
        "limits": {"max_queued_tasks": 10_000},
        "workflows": {"diabetes": {"model": "diabetes", "kind": "regression",
                                   "dataset": {"source": "sklearn", "name": "diabetes"}}},
    })
    runtime = Runtime(settings, frozenset({"api"}))
    runtime.modules.append(FakeServer())
    runtime.container.database().create_schema()
    data = b"fake-archive"
    sha = hashlib.sha256(data).hexdigest()
    path = runtime.container.artifact_store().put("diabetes", sha, data)
    runtime.container.registry().add_version(model="diabetes", sha256=sha, size=len(data), path=str(path), metrics={},
                                             metadata={"features": FEATURES}, task_id=None)
    # The admin key as schemathesis's own auth for the bearer scheme: its ignored_auth check then also
    # re-sends each request without it and with a made-up key, and expects a 401.
    config = schemathesis.Config.from_dict({"auth": {"openapi": {"apiKey": {"bearer": keys["admin"]}}}})
    yield schemathesis.openapi.from_asgi(f"{BASE}/openapi.json", runtime.app(), config=config)
    from schemathesis.python.asgi import shutdown_lifespans

    shutdown_lifespans()  # stops the runtime schemathesis started


# The event streams are endless by design (a task's ends with the task): tests/modules/test_event_stream.py covers them.
schema = schemathesis.pytest.from_fixture("api_schema").exclude(path_regex=r"/stream$")


@schema.parametrize()
@hypothesis_settings(max_examples=25, deadline=None, derandomize=True,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
def test_no_request_generated_from_openapi_json_gets_a_5xx(case: Any) -> None:
    # Every check schemathesis has (no 5xx, documented statuses, content types and response schemas, auth
    # enforced, invalid input refused) but one: whether a request is acceptable depends on state the static
    # document cannot hold (a model's feature names, the limits of a workflow), so a schema-valid request
    # may rightly be a 422.
    case.call_and_validate(excluded_checks=[positive_data_acceptance])
