"""Browser-safe defaults and hostile input: what a web page, a DNS-rebinding page or a crafted request
gets, on SQLite and on PostgreSQL, and that the process keeps serving through all of it.

Runs the api role in-process (no TensorFlow); a fake server plays the predictions.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from skipper.app.runtime import Runtime
from skipper.core import contracts
from skipper.core.httpserver import JsonErrorHttpToolsProtocol
from skipper.core.messages import Message
from skipper.core.settings import load_settings
from tests.apphelpers import bearer, scoped_keys
from tests.processes import free_port, postgres_schema
from tests.services import require_postgres

BASE = "/api/v1/skipper"
ROW = [0.0] * 10
FEATURES = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]
BROWSER_TYPES = ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                 "text/plain; charset=utf-8", "TEXT/PLAIN"]


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'skipper.db'}"
        return
    require_postgres()
    with postgres_schema() as url:
        yield url


@contextlib.asynccontextmanager
async def api(tmp_path: Path, **overrides: Any) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    settings = load_settings(environ={}, overrides={"data_dir": str(tmp_path), **overrides})
    runtime = Runtime(settings, frozenset({"api"}))
    await runtime.start()

    async def fake_server(msg: Message) -> Message:
        rows = msg.data["instances"]
        return msg.reply({"predictions": [sum(r) for r in rows], "model": msg.data["model"], "model_version": 1})

    runtime.bus.consume(contracts.predict_queue("diabetes"), fake_server)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=runtime.app()),
                                     base_url=f"http://127.0.0.1:8000{BASE}") as client:
            yield client, runtime
    finally:
        await runtime.stop()


async def trained(runtime: Runtime) -> None:
    """Register a fake diabetes v1 straight in the registry, as a finished training would."""
    data = b"fake-archive"
    sha = hashlib.sha256(data).hexdigest()
    store = runtime.container.artifact_store()
    path = store.put("diabetes", sha, data)
    runtime.container.registry().add_version(model="diabetes", sha256=sha, size=len(data), path=str(path), metrics={},
                                             metadata={"features": FEATURES}, task_id=None)


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code and error["message"], error
    return error


async def still_serving(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health")).status_code == 200
    assert (await client.get("/workflows")).status_code == 200


# --- cross-site requests ----------------------------------------------------------------------------


async def test_a_state_change_in_a_content_type_a_browser_sends_cross_site_is_415(tmp_path: Path) -> None:
    async with api(tmp_path) as (client, runtime):
        await trained(runtime)
        evil = {"origin": "http://evil.example"}
        for content_type in BROWSER_TYPES:
            headers = {**evil, "content-type": content_type}
            # the reproduction: deploy with Origin evil and text/plain was a 200
            assert_error(await client.post("/models/diabetes/versions/1/deploy", headers=headers), 415,
                         "unsupported_media_type")
            assert_error(await client.post("/workflows/diabetes/train", content=b'{"params": {}}', headers=headers),
                         415, "unsupported_media_type")
            assert_error(await client.post("/models/diabetes/predict", content=json.dumps({"instances": [ROW]}),
                                           headers=headers), 415, "unsupported_media_type")
            assert_error(await client.request("DELETE", "/tasks/0123", headers=headers), 415, "unsupported_media_type")
        assert_error(await client.post("/workflows/diabetes/train", content=b"{}", headers={"content-type": "text/xml"}),
                     415, "unsupported_media_type")
        assert (await client.get("/tasks")).json()["total"] == 0  # nothing was queued
        assert (await client.get("/models/diabetes")).json()["versions"][0]["seq"] is not None  # v1 as registered
        # JSON, JSON with parameters, +json types and no content type at all (some inference clients) are accepted
        for headers in [{"content-type": "application/json"}, {"content-type": "application/json; charset=utf-8"},
                        {"content-type": "application/vnd.skipper+json"}, {}]:
            response = await client.post("/models/diabetes/predict", content=json.dumps({"instances": [ROW]}),
                                         headers=headers)
            assert response.status_code == 200, (headers, response.text)


async def test_a_cross_site_state_change_is_refused_whatever_its_content_type(tmp_path: Path) -> None:
    async with api(tmp_path, http={"cors_origins": ["https://dashboard.example"]}) as (client, runtime):
        await trained(runtime)
        # a page elsewhere can POST without a content type and without a preflight: its Origin gives it away
        for origin in ["http://evil.example", "null", "http://127.0.0.1:9999"]:
            error = assert_error(await client.post("/models/diabetes/versions/1/deploy", headers={"origin": origin}),
                                 403, "forbidden")
            assert error["details"]["origin"] == origin
        for origin in ["http://127.0.0.1:8000", "https://dashboard.example"]:  # same origin, a CORS origin
            assert (await client.post("/models/diabetes/versions/1/deploy", headers={"origin": origin})).status_code == 200
        assert (await client.get("/workflows", headers={"origin": "http://evil.example"})).status_code == 200  # reads


async def test_a_foreign_host_header_is_400_on_a_loopback_bind(tmp_path: Path) -> None:
    async with api(tmp_path) as (client, _):
        # the reproduction: GET .../models with Host evil.example was a 200 (DNS rebinding)
        for host in ["evil.example", "evil.example:8000", "127.0.0.1.evil.example", "localhost.evil.example", ""]:
            error = assert_error(await client.get("/models", headers={"host": host}), 400, "bad_request")
            assert "allowed_hosts" in error["message"]
        assert_error(await client.get("/health", headers={"host": "evil.example"}), 400, "bad_request")
        for host in ["localhost", "localhost:8000", "127.0.0.1", "127.0.0.2:8000", "[::1]:8000", "LOCALHOST"]:
            assert (await client.get("/models", headers={"host": host})).status_code == 200, host


async def test_allowed_hosts_replace_the_loopback_names(tmp_path: Path) -> None:
    hosts = ["skipper.example.com", "*.internal.example"]
    async with api(tmp_path, http={"allowed_hosts": hosts}) as (client, _):
        for host in ["skipper.example.com", "skipper.example.com:443", "api.internal.example"]:
            assert (await client.get("/models", headers={"host": host})).status_code == 200, host
        for host in ["localhost", "example.com", "internal.example", "evil.example"]:
            assert_error(await client.get("/models", headers={"host": host}), 400, "bad_request")


async def test_cors_is_off_unless_origins_are_listed(tmp_path: Path) -> None:
    preflight = {"origin": "http://evil.example", "access-control-request-method": "POST",
                 "access-control-request-headers": "content-type"}
    async with api(tmp_path) as (client, _):
        response = await client.options("/workflows/diabetes/train", headers=preflight)
        assert not [h for h in response.headers if h.startswith("access-control-")]
        response = await client.get("/workflows", headers={"origin": "http://evil.example"})
        assert not [h for h in response.headers if h.startswith("access-control-")]
    async with api(tmp_path / "cors", http={"cors_origins": ["https://ui.example"]}) as (client, _):
        ok = await client.options("/workflows/diabetes/train", headers={**preflight, "origin": "https://ui.example"})
        assert ok.headers["access-control-allow-origin"] == "https://ui.example"
        refused = await client.options("/workflows/diabetes/train", headers=preflight)
        assert "access-control-allow-origin" not in refused.headers


# --- hostile input ------------------------------------------------------------------------------------


async def test_deeply_nested_json_is_400_and_the_process_keeps_serving(tmp_path: Path, database_url: str) -> None:
    async with api(tmp_path, http={"max_json_depth": 32}, database_url=database_url) as (client, runtime):
        await trained(runtime)
        nested = b"[" * 2000  # the 4 KB of nested brackets was a 500
        deep_object = b'{"params": ' + b'{"a": ' * 40 + b"1" + b"}" * 41
        for url, body in [("/workflows/diabetes/train", nested), ("/models/diabetes/predict", nested),
                          ("/tasks/diabetes/execute_async", nested), ("/workflows/diabetes/train", deep_object)]:
            error = assert_error(await client.post(url, content=body, headers={"content-type": "application/json"}), 400,
                                 "bad_request")
            assert "nested deeper than 32" in error["message"]
        legacy = {"task_type": "training", "payload": "[" * 5000}  # nested inside the original's JSON-string payload
        assert_error(await client.post("/tasks/diabetes/execute_async", json=legacy), 422, "validation_failed")
        # brackets inside strings are not nesting; a wide predict body is not deep
        ok = await client.post("/models/diabetes/predict", json={"instances": [{"age": 1.0, **dict.fromkeys(FEATURES[1:], 0.0)}]
                                                                  + [ROW] * 200})
        assert ok.status_code == 200, ok.text
        await still_serving(client)


async def test_out_of_range_path_and_query_integers_are_404_and_422_on_both_databases(
    tmp_path: Path, database_url: str
) -> None:
    async with api(tmp_path, database_url=database_url) as (client, runtime):
        await trained(runtime)
        huge = "9223372036854775808"  # the reproduction: SQLite overflow, a 500
        for version in [huge, "2147483648", "99999999999999999999999999", "0", "-1", "1e3", "abc"]:
            for method, url in [("POST", f"/models/diabetes/versions/{version}/deploy"),
                                ("GET", f"/models/diabetes/versions/{version}/artifact")]:
                assert_error(await client.request(method, url), 404, "not_found")
        assert_error(await client.post("/models/diabetes/versions/2147483647/deploy"), 404, "not_found")
        task_id = (await client.post("/workflows/diabetes/train", json={"params": {"epochs": 1}})).json()["task_id"]
        for url in ["/tasks", "/events", f"/tasks/{task_id}/events"]:
            for query in [{"limit": "0"}, {"limit": huge}, {"limit": "-5"}, {"limit": "x"}, {"offset": "-1"},
                          {"offset": huge}, {"offset": "1.5"}]:
                error = assert_error(await client.get(url, params=query), 422, "validation_failed")
                assert error["details"]["field"] == next(iter(query)), (url, query)
            assert (await client.get(url, params={"limit": "1000", "offset": "2147483647"})).status_code == 200
        for query in [{"workflow": "dia\x00betes"}, {"status": "dancing"}, {"workflow": "x" * 500}]:
            assert_error(await client.get("/tasks", params=query), 422, "validation_failed")
        assert_error(await client.get("/events", params={"kind": "task\x00queued"}), 422, "validation_failed")
        for task in ["%00", "x" * 33, "..%2F..%2Fetc", "a%20b"]:
            assert_error(await client.get(f"/tasks/{task}"), 404, "not_found")
        monitor = {"params": {"early_stopping": {"patience": 2, "monitor": "val_loss\x00"}}}  # PostgreSQL refuses NUL
        assert_error(await client.post("/workflows/diabetes/train", json=monitor), 422, "validation_failed")
        assert (await client.get("/tasks")).json()["total"] == 1
        await still_serving(client)


async def test_unknown_model_names_never_become_metric_labels(tmp_path: Path) -> None:
    async with api(tmp_path) as (client, runtime):
        await trained(runtime)
        assert (await client.post("/models/diabetes/predict", json={"instances": [ROW]})).status_code == 200
        before = (await client.get("/metrics")).text
        names = [f"m{i}{'x' * 100}" for i in range(20)] + ["z" * 8000]
        for name in names:
            response = await client.post(f"/models/{name}/predict", json={"instances": [ROW]})
            assert response.status_code == 404, response.text
        after = (await client.get("/metrics")).text
        assert not [name for name in names if name[:100] in after]
        assert len(after) - len(before) < 2000  # counters of known labels only; no per-name series
        assert 'model="diabetes"' in after


async def test_the_original_routes_validate_their_payload_and_never_train_on_invalid_params(
    tmp_path: Path, database_url: str
) -> None:
    async with api(tmp_path, database_url=database_url) as (client, runtime):
        await trained(runtime)
        url = "/tasks/diabetes/execute_async"
        for body, field in [(None, "body"), ({}, "payload"), ({"task_type": "training"}, "payload"),
                            ({"payload": 5}, "payload"), ({"payload": "not json"}, "payload"),
                            ({"payload": "[1, 2]"}, "payload"), ({"payload": {"epochs": 2}}, "payload"),
                            ({"payload": '{"epochs": "many"}'}, "params.epochs"),
                            ({"payload": '{"hidden_units": [65536, 65536]}'}, "params.hidden_units"),
                            ({"task_type": 7, "payload": ""}, "task_type")]:
            response = await client.post(url, json=body) if body is not None else await client.post(url)
            error = assert_error(response, 422, error_code(response))
            assert error["details"]["field"] == field, (body, error)
        assert (await client.get("/tasks")).json()["total"] == 0
        assert_error(await client.post("/tasks/diabetes/execute_sync", json={"payload": "", "data": {"age": "old"}}),
                     422, "validation_failed")
        ok = await client.post(url, json={"task_type": "training", "payload": '{"epochs": 2}'})
        assert ok.status_code == 202 and ok.json()["task_status"] == "Processing"


def error_code(response: httpx.Response) -> str:
    return str(response.json()["error"]["code"])


async def test_a_request_uvicorn_cannot_parse_gets_the_json_error_shape_and_serving_goes_on(tmp_path: Path) -> None:
    settings = load_settings(environ={}, overrides={"data_dir": str(tmp_path)})
    runtime = Runtime(settings, frozenset({"api"}))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(runtime.app(), host="127.0.0.1", port=port, http=JsonErrorHttpToolsProtocol,
                                           lifespan="on", log_config=None, access_log=False))
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            assert not serving.done(), "the server did not start"
            await asyncio.sleep(0.02)
        for garbage in [b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nHost: localhost\r\nBad Header\r\n\r\n",
                        b"GET /\x00 HTTP/1.1\r\n\r\n"]:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(garbage)
            await writer.drain()
            raw = await asyncio.wait_for(reader.read(), timeout=5)
            writer.close()
            head, _, body = raw.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 400"), raw
            assert b"content-type: application/json" in head.lower()
            assert json.loads(body)["error"]["code"] == "bad_request"
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"http://127.0.0.1:{port}{BASE}/health")).status_code == 200
    finally:
        server.should_exit = True
        await serving


async def test_state_changes_are_audited_with_the_key_name_never_the_key(tmp_path: Path) -> None:
    keys, entries = scoped_keys()
    async with api(tmp_path, auth={"keys": entries}) as (client, runtime):
        await trained(runtime)
        task_id = (await client.post("/workflows/diabetes/train", json={}, headers=bearer(keys["train"]))).json()["task_id"]
        assert (await client.delete(f"/tasks/{task_id}", headers=bearer(keys["admin"]))).status_code == 200
        assert (await client.post("/models/diabetes/versions/1/deploy", headers=bearer(keys["deploy"]))).status_code == 200
        read = bearer(keys["read"])
        for _ in range(100):
            audit = (await client.get("/events", params={"kind": "audit"}, headers=read)).json()["events"]
            if len(audit) == 3:
                break
            await asyncio.sleep(0.02)
        assert [(e["fields"]["action"], e["fields"]["key"]) for e in audit] == [
            ("train", "train-key"), ("cancel", "admin-key"), ("deploy", "deploy-key")]
        assert audit[0]["fields"]["task"] == task_id and audit[2]["fields"]["version"] == 1
        everything = json.dumps((await client.get("/events", params={"limit": 1000}, headers=read)).json())
        assert not [k for k in keys.values() if k in everything]
