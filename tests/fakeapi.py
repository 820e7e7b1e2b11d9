"""A tiny real HTTP server (Starlette on uvicorn, in a thread) for what a live Skipper cannot answer today.

It speaks Skipper's error shape for 401/403 (the auth contract, whose server side lands with the
security branch), 415 and 429, a proxy's non-JSON 502, and the task event stream of the
live-events contract (`GET /tasks/{id}/stream`, Server-Sent Events), which no server has yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.processes import free_port

BASE = "/api/v1/skipper"
KEY = "sk_" + "k" * 43  # a read-scoped key of the contract's shape
TASK = "5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e"


def error(status: int, code: str, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, "details": {}}}, status_code=status, headers=headers)


def event(eid: int, kind: str, task_id: str = TASK, **fields: Any) -> dict[str, Any]:
    return {"id": eid, "at": f"2026-01-01T00:00:{eid:02d}+00:00", "kind": kind, "source": "test", "task_id": task_id,
            "correlation_id": "c", "fields": fields}


def story(task_id: str, epochs: int = 3, last: str = "model.installed") -> list[dict[str, Any]]:
    """The events of a training task that succeeds and whose version a server installs (or rejects)."""
    events = [event(1, "task.queued", task_id), event(2, "task.started", task_id, epochs=epochs)]
    for n in range(1, epochs + 1):
        events.append(event(2 + n, "task.progress", task_id, epoch=n, epochs=epochs, loss=100.0 / n,
                            metrics={"val_loss": 120.0 / n, "val_mae": 9.0}))
    events.append(event(10 + epochs, "task.succeeded", task_id, model="diabetes", model_version=7, metrics={"rmse": 50.0}))
    install = {"reason": "checksum mismatch"} if last == "model.rejected" else {"took_ms": 12.0}
    events.append(event(20 + epochs, last, task_id, model="diabetes", version=7, sha256="ab" * 32, **install))
    return events


class FakeApi:
    """Routes under /api/v1/skipper; `seen` records each request's method, path and Authorization header."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str | None]] = []
        routes = [
            Route(BASE + "/auth/{case}", self.auth, methods=["GET"]),
            Route(BASE + "/workflows", self.workflows, methods=["GET"]),
            Route(BASE + "/status/{status:int}", self.status, methods=["GET", "POST"]),
            Route(BASE + "/tasks/{task_id}", self.task, methods=["GET"]),
            Route(BASE + "/tasks/{task_id}/events", self.events, methods=["GET"]),
            Route(BASE + "/tasks/{task_id}/stream", self.stream, methods=["GET"]),
            Route(BASE + "/models/{model}/versions/{version:int}/artifact", self.artifact, methods=["GET"]),
        ]
        self.app = Starlette(routes=routes)

    async def auth(self, request: Request) -> Response:
        self.seen.append((request.method, request.url.path, request.headers.get("authorization")))
        given = request.headers.get("authorization", "")
        if given != f"Bearer {KEY}":
            return error(401, "unauthorized", "missing or unknown API key", **{"www-authenticate": "Bearer"})
        if request.path_params["case"] == "admin":
            return error(403, "forbidden", "this key lacks the 'admin' scope")
        return JSONResponse({"ok": True})

    async def workflows(self, request: Request) -> Response:
        self.seen.append((request.method, request.url.path, request.headers.get("authorization")))
        if request.headers.get("authorization", "") != f"Bearer {KEY}":
            return error(401, "unauthorized", "missing or unknown API key", **{"www-authenticate": "Bearer"})
        return JSONResponse({"workflows": []})

    async def status(self, request: Request) -> Response:
        status = request.path_params["status"]
        if status == 415:
            return error(415, "unsupported_media_type", "send the body as application/json")
        if status == 429:
            return error(429, "overloaded", "too many queued rows; retry later", **{"retry-after": "2"})
        return PlainTextResponse("<html>502 Bad Gateway</html>", status_code=status)

    async def task(self, request: Request) -> Response:
        task_id = request.path_params["task_id"]
        status = {"stuck": "running", "failed": "failed"}.get(task_id, "succeeded")
        body: dict[str, Any] = {"task_id": task_id, "workflow": "diabetes", "status": status, "params": {"epochs": 3},
                                "progress": {"epoch": 3, "epochs": 3, "loss": 33.3, "metrics": {}}, "attempts": 1}
        if status == "succeeded":
            body["result"] = {"model": "diabetes", "model_version": 7, "metrics": {"rmse": 50.0}}
        if status == "failed":
            body["error"] = {"code": "internal_error", "message": "the cluster ran out of unobtainium", "details": {}}
        return JSONResponse(body)

    async def events(self, request: Request) -> Response:
        # Events only reach a follower through the stream for "streamed": polling finds none.
        task_id = request.path_params["task_id"]
        offset = int(request.query_params.get("offset", 0))
        found = {"rejected": story(task_id, last="model.rejected")}.get(task_id, [])
        return JSONResponse({"task_id": task_id, "events": found[offset:]})

    async def stream(self, request: Request) -> Response:
        task_id = request.path_params["task_id"]
        if task_id != "streamed":
            return error(404, "not_found", "Not Found")
        self.seen.append((request.method, request.url.path, request.headers.get("accept")))

        async def body() -> AsyncIterator[bytes]:
            yield b": connected\n\n"
            for entry in story(task_id):
                message = f"id: {entry['id']}\nevent: {entry['kind']}\ndata: {json.dumps(entry)}\n\n".encode()
                # Split each message across writes, as a proxy may: the client must reassemble lines.
                yield message[:7]
                await asyncio.sleep(0.01)
                yield message[7:]
                yield b": heartbeat\n\n"
            yield b"event: task.progress\ndata: not json\n\n"  # ignored, not fatal

        return StreamingResponse(body(), media_type="text/event-stream")

    async def artifact(self, request: Request) -> Response:
        data = b"not really a tar.gz"
        return Response(data, media_type="application/gzip", headers={"x-sha256": "0" * 64})


@contextlib.contextmanager
def serving(api: FakeApi) -> Iterator[str]:
    """Serve `api` on a free port in a thread; yields its URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(api.app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "fake api did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
