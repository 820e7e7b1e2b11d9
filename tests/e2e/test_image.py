"""The Dockerfile built for real with podman, and Skipper's roles run from the images.

No registry is reachable here, so the base image is made locally: a debootstrap of Debian
bookworm (Python 3.11) imported into podman and passed as BASE_IMAGE. pip reaches its index with
this machine's pip configuration and CA bundle, passed as build secrets. Rootful podman here
needs runc and explicit nofile/nproc limits (this machine cannot raise them), set through a
containers.conf named by CONTAINERS_CONF.

The debootstrap tarball is cached in /var/cache/skipper-test (SKIPPER_IMAGE_CACHE) so a rerun
skips it; without the cache the test makes it. Podman's layer cache makes a rebuild of unchanged
stages quick.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.processes import ROOT, eventually, free_port, http, postgres_schema
from tests.services import CI, POSTGRES_URL, RABBITMQ_URL, require_postgres, require_rabbitmq

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess, pytest.mark.image]

CACHE = Path(os.environ.get("SKIPPER_IMAGE_CACHE", "/var/cache/skipper-test"))
BASE = "localhost/skipper-test-base:bookworm"
IMAGES = {"runtime": "localhost/skipper-test:runtime", "api": "localhost/skipper-test:api"}
ROW = [0.038, 0.050, 0.061, 0.021, -0.044, -0.034, -0.043, -0.002, 0.019, -0.017]
# What the pods run with (k8s/base/*.yaml): read-only root, uid 10001, no capabilities, a tmpfs /tmp.
HARDENED = ["--read-only", "--user", "10001:10001", "--cap-drop", "all", "--security-opt", "no-new-privileges",
            "--tmpfs", "/tmp"]


class Podman:
    def __init__(self, conf: Path) -> None:
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf)}

    def __call__(self, *args: str, timeout: float = 120, check: bool = True) -> str:
        proc = subprocess.run(["podman", *args], env=self.env, capture_output=True, text=True, timeout=timeout,
                              check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"podman {' '.join(args[:3])} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        return proc.stdout.strip()

    def has_image(self, name: str) -> bool:
        return subprocess.run(["podman", "image", "exists", name], env=self.env, check=False).returncode == 0


def _tools() -> None:
    missing = [t for t in ("podman", "runc", "debootstrap") if shutil.which(t) is None]
    if missing or os.geteuid() != 0:
        if CI:
            raise RuntimeError(f"the image test needs root and {missing} in CI (apt-get install podman runc debootstrap)")
        pytest.skip(f"needs root and podman, runc, debootstrap (missing: {missing})")


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Podman:
    _tools()
    conf = tmp_path_factory.mktemp("podman") / "containers.conf"
    # Limits no higher than this process has: the container may not raise them.
    nofile = min(8192, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    nproc = min(8192, resource.getrlimit(resource.RLIMIT_NPROC)[1])
    conf.write_text(f'[containers]\ndefault_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n'
                    '[engine]\nruntime = "runc"\n')
    return Podman(conf)


def _base_image(podman: Podman) -> None:
    """A Debian bookworm image made here: from podman's store, the cached tarball, or a fresh debootstrap."""
    if podman.has_image(BASE):
        return
    tarball = CACHE / "bookworm-rootfs.tar"
    if not tarball.exists():
        with tempfile.TemporaryDirectory(prefix="skipper-debootstrap-") as tmp:
            rootfs = Path(tmp) / "rootfs"
            subprocess.run(["debootstrap", "--variant=minbase", "--include=python3,python3-venv,python-is-python3,"
                            "ca-certificates", "bookworm", str(rootfs), "http://deb.debian.org/debian"],
                           check=True, capture_output=True, timeout=900)
            CACHE.mkdir(parents=True, exist_ok=True)
            partial = tarball.with_suffix(".partial")
            subprocess.run(["tar", "-C", str(rootfs), "-cf", str(partial), "."], check=True, timeout=300)
            partial.rename(tarball)
    podman("import", str(tarball), BASE, timeout=300)


