"""Shared helpers for the serving tests: tiny real artifacts, a fake registry, an event log.

Holds no tests itself. TensorFlow is imported only inside the builders.
"""

from __future__ import annotations

import asyncio
import functools
import io
import json
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from skipper.core import artifacts, contracts
from skipper.core.bus import Transport
from skipper.core.errors import NotFound
from skipper.core.messages import Message
from skipper.core.settings import ServingSettings, Settings
from skipper.modules.serving.predictor import KerasPredictor

N_FEATURES = 10
FEATURES = [f"f{i}" for i in range(N_FEATURES)]


@dataclass(frozen=True)
class Built:
    """One packaged artifact and the Keras model it holds (to compute expected predictions)."""

    data: bytes
    sha256: str
    model: Any
    metadata: dict[str, Any]

    def expected(self, rows: list[list[float]]) -> list[float]:
        """The model called directly (eagerly), one row at a time."""
        return [float(self.model(np.asarray([row], dtype=np.float32), training=False).numpy()[0, 0]) for row in rows]


def metadata(name: str = "diabetes") -> dict[str, Any]:
    return {"name": name, "workflow": name, "kind": "regression", "features": FEATURES, "targets": ["target"],
            "metrics": {"mae": 1.0}, "versions": {"skipper": "test"}}


@functools.cache
def built(seed: int, name: str = "diabetes") -> Built:
    """A 10 -> Normalization -> Dense(8) -> Dense(1) model packaged like the trainer does (cached per process)."""
    import keras

    keras.utils.set_random_seed(seed)
    data = np.random.default_rng(seed).normal(loc=seed, scale=1 + seed, size=(64, N_FEATURES)).astype(np.float32)
    norm = keras.layers.Normalization()
    norm.adapt(data)
    inputs = keras.Input((N_FEATURES,))
    hidden = keras.layers.Dense(8, activation="relu")(norm(inputs))
    model = keras.Model(inputs, keras.layers.Dense(1)(hidden))
    path = Path(tempfile.mkdtemp(prefix="skipper-test-")) / artifacts.MODEL_FILE
    model.save(path)
    meta = metadata(name)
    archive = tar_gz([(artifacts.MODEL_FILE, path.read_bytes()), (artifacts.METADATA_FILE, json.dumps(meta).encode())])
    return Built(archive, artifacts.sha256_of(archive), model, meta)


def tar_gz(members: list[tuple[str | tarfile.TarInfo, bytes | None]]) -> bytes:
    """A tar.gz of regular files (name, bytes), or of hand-made TarInfo entries (links, devices)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for member, content in members:
            info = member if isinstance(member, tarfile.TarInfo) else tarfile.TarInfo(member)
            if content is not None:
                info.size = len(content)
            tar.addfile(info, io.BytesIO(content) if content is not None else None)
    return buf.getvalue()


def good_members(seed: int = 1) -> list[tuple[str | tarfile.TarInfo, bytes | None]]:
    """The two members of a good artifact, to mix with a bad one."""
    with tarfile.open(fileobj=io.BytesIO(built(seed).data), mode="r:gz") as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]


def settings(tmp_path: Path, *, workflows: dict[str, Any] | None = None, bus: dict[str, Any] | None = None,
             **serving: Any) -> Settings:
    return Settings.model_validate({
        "data_dir": str(tmp_path),
        "bus": {"retry_backoff_s": 0.02, "reconnect_backoff_max_s": 0.1, "request_timeout_s": 2, **(bus or {})},
        "serving": ServingSettings(**serving).model_dump(),
        "workflows": workflows or {},
    })


def headers(art: Built, *, model: str = "diabetes", version: int, seq: int, sha256: str | None = None) -> dict[str, Any]:
    return {"model": model, "version": version, "sha256": sha256 or art.sha256, "size": len(art.data), "seq": seq,
            "metadata": art.metadata}


@dataclass
class FakeRegistry:
    """Answers `registry.production` and `registry.artifact` from what a test put in it."""

    production: list[dict[str, Any]] = field(default_factory=list)
    artifacts: dict[tuple[str, int], bytes] = field(default_factory=dict)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    held: dict[str, asyncio.Event] = field(default_factory=dict)  # model -> its artifact is sent once set
    production_requests: int = 0
    artifact_requests: int = 0
    largest_reply: int = 0  # bytes in the largest artifact reply sent

    def __post_init__(self) -> None:
        self.gate.set()

    def deploy(self, art: Built, *, model: str = "diabetes", version: int, seq: int) -> None:
        self.artifacts[(model, version)] = art.data
        self.production = [e for e in self.production if e["model"] != model]
        self.production.append(headers(art, model=model, version=version, seq=seq))

    def register(self, bus: Transport) -> None:
        bus.consume(contracts.REGISTRY, self.handle)

    async def handle(self, msg: Message) -> Message:
        if msg.type == contracts.REGISTRY_PRODUCTION:
            self.production_requests += 1
            await self.gate.wait()
            return msg.reply({"models": list(self.production)})
        if msg.type == contracts.REGISTRY_ARTIFACT:
            self.artifact_requests += 1
            key = (msg.data["model"], msg.data["version"])
            if key[0] in self.held:
                await self.held[key[0]].wait()
            if key not in self.artifacts:
                raise NotFound(f"no artifact {key}")
            data = self.artifacts[key]
            offset, length = int(msg.data.get("offset", 0)), int(msg.data.get("length", len(data)))
            self.largest_reply = max(self.largest_reply, len(data[offset:offset + length]))
            return msg.reply(data[offset:offset + length], headers={"sha256": artifacts.sha256_of(data),
                                                                    "size": len(data), "offset": offset})
        raise NotFound(f"unexpected {msg.type}")


@dataclass
class EventLog:
    """Collects the `event` messages modules emit."""

    events: list[dict[str, Any]] = field(default_factory=list)

    def register(self, bus: Transport) -> None:
        bus.consume(contracts.EVENTS, self.handle)

    async def handle(self, msg: Message) -> None:
        self.events.append(msg.data)

    def kinds(self, kind: str) -> list[dict[str, Any]]:
        return [e["fields"] for e in self.events if e["kind"] == kind]


class CountingPredictor(KerasPredictor):
    """The default predictor, recording the size of every model call (plugged in by import path)."""

    batch_sizes: list[int] = []

    def predict(self, rows: np.ndarray) -> list[Any]:
        CountingPredictor.batch_sizes.append(len(rows))
        return super().predict(rows)
