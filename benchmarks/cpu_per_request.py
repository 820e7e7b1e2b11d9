"""CPU time per predict request, in-process: Skipper's routes beside a bare endpoint on the same model.

Wall-clock throughput on a shared machine is noise; CPU time spent by this process per request is
not (much). This starts the all-in-one engine in-process on the memory transport, trains
`diabetes` through its API, then calls the ASGI apps directly (no sockets, no HTTP parser: what is
left is our own code plus Starlette) in interleaved rounds and prints the median
`time.process_time()` per request of each route and its ratio to a bare Starlette endpoint that
calls the same loaded predictor (`json.loads` -> numpy -> predict -> `JSONResponse`).

    python benchmarks/cpu_per_request.py                          # native, oip, tfserving, legacy, bare, hello
    python benchmarks/cpu_per_request.py --requests 4000 --rounds 7 --concurrency 1,64
    python benchmarks/cpu_per_request.py --profile native --requests 20000   # cProfile of one route, top functions

At concurrency 64 the requests of one wave are started together (`asyncio.gather`), so the
server's micro-batcher merges them: the model's share per request shrinks and our own per-request
code is most of what remains.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import logging
import pstats
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message

ROW = [0.038, 0.050, 0.061, 0.021, -0.044, -0.034, -0.043, -0.002, 0.019, -0.017]
BASE = "/api/v1/skipper"
FEATURES = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]  # diabetes


def bodies(rows: int) -> dict[str, tuple[str, bytes]]:
    """Each route's path and request body for `rows` rows."""
    instances = json.dumps({"instances": [ROW] * rows}).encode()
    oip = {"inputs": [{"name": "input", "shape": [rows, len(ROW)], "datatype": "FP32", "data": ROW * rows}]}
    legacy = {"task_type": "serving", "payload": "", "data": dict(zip(FEATURES, ROW, strict=True))}
    return {
        "native": (f"{BASE}/models/diabetes/predict", instances),
        "oip": ("/v2/models/diabetes/infer", json.dumps(oip).encode()),
        "tfserving": ("/v1/models/diabetes:predict", instances),
        "legacy": (f"{BASE}/tasks/execute_sync", json.dumps(legacy).encode()),
        "bare": ("/predict", instances),
        "hello": ("/hello", instances),
    }