def _pip_conf(into: Path) -> Path:
    """This machine's index settings for pip inside the build, with its CA bundle as a build secret."""
    lines = ["[global]", "cert = /run/secrets/pipca", "timeout = 180"]
    listed = subprocess.run(["pip", "config", "list"], capture_output=True, text=True, check=False).stdout
    for line in listed.splitlines():
        key, _, value = line.partition("=")
        name = key.rsplit(".", 1)[-1]
        urls = [u for u in value.strip("'\"").split() if u.startswith(("http://", "https://"))]
        if name in ("index-url", "extra-index-url") and urls:
            lines.append(f"{name} = {' '.join(urls)}")
        elif name == "trusted-host":
            lines.append(f"trusted-host = {value.strip(chr(39) + chr(34))}")
    path = into / "pip.conf"
    path.write_text("\n".join(lines) + "\n")
    return path


def _ca_bundle() -> str:
    for candidate in (os.environ.get("PIP_CERT"), os.environ.get("SSL_CERT_FILE"), "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and Path(candidate).is_file():
            return candidate
    raise AssertionError("no CA bundle to give pip inside the build")


@pytest.fixture(scope="module")
def images(podman: Podman, tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    """Both targets built; their sizes in bytes."""
    _base_image(podman)
    conf = _pip_conf(tmp_path_factory.mktemp("pip"))
    sizes = {}
    for target, tag in IMAGES.items():
        podman("build", "--target", target, "-t", tag, "--build-arg", f"BASE_IMAGE={BASE}",
               "--secret", f"id=pipconf,src={conf}", "--secret", f"id=pipca,src={_ca_bundle()}", str(ROOT), timeout=1500)
        sizes[target] = int(podman("image", "inspect", "--format", "{{.Size}}", tag))
    print(f"\nimage sizes: {', '.join(f'{t} {s / 1e6:.0f} MB' for t, s in sizes.items())}")
    return sizes


@contextlib.contextmanager
def container(podman: Podman, image: str, *args: str, env: dict[str, str], volumes: list[str]) -> Iterator[str]:
    name = f"skipper-test-{uuid.uuid4().hex[:8]}"
    flags = [f"--env={k}={v}" for k, v in env.items()] + [f"--volume={v}" for v in volumes]
    podman("run", "-d", "--name", name, "--network", "host", *HARDENED, *flags, image, *args)
    try:
        yield name
    except BaseException:
        print(podman("logs", "--tail", "60", name, check=False))
        raise
    finally:
        podman("rm", "-f", "-v", "-t", "10", name, check=False, timeout=60)


def _healthy(port: int) -> bool:
    return http("GET", f"http://127.0.0.1:{port}/api/v1/skipper/health", timeout=2)[0] == 200


def _train_and_predict(port: int) -> dict[str, object]:
    url = f"http://127.0.0.1:{port}/api/v1/skipper"
    status, body = http("POST", f"{url}/workflows/diabetes/train", {"params": {"epochs": 2}})
    assert status == 202, body
    task_id = body["task_id"]
    task = eventually(lambda: (t := http("GET", f"{url}/tasks/{task_id}")[1])["status"] in ("succeeded", "failed") and t,
                      timeout=240, interval=1, what="training in the container")
    assert task["status"] == "succeeded", task
    predicted = eventually(lambda: (r := http("POST", f"{url}/models/diabetes/predict", {"instances": [ROW]}))[0] == 200
                           and r[1], timeout=120, interval=0.5, what="a prediction from the container")
    assert predicted["model_version"] == 1 and len(predicted["predictions"]) == 1
    return dict(predicted)


def test_the_all_in_one_image_trains_and_predicts_with_the_pods_hardening(podman: Podman, images: dict[str, int]) -> None:
    port = free_port()
    volume = f"skipper-test-{uuid.uuid4().hex[:8]}"
    podman("volume", "create", volume)
    try:
        env = {"SKIPPER_HOST": "127.0.0.1", "SKIPPER_PORT": str(port)}
        with container(podman, IMAGES["runtime"], "--role=all", env=env, volumes=[f"{volume}:/var/lib/skipper"]) as name:
            eventually(lambda: _healthy(port), timeout=120, interval=1, what="the all-in-one container is up")
            _train_and_predict(port)
            assert podman("exec", name, "id", "-u") == "10001"
            assert podman("exec", name, "python", "-c", "open('/opt/venv/x', 'w')", check=False) == ""  # read-only
            status = podman("exec", name, "sh", "-c", "grep CapEff /proc/1/status")
            assert status.split()[-1] == "0000000000000000", status
    finally:
        podman("volume", "rm", "-f", volume, check=False)


def test_the_api_image_has_no_tensorflow_and_is_smaller(podman: Podman, images: dict[str, int]) -> None:
    probe = "import importlib.util as u; print(all(u.find_spec(m) is None for m in ('tensorflow', 'keras', 'sklearn')))"
    out = podman("run", "--rm", *HARDENED, "--entrypoint", "python", IMAGES["api"], "-c", probe)
    assert out == "True", out
    assert images["api"] < images["runtime"] / 2, images


def _compose_volumes(service: str) -> list[str]:
    """The service's volumes in docker-compose.yml, as podman --volume values (an anonymous one: the target alone)."""
    spec = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"][service]
    result = []
    for volume in spec.get("volumes", []):
        if isinstance(volume, str):
            source, _, target = volume.partition(":")
            result.append(f"skipper-test-{uuid.uuid4().hex[:6]}-{source}:{target}")
        else:
            assert volume["type"] == "volume" and "source" not in volume, volume
            result.append(volume["target"])
    # As run here (HARDENED): a read-only root with a tmpfs /tmp, never a tmpfs data dir (root-owned under runc)
    assert spec["read_only"] is True and spec.get("tmpfs") == ["/tmp"], spec
    return result


def test_the_roles_split_over_the_local_rabbitmq_and_postgresql_with_the_compose_volumes(
        podman: Podman, images: dict[str, int]) -> None:
    require_rabbitmq()
    require_postgres()
    with postgres_schema() as database_url, contextlib.ExitStack() as stack:
        env = {"SKIPPER_TRANSPORT": "rabbitmq", "SKIPPER_BROKER_URL": RABBITMQ_URL,
               "SKIPPER_NAMESPACE": f"img-{uuid.uuid4().hex[:10]}", "SKIPPER_HOST": "127.0.0.1"}
        ports = {role: free_port() for role in ("api", "trainer", "server")}
        assert database_url.startswith(POSTGRES_URL)
        stack.enter_context(container(
            podman, IMAGES["api"], "--role=api", volumes=_compose_volumes("api"),
            env={**env, "SKIPPER_PORT": str(ports["api"]), "SKIPPER_DATABASE_URL": database_url}))
        eventually(lambda: _healthy(ports["api"]), timeout=120, interval=1, what="the api container is up")
        for role in ("trainer", "server"):
            stack.enter_context(container(podman, IMAGES["runtime"], f"--role={role}", volumes=_compose_volumes(role),
                                          env={**env, "SKIPPER_PORT": str(ports[role])}))
        for role in ("trainer", "server"):
            eventually(lambda r=role: _healthy(ports[r]), timeout=120, interval=1, what=f"the {role} container is up")
        _train_and_predict(ports["api"])
        # The server's model cache is on its (anonymous) volume, written by uid 10001
        ready = http("GET", f"http://127.0.0.1:{ports['server']}/api/v1/skipper/ready")[1]
        assert ready["models"] == {"diabetes": 1}, ready
