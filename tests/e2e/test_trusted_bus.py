"""A trusted bus: signed model announcements, the registry accepting only declared models, an artifact
store that never leaves its root. The signed flow runs on RabbitMQ with real api and server processes'
runtimes (in one test process), a real Keras artifact, and a forged announcement."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from skipper.app.runtime import Runtime
from skipper.core import contracts, signing
from skipper.core.errors import ArtifactRejected
from skipper.core.messages import Message
from skipper.core.settings import load_settings
from skipper.modules.api.artifacts import ArtifactStore
from tests.apphelpers import running_skipper
from tests.conftest import eventually
from tests.services import RABBITMQ_URL, require_rabbitmq
from tests.transports.factory_rabbitmq import delete_broker_objects

KEY = SecretStr("test-signing-key-0123456789abcdef")
FIELDS = {"model": "diabetes", "version": 3, "sha256": "ab" * 32, "seq": 7, "size": 10, "metadata": {}}


def test_an_announcement_verifies_only_with_its_own_fields_and_key() -> None:
    signed = signing.sign(KEY, FIELDS)
    signing.verify(KEY, signed)
    assert signing.sign(None, FIELDS) == FIELDS  # no key: nothing added, nothing checked
    signing.verify(None, FIELDS)
    for change in [{"model": "other"}, {"version": 2}, {"sha256": "cd" * 32}, {"seq": 8}]:
        with pytest.raises(ArtifactRejected, match="wrong signature"):
            signing.verify(KEY, {**signed, **change})
    with pytest.raises(ArtifactRejected, match="wrong signature"):
        signing.verify(SecretStr("another-key-0123456789"), signed)
    with pytest.raises(ArtifactRejected, match="unsigned"):
        signing.verify(KEY, FIELDS)


def test_the_artifact_store_refuses_paths_outside_its_root(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    sha = hashlib.sha256(b"x").hexdigest()
    path = store.put("diabetes", sha, b"x")
    assert store.read(str(path)) == b"x"
    for model in ["../escaped", "../../tmp", "/etc"]:
        with pytest.raises(ArtifactRejected, match="outside the artifact store"):
            store.put(model, sha, b"x")
    with pytest.raises(ArtifactRejected, match="not a hex SHA-256"):
        store.put("diabetes", "../../x", b"x")
    (tmp_path / "secret").write_bytes(b"secret")
    os.symlink(tmp_path / "secret", tmp_path / "artifacts" / "diabetes" / "link.tar.gz")
    for outside in [str(tmp_path / "secret"), "/etc/passwd", str(tmp_path / "artifacts" / "diabetes" / "link.tar.gz"),
                    str(tmp_path / "artifacts" / ".." / "secret")]:
        with pytest.raises(ArtifactRejected, match="outside the artifact store"):
            store.read(outside)
    assert not (tmp_path / "escaped").exists()


async def test_the_registry_accepts_an_artifact_only_for_the_model_its_workflow_declares(tmp_path: Path) -> None:
    async with running_skipper(tmp_path, frozenset({"api"}), bus={"max_retries": 0}) as (client, runtime):
        announced: list[Message] = []

        async def on_published(msg: Message) -> None:
            announced.append(msg)

        runtime.bus.subscribe(contracts.MODEL_PUBLISHED, on_published)
        task_id = (await client.post("/workflows/diabetes/train", json={})).json()["task_id"]
        await runtime.bus.request(contracts.REGISTRY, Message(type=contracts.TASK_CLAIM, body={"task_id": task_id}),
                                  timeout=5)
        data = b"an artifact for a model nobody declared"
        await runtime.bus.send(contracts.REGISTRY, Message(type=contracts.MODEL_ARTIFACT, body=data, headers={
            "task_id": task_id, "model": "wine", "sha256": hashlib.sha256(data).hexdigest(), "metadata": {}}))
        for _ in range(200):
            task = (await client.get(f"/tasks/{task_id}")).json()
            if task["status"] == "failed":
                break
            await asyncio.sleep(0.02)
        assert task["status"] == "failed" and task["error"]["code"] == "artifact_rejected", task
        assert "is not what workflow 'diabetes' produces" in task["error"]["message"]
        assert (await client.get("/models")).json()["models"] == []
        assert announced == [] and not list((tmp_path / "artifacts").glob("**/*.tar.gz"))


# --- signed announcements over RabbitMQ --------------------------------------------------------------


@contextlib.asynccontextmanager
async def role(settings_overrides: dict[str, Any], roles: frozenset[str]) -> AsyncIterator[Runtime]:
    runtime = Runtime(load_settings(environ={}, overrides=settings_overrides), roles)
    await runtime.start()
    try:
        yield runtime
    finally:
        objects = set(getattr(runtime.bus, "broker_objects", set()))
        await runtime.stop()
        await asyncio.to_thread(delete_broker_objects, objects)


@pytest.mark.tensorflow
async def test_a_forged_announcement_is_refused_on_rabbitmq_while_the_old_version_serves(tmp_path: Path) -> None:
    require_rabbitmq()
    from tests.modules.test_serving_support import FEATURES, built, headers

    v1, v2, forged = built(1), built(2), built(3)
    common = {"transport": "rabbitmq", "broker_url": RABBITMQ_URL, "namespace": f"sign-{tmp_path.name[-12:]}",
              "bus": {"signing_key": KEY.get_secret_value(), "retry_backoff_s": 0.05, "request_timeout_s": 5},
              "http": {"predict_timeout_s": 10}}
    async with role({**common, "data_dir": str(tmp_path / "api")}, frozenset({"api"})) as api:
        # Given version 1 in production, installed by a server that caught up from the (signing) registry
        for art in (v1, v2):
            path = api.container.artifact_store().put("diabetes", art.sha256, art.data)
            api.container.registry().add_version(model="diabetes", sha256=art.sha256, size=len(art.data), path=str(path),
                                                 metrics={}, metadata={**art.metadata, "features": FEATURES},
                                                 task_id=None)
        api.container.registry().deploy("diabetes", 1)  # v2 was registered last; v1 is production
        async with role({**common, "data_dir": str(tmp_path / "server")}, frozenset({"server"})) as server:
            serving = server.modules[0]
            await eventually(lambda: serving.ready() and serving.readiness()["models"] == {"diabetes": 1}, timeout=60)
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api.app()),
                                         base_url="http://127.0.0.1/api/v1/skipper") as client:

                async def served() -> tuple[int, list[float]]:
                    r = await client.post("/models/diabetes/predict", json={"instances": [[0.5] * 10]})
                    assert r.status_code == 200, r.text
                    return int(r.json()["model_version"]), r.json()["predictions"]

                assert await served() == (1, pytest.approx(v1.expected([[0.5] * 10]), rel=1e-4))

                # When announcements the registry did not sign reach the broker: a wrong signature, none at all,
                # and a genuine signature of version 1 replayed with a newer deployment sequence
                fields = headers(forged, version=9, seq=1000)
                replay = {**signing.sign(KEY, headers(v1, version=1, seq=1)), "seq": 1001}
                for sent in [{**fields, "signature": "0" * 64}, fields, replay]:
                    await api.bus.publish(contracts.MODEL_PUBLISHED,
                                          Message(type=contracts.MODEL_PUBLISHED, body=forged.data, headers=sent))

                async def rejections() -> list[dict[str, Any]]:
                    events = (await client.get("/events", params={"kind": "model.rejected"})).json()["events"]
                    return [e["fields"] for e in events]

                for _ in range(300):
                    if len(await rejections()) == 3:
                        break
                    await asyncio.sleep(0.05)
                # Then each is refused and reported, and version 1 keeps serving
                reasons = [f["reason"] for f in await rejections()]
                assert reasons == ["model announcement with a wrong signature refused",
                                   "unsigned model announcement refused (bus.signing_key is set)",
                                   "model announcement with a wrong signature refused"]
                assert serving.readiness()["models"] == {"diabetes": 1}
                assert (await served())[0] == 1

                # And a deploy through the api (signed by the registry) is installed
                assert (await client.post("/models/diabetes/versions/2/deploy")).status_code == 200
                await eventually(lambda: serving.readiness()["models"] == {"diabetes": 2}, timeout=60)
                assert await served() == (2, pytest.approx(v2.expected([[0.5] * 10]), rel=1e-4))