async def call(app: ASGIApp, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
    """One HTTP request straight into the ASGI app: (status, body)."""
    headers = [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": headers,
             "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 80)}
    sent = False
    status, chunks = 0, []

    async def receive() -> Message:
        nonlocal sent
        if sent:
            await asyncio.Event().wait()  # a disconnect never comes
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, b"".join(chunks)


def bare_app(predict: Callable[[np.ndarray], list[Any]]) -> Starlette:
    """The baseline: what `benchmarks/bare_endpoint.py` does, on the predictor Skipper serves."""

    async def endpoint(request: Request) -> Response:
        body = json.loads(await request.body())
        return JSONResponse({"predictions": predict(np.asarray(body["instances"], dtype=np.float32))})

    async def hello(request: Request) -> Response:  # the ceiling: the same stack with no model and no checks
        json.loads(await request.body())
        return JSONResponse({"predictions": [0.0]})

    return Starlette(routes=[Route("/predict", endpoint, methods=["POST"]), Route("/hello", hello, methods=["POST"])])


async def measure(app: ASGIApp, path: str, body: bytes, requests: int, concurrency: int) -> tuple[float, float]:
    """CPU seconds per request: of the whole process, and of the event loop's thread alone.

    The process figure includes TensorFlow's own threads (which spin a while after each model
    call); the loop thread's figure is our Python code plus the calling side of the model.
    """
    waves = max(1, requests // concurrency)
    started, started_thread = time.process_time(), time.thread_time()
    for _ in range(waves):
        replies = await asyncio.gather(*(call(app, "POST", path, body) for _ in range(concurrency)))
        if replies[0][0] not in (200, 202):
            raise RuntimeError(f"{path}: {replies[0]}")
    n = waves * concurrency
    return (time.process_time() - started) / n, (time.thread_time() - started_thread) / n


async def start_engine(data_dir: Path) -> tuple[Any, ASGIApp, Callable[[np.ndarray], list[Any]]]:
    from skipper.app.runtime import Runtime
    from skipper.core.settings import load_settings

    settings = load_settings(environ={}, overrides={"data_dir": str(data_dir), "log_level": "WARNING"})
    runtime = Runtime(settings, frozenset({"api", "trainer", "server"}))
    await runtime.start()
    app = runtime.app()
    status, raw = await call(app, "POST", f"{BASE}/workflows/diabetes/train", b'{"params": {"epochs": 2}}')
    assert status == 202, raw
    task_id = json.loads(raw)["task_id"]
    deadline = time.monotonic() + 300
    serving = next(m for m in runtime.modules if m.name == "serving")
    while (loaded := serving.loaded("diabetes")) is None:  # type: ignore[attr-defined]
        if time.monotonic() > deadline:
            raise TimeoutError(f"task {task_id}: no version served")
        await asyncio.sleep(0.1)
    return runtime, app, loaded.predictor.predict


async def main_async(args: argparse.Namespace) -> None:
    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="skipper-cpu-") as tmp:
        runtime, app, predict = await start_engine(Path(tmp))
        try:
            bare = bare_app(predict)
            routes = bodies(args.rows)
            names = [n.strip() for n in args.routes.split(",") if n.strip()]
            apps = {name: bare if name in ("bare", "hello") else app for name in names}
            for name in names:  # each answers before any is measured
                path, body = routes[name]
                status, raw = await call(apps[name], "POST", path, body)
                assert status in (200, 202), (name, status, raw)
            if args.profile:
                path, body = routes[args.profile]
                await measure(apps[args.profile], path, body, 500, args.profile_concurrency)
                profiler = cProfile.Profile()
                profiler.enable()
                per, _ = await measure(apps[args.profile], path, body, args.requests, args.profile_concurrency)
                profiler.disable()
                out = io.StringIO()
                stats = pstats.Stats(profiler, stream=out)
                stats.sort_stats(args.sort).print_stats(args.top)
                print(f"{args.profile} c={args.profile_concurrency}: {per * 1e6:.0f} us CPU per request (under cProfile)")
                print(out.getvalue())
                return
            for concurrency in [int(c) for c in args.concurrency.split(",")]:
                samples: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
                for name in names:  # warm-up
                    await measure(apps[name], *routes[name], min(args.requests, 500), concurrency)
                for _ in range(args.rounds):  # interleaved: drifting load hits every route alike
                    for name in names:
                        samples[name].append(await measure(apps[name], *routes[name], args.requests, concurrency))
                process = {name: statistics.median(p for p, _ in s) for name, s in samples.items()}
                loop = {name: statistics.median(t for _, t in s) for name, s in samples.items()}
                print(f"\nconcurrency {concurrency}, {args.rows} row(s) per request, median of {args.rounds} rounds "
                      f"of {args.requests} requests; CPU us per request")
                print("| route | process | vs bare | vs native | loop thread | vs bare | vs native |")
                print("|---|---:|---:|---:|---:|---:|---:|")
                for name in names:
                    print(f"| {name} | {_row(process, name)} | {_row(loop, name)} |")
        finally:
            await runtime.stop()


def _row(figures: dict[str, float], name: str) -> str:
    value, bare, native = figures[name], figures.get("bare"), figures.get("native")
    return " | ".join([f"{value * 1e6:.0f}", f"{value / bare:.2f}x" if bare else "-",
                       f"{value / native:.2f}x" if native else "-"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--routes", default="native,oip,tfserving,legacy,bare,hello",
                        help="hello: the bare endpoint's stack without the model (the ceiling)")
    parser.add_argument("--concurrency", default="1,64")
    parser.add_argument("--requests", type=int, default=2000, help="requests per route and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rows", type=int, default=1, help="instances per request")
    parser.add_argument("--profile", choices=["native", "oip", "tfserving", "legacy", "bare", "hello"],
                        help="cProfile this route instead of comparing")
    parser.add_argument("--profile-concurrency", type=int, default=1)
    parser.add_argument("--sort", default="tottime", help="pstats sort key: tottime, cumulative")
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(main_async(args))
    else:
        uvloop.run(main_async(args))


if __name__ == "__main__":
    main()
