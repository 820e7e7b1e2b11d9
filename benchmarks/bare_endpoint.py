"""The baseline: a bare Starlette endpoint that calls the loaded Keras model once per request.

It loads the same artifact Skipper serves and calls it the fast way (a traced `tf.function`
with an input signature), with no validation, no bus and no batching, so the benchmark's
ratios show what Skipper's machinery costs at concurrency 1 and what batching buys at 64.

    python benchmarks/bare_endpoint.py --artifact model.tar.gz --port 8100
"""

from __future__ import annotations

import argparse
import gc
import json
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


def load(artifact: Path) -> tuple[object, int]:
    import keras
    import tensorflow as tf

    workdir = Path(tempfile.mkdtemp(prefix="bare-endpoint-"))
    with tarfile.open(artifact, "r:gz") as archive:
        archive.extractall(workdir, filter="data")
    metadata = json.loads((workdir / "skipper.json").read_text())
    model = keras.saving.load_model(workdir / "model.keras", safe_mode=True)
    width = len(metadata["features"])
    fn = tf.function(lambda x: model(x, training=False), input_signature=[tf.TensorSpec([None, width], tf.float32)])
    fn(np.zeros((1, width), np.float32))
    gc.collect()
    gc.freeze()
    return fn, width


def build_app(artifact: Path) -> Starlette:
    fn, _ = load(artifact)

    async def predict(request: Request) -> Response:
        body = json.loads(await request.body())
        out = fn(np.asarray(body["instances"], dtype=np.float32)).numpy()  # type: ignore[operator]
        return JSONResponse({"predictions": out[:, 0].tolist()})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return Starlette(routes=[Route("/predict", predict, methods=["POST"]), Route("/health", health)])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--artifact", type=Path, required=True)
    parser.add_argument("--port", type=int, default=8100)
    args = parser.parse_args()
    uvicorn.run(build_app(args.artifact), host="127.0.0.1", port=args.port, loop="uvloop", http="httptools",
                access_log=False, log_level="warning")


if __name__ == "__main__":
    main()
