"""Safe install: checksum, archive checks, Keras safe mode; a refused artifact never displaces the old one."""

from __future__ import annotations

import asyncio
import json
import tarfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from skipper.core import artifacts, contracts
from skipper.core.errors import ArtifactRejected
from skipper.core.events import EventEmitter
from skipper.core.messages import Message
from skipper.modules.serving import ServingModule
from skipper.modules.serving.module import Release
from skipper.transports.memory import MemoryTransport
from tests.conftest import eventually
from tests.modules.test_serving_support import N_FEATURES, Built, EventLog, built, good_members, headers, settings, tar_gz

pytestmark = pytest.mark.tensorflow

MAX_MEMBER = 256 * 1024
ROWS = [[float(i + j) for j in range(N_FEATURES)] for i in range(3)]


@dataclass
class Served:
    bus: MemoryTransport
    module: ServingModule
    events: EventLog
    root: Path

    async def predict(self, rows: list[list[float]]) -> dict[str, Any]:
        msg = Message(type=contracts.PREDICT_REQUEST, body={"model": "diabetes", "instances": rows})
        return (await self.bus.request(contracts.predict_queue("diabetes"), msg, timeout=5)).data

    def directories(self) -> list[Path]:
        return sorted((self.root / "serving").iterdir())


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    """A serving module already serving version 1 of `diabetes`."""
    config = settings(tmp_path, max_member_bytes=MAX_MEMBER)
    bus = MemoryTransport()
    module = ServingModule(settings=config, bus=bus, events=EventEmitter(bus, "serving"))
    module.register(bus)
    events = EventLog()
    events.register(bus)
    await bus.start()
    await module.install(Release.parse(headers(built(1), version=1, seq=1)), built(1).data)
    yield Served(bus, module, events, tmp_path)
    await module.stop()
    await bus.close()


def bad(data: bytes, *, version: int = 2) -> tuple[Release, bytes]:
    """An announcement whose checksum matches `data`, so only the archive checks can refuse it."""
    art = Built(data, artifacts.sha256_of(data), None, {})
    return Release.parse(headers(art, version=version, seq=version)), data


def without(name: str) -> list[tuple[str | tarfile.TarInfo, bytes | None]]:
    """A good artifact's members but `name`."""
    return [m for m in good_members() if m[0] != name]


def link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def device(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.CHRTYPE
    return info


async def assert_refused(served: Served, release: Release, data: bytes, reason: str) -> None:
    # Given version 1 serving and what it predicts
    before = await served.predict(ROWS)
    dirs = served.directories()
    # When the bad artifact is installed
    with pytest.raises(ArtifactRejected, match=reason):
        await served.module.install(release, data)
    # Then version 1 keeps serving the same predictions, the refusal is reported, nothing is left on disk
    after = await served.predict(ROWS)
    assert after == before and after["model_version"] == 1
    assert served.module.readiness() == {"models": {"diabetes": 1}}
    await eventually(lambda: bool(served.events.kinds("model.rejected")))
    rejected = served.events.kinds("model.rejected")
    assert rejected and rejected[-1]["version"] == release.version and reason.split()[0] in rejected[-1]["reason"]
    assert served.directories() == dirs
    assert not (served.root / "x").exists() and not (served.root / "serving" / "x").exists()


async def test_a_good_artifact_installs_and_predicts_like_the_model_itself(served: Served) -> None:
    # Given version 1 installed by the fixture
    # When a client asks for predictions
    reply = await served.predict(ROWS)
    # Then they are the model's own, from version 1, and the install was reported
    assert reply["model"] == "diabetes" and reply["model_version"] == 1
    assert reply["predictions"] == pytest.approx(built(1).expected(ROWS), rel=1e-5, abs=1e-5)
    await eventually(lambda: bool(served.events.kinds("model.installed")))
    installed = served.events.kinds("model.installed")
    assert installed[0]["sha256"] == built(1).sha256 and installed[0]["took_ms"] > 0
    (directory,) = served.directories()
    assert sorted(p.name for p in directory.iterdir()) == sorted(artifacts.MEMBERS)


async def test_a_new_version_replaces_the_old_one_and_its_directory_is_removed(served: Served) -> None:
    # Given version 1 serving from its directory
    (old_dir,) = served.directories()
    # When version 2 is installed
    assert await served.module.install(Release.parse(headers(built(2), version=2, seq=2)), built(2).data)
    # Then version 2 answers, and version 1's directory goes once nothing runs on it
    reply = await served.predict(ROWS)
    assert reply["model_version"] == 2
    assert reply["predictions"] == pytest.approx(built(2).expected(ROWS), rel=1e-5, abs=1e-5)
    for task in list(served.module._background):
        await task
    assert [d.name for d in served.directories()] != [old_dir.name] and not old_dir.exists()


async def test_a_wrong_sha256_is_refused_and_the_old_version_keeps_serving(served: Served) -> None:
    release = Release.parse(headers(built(2), version=2, seq=2, sha256="0" * 64))
    await assert_refused(served, release, built(2).data, "sha256 does not match")


async def test_an_artifact_over_the_size_limit_is_refused(served: Served) -> None:
    release = Release.parse({**headers(built(2), version=2, seq=2), "size": 10**12})
    await assert_refused(served, release, built(2).data, "over the limit")


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        pytest.param([("../x", b"escaped")], "escapes the target directory", id="path-traversal"),
        pytest.param([("/x", b"absolute")], "absolute path", id="absolute-path"),
        pytest.param([(link("x", "/etc/passwd", tarfile.SYMTYPE), None)], "is a link", id="symlink"),
        pytest.param([(link("y", artifacts.MODEL_FILE, tarfile.LNKTYPE), None)], "is a link", id="hardlink"),
        pytest.param([(device("x"), None)], "is a device", id="device"),
        pytest.param([("extra.txt", b"hello")], "unexpected archive member", id="extra-member"),
    ],
)
async def test_an_unsafe_archive_member_is_refused_and_the_old_version_keeps_serving(
    served: Served, extra: list[tuple[str | tarfile.TarInfo, bytes | None]], reason: str
) -> None:
    release, data = bad(tar_gz([*extra, *good_members()]))
    await assert_refused(served, release, data, reason)


