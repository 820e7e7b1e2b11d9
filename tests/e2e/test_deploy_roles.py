"""The manifests agree with the code: each prod Deployment's container, started here exactly as
Kubernetes would start it (same args, same environment from the ConfigMap and the Secret), answers
its probes, and together they train and serve. A renamed flag, env var, port or probe path fails here.

Only three things are changed from the manifest, each through the mechanism the manifest itself uses:
  - the Service host names `rabbitmq` and `postgres` in the Secret's URLs become this machine's
    RabbitMQ and PostgreSQL (with their credentials, and a fresh schema in the test database);
  - SKIPPER_PORT, which the manifest sets in the ConfigMap (the container passes no --port flag), is
    a free local port per role, and SKIPPER_HOST is 127.0.0.1 rather than every interface;
  - SKIPPER_NAMESPACE is unique per run and SKIPPER_DATA_DIR a temp directory per role (in the pod,
    a volume mounted at that path);
  - a Secret the container mounts as a volume is written to a temp directory (SKIPPER_AUTH__KEYS_FILE
    follows it), and the api's keys file holds an admin key this test made (in production, the
    skipper-auth Secret you create): with keys configured, every call below sends it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
import yaml

from skipper.core.apikeys import new_key
from skipper.core.db import Database
from tests.processes import free_port, postgres_schema
from tests.services import RABBITMQ_URL, require_postgres, require_rabbitmq
from tests.unit.test_deploy_manifests import (
    API_BASE,
    named_port,
    one,
    pod_spec,
    render,
    resolve_env,
    secret_volumes,
    secrets_of,
    skipper_container,
)

pytestmark = pytest.mark.multiprocess

ROOT = Path(__file__).resolve().parents[2]
ROLES = ("api", "trainer", "server")  # start order: a server catches up from the api's registry
ADMIN_KEY, ADMIN_ENTRY = new_key("deploy-roles-test", ["admin"])
AUTH = {"authorization": f"Bearer {ADMIN_KEY}"}
START_TIMEOUT = 120.0
TRAIN_TIMEOUT = 240.0
ROWS = [
    [0.038, 0.050, 0.061, 0.021, -0.044, -0.034, -0.043, -0.002, 0.019, -0.017],
    [-0.002, -0.045, -0.051, -0.026, -0.008, -0.019, 0.074, -0.039, -0.068, -0.092],
]
T = TypeVar("T")


def eventually(check: Callable[[], T | None], *, timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
            last = result
        except (httpx.HTTPError, OSError, KeyError, ValueError) as exc:
            last = exc
        time.sleep(0.25)
    raise AssertionError(f"{what}: not within {timeout}s (last: {last!r})")


def local_url(manifest_url: str, service: str, local: str, *, path: str | None = None) -> str:
    """`manifest_url` aimed at this machine: the Service's host (and the credentials that go with it)
    replaced by the local service's; scheme, and path unless given, stay the manifest's."""
    url, here = urlsplit(manifest_url), urlsplit(local)
    assert url.hostname == service, f"{manifest_url!r} does not point at the {service} Service"
    return urlunsplit((url.scheme, here.netloc, url.path if path is None else path, here.query, ""))


@dataclass
class Process:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    grace: int

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=5, headers=AUTH)

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture
def schema_url() -> Iterator[str]:
    """A fresh PostgreSQL schema; the database URL whose connections use it."""
    require_postgres()
    with postgres_schema() as url:
        yield url


@pytest.fixture
def started() -> Iterator[list[Process]]:
    """The processes a test starts; killed at teardown, before `schema_url` drops their schema."""
    processes: list[Process] = []
    yield processes
    for p in processes:  # whatever the test left running
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait(10)


def data_dir_is_shared(deployment: dict[str, Any], container: dict[str, Any], data_dir: str) -> bool:
    """Whether the volume at SKIPPER_DATA_DIR is one claim shared by every replica (else per pod)."""
    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod_spec(deployment).get("volumes", [])}
    return "persistentVolumeClaim" in volumes[mounts[data_dir]]


def start_role(deployment: str, replica: int, objs: list[dict[str, Any]], *, namespace: str, database_url: str,
               workdir: Path) -> Process:
    d = one(objs, "Deployment", deployment)
    container = skipper_container(d)
    secrets = secrets_of(objs)
    secrets["skipper-auth"]["api-keys.yaml"] = yaml.safe_dump([ADMIN_ENTRY])
    env = resolve_env(objs, container, secrets)
    assert env.get("SKIPPER_TRANSPORT") == "rabbitmq"
    env["SKIPPER_BROKER_URL"] = local_url(env["SKIPPER_BROKER_URL"], "rabbitmq", RABBITMQ_URL)
    if "SKIPPER_DATABASE_URL" in env:
        local_db = urlsplit(database_url)
        env["SKIPPER_DATABASE_URL"] = local_url(env["SKIPPER_DATABASE_URL"], "postgres", database_url,
                                                path=local_db.path)
    args = list(container.get("args", []))
    assert not [a for a in args if a.startswith("--port") or a.startswith("--host")], (
        "the manifest now passes --port/--host: shift the port there instead of in SKIPPER_PORT"
    )
    # The container port the probes use must be the one Skipper listens on (SKIPPER_PORT, from the ConfigMap).
    assert "SKIPPER_PORT" in env, f"{deployment}: the ConfigMap no longer sets SKIPPER_PORT"
    port_name = container["readinessProbe"]["httpGet"]["port"]
    assert named_port(container, port_name) == int(env["SKIPPER_PORT"])
    port = free_port()
    # The api replicas share their claim (ReadWriteMany); the other roles' data dirs are per pod.
    shared = data_dir_is_shared(d, container, env["SKIPPER_DATA_DIR"])
    name = f"{deployment}-{replica}"
    env.update(SKIPPER_PORT=str(port), SKIPPER_HOST="127.0.0.1", SKIPPER_NAMESPACE=namespace,
               SKIPPER_DATA_DIR=str(workdir / (deployment if shared else name)))
    for mount_path, (secret, items) in secret_volumes(d, container).items():  # as the kubelet mounts them
        local = workdir / f"{name}-secret-{secret}"
        local.mkdir(parents=True, exist_ok=True)
        for file_name, key in items.items():
            (local / file_name).write_text(secrets[secret][key], encoding="utf-8")
        env.update({k: v.replace(mount_path, str(local)) for k, v in env.items() if v.startswith(mount_path + "/")})
    # Nothing of this machine's own SKIPPER_* environment leaks in: the pod has only what the manifest gives.
    process_env = {k: v for k, v in os.environ.items() if not k.startswith("SKIPPER_")} | env
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "skipper", *args], cwd=ROOT, env=process_env,
                                stdout=out, stderr=subprocess.STDOUT)
    return Process(name, proc, port, log, int(pod_spec(d)["terminationGracePeriodSeconds"]))


def wait_for_probes(p: Process, container: dict[str, Any]) -> None:
    """Every probe of the container answers 200 on its path, as the kubelet would ask it."""
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        path = container[probe]["httpGet"]["path"]

        def ok(path: str = path) -> bool:
            assert p.proc.poll() is None, f"{p.name} exited with {p.proc.returncode}:\n{p.tail()}"
            return p.get(path).status_code == 200

        try:
            eventually(ok, timeout=START_TIMEOUT, what=f"{p.name} {probe} {path}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- {p.name} log:\n{p.tail()}") from None


def test_each_prod_deployment_starts_as_its_manifest_says_and_together_they_train_and_serve(
    tmp_path: Path, schema_url: str, started: list[Process]
) -> None:
    require_rabbitmq()
    objs = render("prod")
    namespace = f"deploy-{uuid.uuid4().hex[:10]}"
    replicas: dict[str, list[Process]] = {}
    for deployment in ROLES:  # as many processes as the Deployment has replicas, started together like pods
        d = one(objs, "Deployment", deployment)
        replicas[deployment] = [
            start_role(deployment, i, objs, namespace=namespace, database_url=schema_url, workdir=tmp_path)
            for i in range(d["spec"]["replicas"])
        ]
        started.extend(replicas[deployment])
        for p in replicas[deployment]:
            wait_for_probes(p, skipper_container(d))
    assert [len(replicas[r]) for r in ROLES] == [2, 1, 2]
    api = replicas["api"][0]

    def logs() -> str:
        return "\n".join(f"--- {p.name}\n{p.tail()}" for p in started)

    # Only the api serves the rest of the API; every role serves health and ready.
    assert replicas["trainer"][0].get(f"{API_BASE}/workflows").status_code == 404
    assert api.get(f"{API_BASE}/workflows").status_code == 200

    assert httpx.get(f"http://127.0.0.1:{api.port}{API_BASE}/workflows").status_code == 401  # keys are on
    response = httpx.post(f"http://127.0.0.1:{api.port}{API_BASE}/workflows/diabetes/train",
                          json={"params": {"epochs": 2}}, timeout=30, headers=AUTH)
    assert response.status_code == 202, response.text
    task_id = response.json()["task_id"]

    def finished() -> dict[str, Any] | None:
        # Asked of the other api replica: both share the database.
        task: dict[str, Any] = replicas["api"][-1].get(f"{API_BASE}/tasks/{task_id}").json()
        return task if task["status"] in {"succeeded", "failed", "cancelled"} else None

    try:
        task = eventually(finished, timeout=TRAIN_TIMEOUT, what=f"task {task_id} finished")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{logs()}") from None
    assert task["status"] == "succeeded", f"{task}\n{logs()}"

    # The new model reaches every server replica by fanout; each one's readiness lists the version it serves.
    for server in replicas["server"]:

        def serving(server: Process = server) -> dict[str, Any] | None:
            r = server.get(f"{API_BASE}/ready")
            body: dict[str, Any] = r.json()
            return body if r.status_code == 200 and body.get("models", {}).get("diabetes") else None

        try:
            ready = eventually(serving, timeout=60, what=f"{server.name} serves diabetes")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{logs()}") from None
        assert ready["models"] == {"diabetes": 1}, server.name  # a fresh schema: the first version

    for p in replicas["api"]:
        response = httpx.post(f"http://127.0.0.1:{p.port}{API_BASE}/models/diabetes/predict",
                              json={"instances": ROWS}, timeout=30, headers=AUTH)
        assert response.status_code == 200, f"{p.name}: {response.text}\n{logs()}"
        body = response.json()
        assert len(body["predictions"]) == 2
        assert (body["model"], body["model_version"]) == ("diabetes", 1)

    # SIGTERM, as the kubelet sends it: each role shuts down cleanly within its pod's grace period.
    # (uvicorn re-raises the signal once its graceful shutdown is done, so the status is -SIGTERM or 0;
    # "skipper stopped" is the runtime's last log line after it has drained and closed the bus.)
    for p in started:
        p.proc.send_signal(signal.SIGTERM)
    for p in started:
        wait = min(p.grace, 60)
        try:
            code = p.proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{p.name} ignored SIGTERM for {wait}s:\n{p.tail()}") from None
        assert code in (0, -signal.SIGTERM), f"{p.name} exited with {code} on SIGTERM:\n{p.tail()}"
        assert "skipper stopped" in p.log.read_text(errors="replace"), f"{p.name} did not stop cleanly:\n{p.tail()}"


def test_api_replicas_sharing_one_database_can_create_its_schema_at_the_same_moment(schema_url: str) -> None:
    # The api Deployment has 2 replicas on one PostgreSQL: on a fresh database both pods start
    # together and each creates the schema at start (Runtime.start -> Database.create_schema).
    replicas = [Database(schema_url) for _ in range(2)]
    barrier = threading.Barrier(len(replicas))
    errors: list[BaseException] = []

    def start(db: Database) -> None:
        barrier.wait()
        try:
            db.create_schema()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(db,)) for db in replicas]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for db in replicas:
        db.dispose()
    assert not errors, f"a replica fails to start when another creates the schema at the same time: {errors[0]!r}"