async def test_a_symlink_in_place_of_the_model_is_refused(served: Served) -> None:
    members = without(artifacts.MODEL_FILE)
    release, data = bad(tar_gz([(link(artifacts.MODEL_FILE, "/etc/passwd", tarfile.SYMTYPE), None), *members]))
    await assert_refused(served, release, data, "is a link")


async def test_an_oversize_member_is_refused_and_the_old_version_keeps_serving(served: Served) -> None:
    padded = json.dumps({**built(1).metadata, "padding": "x" * (MAX_MEMBER + 1)}).encode()
    release, data = bad(tar_gz([*without(artifacts.METADATA_FILE), (artifacts.METADATA_FILE, padded)]))
    await assert_refused(served, release, data, "over the")


@pytest.mark.parametrize(
    ("archive", "reason"),
    [
        pytest.param(lambda: b"not a tar.gz at all", "not a valid tar.gz", id="not-gzip"),
        pytest.param(lambda: tar_gz(good_members()[:1]), "lacks", id="missing-member"),
        pytest.param(lambda: tar_gz([(artifacts.MODEL_FILE, b"garbage"), (artifacts.METADATA_FILE, b"{}")]),
                     "could not be loaded", id="corrupt-model"),
        pytest.param(lambda: tar_gz([*without(artifacts.METADATA_FILE), (artifacts.METADATA_FILE, b"[1, 2")]),
                     "not valid JSON", id="corrupt-metadata"),
    ],
)
async def test_a_broken_archive_is_refused_and_the_old_version_keeps_serving(served: Served, archive: Any,
                                                                            reason: str) -> None:
    release, data = bad(archive())
    await assert_refused(served, release, data, reason)


async def test_a_model_with_a_lambda_layer_is_refused_by_keras_safe_mode(tmp_path: Path, served: Served) -> None:
    import keras

    # Given a model whose saved config carries Python code
    inputs = keras.Input((N_FEATURES,))
    model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Lambda(lambda x: x * 2)(inputs)))
    model.save(tmp_path / "lambda.keras")
    release, data = bad(tar_gz([(artifacts.MODEL_FILE, (tmp_path / "lambda.keras").read_bytes()),
                                *without(artifacts.MODEL_FILE)]))
    # Then safe mode refuses to deserialize it
    await assert_refused(served, release, data, "could not be loaded")


async def test_a_model_is_reported_served_only_once_its_predict_queue_is_consumed(tmp_path: Path) -> None:
    """`/ready` and the replica view list a model only when a prediction sent at once would reach this server."""

    class SlowAttach(MemoryTransport):  # a broker taking its time to confirm the consumer
        gate = asyncio.Event()

        async def attach(self, queue: str, handler: Any, *, prefetch: int | None = None) -> None:
            await self.gate.wait()
            await super().attach(queue, handler, prefetch=prefetch)

    bus = SlowAttach()
    module = ServingModule(settings=settings(tmp_path, max_member_bytes=MAX_MEMBER), bus=bus,
                           events=EventEmitter(bus, "serving"))
    module.register(bus)
    await bus.start()
    try:
        install = asyncio.create_task(module.install(Release.parse(headers(built(1), version=1, seq=1)), built(1).data))
        await eventually(lambda: module.loaded("diabetes") is not None)  # loaded, its consumer not yet confirmed
        assert module.readiness() == {"models": {}}
        SlowAttach.gate.set()
        assert await install
        assert module.readiness() == {"models": {"diabetes": 1}}
        msg = Message(type=contracts.PREDICT_REQUEST, body={"model": "diabetes", "instances": ROWS})
        assert len((await bus.request(contracts.predict_queue("diabetes"), msg, timeout=5)).data["predictions"]) == 3
    finally:
        await module.stop()
        await bus.close()
