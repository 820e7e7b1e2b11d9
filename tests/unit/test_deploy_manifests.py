"""The Kubernetes manifests: every kustomize target renders, is valid against the Kubernetes API
schemas (strict: no unknown fields), and has the properties the deployment relies on."""

from __future__ import annotations

import base64
import functools
import hashlib
import math
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from starlette.routing import Route

from skipper.core.http import create_app
from skipper.core.roles import ROLES
from skipper.core.settings import load_settings
from skipper.modules.serving.memory import Footprint, MemoryGuard
from tests.services import CI

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
TARGETS = {"base": K8S / "base", "dev": K8S / "overlays" / "dev", "prod": K8S / "overlays" / "prod"}
SECRET_EXAMPLE = K8S / "base" / "secret.example.env"
AUTH_EXAMPLES = {"api-keys.yaml": K8S / "base" / "auth" / "api-keys.example.yaml",
                 "signing-key": K8S / "base" / "auth" / "signing-key.example",
                 "session-secret": K8S / "base" / "auth" / "session-secret.example"}
# The newest Kubernetes version whose schemas kubernetes-validate ships (pinned by requirements.lock).
K8S_VERSION = kubernetes_validate.latest_version()

API_BASE = "/api/v1/skipper"
HEALTH = f"{API_BASE}/health"
READY = f"{API_BASE}/ready"
SECRET_SETTINGS = {"SKIPPER_BROKER_URL", "SKIPPER_DATABASE_URL"}
WORKLOADS = {"Deployment", "StatefulSet"}
Obj = dict[str, Any]


# --------------------------------------------------------------------------------------------
# rendering and lookups (also used by tests/e2e/test_deploy_roles.py)
# --------------------------------------------------------------------------------------------
def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        message = "kubectl is not installed: the manifests are rendered with `kubectl kustomize`"
        if CI:
            pytest.fail(f"{message} (apt-get install kubernetes-client, or see .ci/run)")
        pytest.skip(message)
    return path


@functools.cache
def _render(target: str) -> tuple[Obj, ...]:
    proc = subprocess.run(
        [kubectl(), "kustomize", str(TARGETS[target])], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, f"kubectl kustomize {TARGETS[target]} failed:\n{proc.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(proc.stdout) if doc)


def render(target: str) -> list[Obj]:
    return list(_render(target))


def find(objs: list[Obj], kind: str, name: str | None = None) -> list[Obj]:
    return [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objs: list[Obj], kind: str, name: str) -> Obj:
    found = find(objs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name!r}, found {len(found)}"
    return found[0]


def workloads(objs: list[Obj]) -> list[Obj]:
    return [o for o in objs if o["kind"] in WORKLOADS]


def pod_spec(workload: Obj) -> Obj:
    spec: Obj = workload["spec"]["template"]["spec"]
    return spec


def containers(objs: list[Obj]) -> Iterator[tuple[Obj, Obj]]:
    """(workload, container) for every container, init containers included."""
    for w in workloads(objs):
        spec = pod_spec(w)
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            yield w, c


def is_skipper(container: Obj) -> bool:
    """A container running the Skipper image (whatever registry and tag an overlay sets)."""
    image: str = container["image"]
    return image.rsplit("/", 1)[-1].split(":", 1)[0] == "skipper"


def skipper_workloads(objs: list[Obj]) -> dict[str, Obj]:
    return {w["metadata"]["name"]: w for w in workloads(objs) if any(is_skipper(c) for c in pod_spec(w)["containers"])}


def skipper_container(workload: Obj) -> Obj:
    found = [c for c in pod_spec(workload)["containers"] if is_skipper(c)]
    assert len(found) == 1, f"{workload['metadata']['name']}: expected one skipper container"
    return found[0]


def secret_example() -> dict[str, str]:
    """The documented keys of the credentials Secret, with their placeholder values."""
    values = {}
    for line in SECRET_EXAMPLE.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def config_map_data(objs: list[Obj], name: str) -> dict[str, str]:
    return dict(one(objs, "ConfigMap", name).get("data", {}))


def resolve_env(objs: list[Obj], container: Obj, secrets: dict[str, dict[str, str]]) -> dict[str, str]:
    """The environment Kubernetes gives `container`: envFrom first, then env, in order.

    `secrets` maps a Secret's name to its values (the prod render ships no Secret)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        prefix = source.get("prefix", "")
        if "configMapRef" in source:
            data = config_map_data(objs, source["configMapRef"]["name"])
        else:
            data = secrets[source["secretRef"]["name"]]
        env.update({prefix + k: v for k, v in data.items()})
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = str(var["value"])
            continue
        ref = var["valueFrom"]
        if "secretKeyRef" in ref:
            env[var["name"]] = secrets[ref["secretKeyRef"]["name"]][ref["secretKeyRef"]["key"]]
        elif "configMapKeyRef" in ref:
            env[var["name"]] = config_map_data(objs, ref["configMapKeyRef"]["name"])[ref["configMapKeyRef"]["key"]]
        elif "resourceFieldRef" in ref:
            env[var["name"]] = _resource_value(container, ref["resourceFieldRef"])
        else:
            raise AssertionError(f"{var['name']}: unsupported valueFrom {ref}")
    return env


def _resource_value(container: Obj, field: Obj) -> str:
    kind, _, resource = field["resource"].partition(".")
    raw = str(container["resources"][kind][resource])
    if resource == "memory":  # bytes / divisor, rounded up, as Kubernetes does
        return str(math.ceil(quantity(raw) / quantity(str(field.get("divisor", "1")))))
    assert resource == "cpu" and str(field.get("divisor", "1")) == "1", f"unsupported resourceFieldRef {field}"
    cores = float(raw[:-1]) / 1000 if raw.endswith("m") else float(raw)
    return str(max(1, math.ceil(cores)))  # Kubernetes rounds up to whole cores (divisor 1)


_SUFFIXES = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def quantity(raw: str) -> float:
    """A Kubernetes memory quantity (`2Gi`, `1536Mi`, `512M`, `1`) in bytes."""
    for suffix, factor in sorted(_SUFFIXES.items(), key=lambda kv: -len(kv[0])):
        if raw.endswith(suffix):
            return float(raw[: -len(suffix)]) * factor
    return float(raw)


def roles_of(workload: Obj) -> set[str]:
    """The Skipper roles the workload's container runs (`--role=all` is every role)."""
    args = [a.split("=", 1)[1] for a in skipper_container(workload).get("args", []) if a.startswith("--role=")]
    return set(ROLES) if args == ["all"] else set(",".join(args).split(","))


def secrets_of(objs: list[Obj]) -> dict[str, dict[str, str]]:
    """Secrets in the render (stringData/data decoded), else the documented example values."""
    found = {
        s["metadata"]["name"]: {
            **{k: base64.b64decode(v).decode() for k, v in s.get("data", {}).items()},
            **s.get("stringData", {}),
        }
        for s in find(objs, "Secret")
    }
    found.setdefault("skipper-credentials", secret_example())
    found.setdefault("skipper-auth", auth_example())
    return found


def auth_example() -> dict[str, str]:
    """The documented keys of the skipper-auth Secret (API keys file, signing key), with placeholder values."""
    return {key: path.read_text(encoding="utf-8") for key, path in AUTH_EXAMPLES.items()}


def secret_volumes(workload: Obj, container: Obj) -> dict[str, tuple[str, dict[str, str]]]:
    """mountPath -> (Secret name, {file name in the mount: Secret key}) for every Secret volume the container mounts."""
    volumes = {v["name"]: v["secret"] for v in pod_spec(workload).get("volumes", []) if "secret" in v}
    return {m["mountPath"]: (volumes[m["name"]]["secretName"],
                             {i["path"]: i["key"] for i in volumes[m["name"]].get("items", [])})
            for m in container.get("volumeMounts", []) if m["name"] in volumes}


def named_port(container: Obj, port: int | str) -> int:
    if isinstance(port, int):
        return port
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
    assert port in ports, f"{container['name']}: probe port {port!r} is not a named container port"
    return int(ports[port])


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def pod_labels(workload: Obj) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


# --------------------------------------------------------------------------------------------
# every target
# --------------------------------------------------------------------------------------------
@pytest.fixture(params=sorted(TARGETS))
def target(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_every_target_renders_and_every_object_is_valid_against_the_kubernetes_schemas(target: str) -> None:
    objs = render(target)
    assert objs, f"{target} rendered nothing"
    problems = []
    for obj in objs:
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{obj['kind']}/{obj['metadata']['name']}: {getattr(exc, 'message', exc)}")
    assert not problems, f"{target} (Kubernetes {K8S_VERSION}):\n" + "\n".join(problems)


def test_everything_lives_in_the_skipper_namespace(target: str) -> None:
    objs = render(target)
    assert [o["metadata"]["name"] for o in find(objs, "Namespace")] == ["skipper"]
    stray = [f"{o['kind']}/{o['metadata']['name']}" for o in objs if o["kind"] != "Namespace"
             and o["metadata"].get("namespace") != "skipper"]
    assert not stray


def test_service_links_are_off_in_every_pod(target: str) -> None:
    # A Service named x would inject X_SERVICE_HOST... into every pod; an unknown SKIPPER_* var stops Skipper.
    bad = [w["metadata"]["name"] for w in workloads(render(target)) if pod_spec(w).get("enableServiceLinks") is not False]
    assert not bad, f"enableServiceLinks is not false in {bad}"


def test_no_service_name_would_inject_a_skipper_variable(target: str) -> None:
    names = [s["metadata"]["name"] for s in find(render(target), "Service")]
    assert not [n for n in names if n.upper().replace("-", "_").startswith("SKIPPER")], names


def test_credentials_reach_containers_only_through_secret_references(target: str) -> None:
    objs = render(target)
    for w, c in containers(objs):
        where = f"{w['metadata']['name']}/{c['name']}"
        for var in c.get("env", []):
            name = var["name"]
            looks_secret = name in SECRET_SETTINGS or any(s in name for s in ("PASS", "SECRET", "TOKEN", "API_KEY"))
            if looks_secret:
                assert "secretKeyRef" in var.get("valueFrom", {}), f"{where}: {name} must come from a Secret"
            value = str(var.get("value", ""))
            assert not ("://" in value and "@" in value), f"{where}: {name} holds a URL with credentials"
        for source in c.get("envFrom", []):
            if "configMapRef" in source:
                data = config_map_data(objs, source["configMapRef"]["name"])
                assert not SECRET_SETTINGS & data.keys(), f"{where}: credentials in a ConfigMap"
    for cm in find(objs, "ConfigMap"):
        for key, value in cm.get("data", {}).items():
            assert not ("://" in value and "@" in value), f"ConfigMap {cm['metadata']['name']}: {key} holds credentials"


def test_every_secret_reference_is_a_documented_key(target: str) -> None:
    objs = render(target)
    documented = {"skipper-credentials": secret_example(), "skipper-auth": auth_example()}
    in_render = {s["metadata"]["name"]: s for s in find(objs, "Secret")}
    for w, c in containers(objs):
        refs = [v["valueFrom"]["secretKeyRef"] for v in c.get("env", []) if "secretKeyRef" in v.get("valueFrom", {})]
        refs += [{"name": name, "key": key} for name, items in secret_volumes(w, c).values() for key in items.values()]
        for ref in refs:
            assert ref["name"] in documented, f"{w['metadata']['name']}: unknown Secret {ref['name']}"
            assert ref["key"] in documented[ref["name"]], f"{w['metadata']['name']}: undocumented key {ref['key']}"
            if ref["name"] in in_render:
                assert ref["key"] in in_render[ref["name"]].get("data", {})


def test_every_container_has_resource_requests_and_limits(target: str) -> None:
    for w, c in containers(render(target)):
        resources = c.get("resources", {})
        for kind in ("requests", "limits"):
            missing = {"cpu", "memory"} - set(resources.get(kind, {}))
            assert not missing, f"{w['metadata']['name']}/{c['name']}: no {kind} for {missing}"


def test_every_container_runs_locked_down(target: str) -> None:
    for w, c in containers(render(target)):
        where = f"{w['metadata']['name']}/{c['name']}"
        pod_sc = pod_spec(w).get("securityContext", {})
        sc = c.get("securityContext", {})
        assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, where
        assert sc.get("allowPrivilegeEscalation") is False, where
        assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
        assert sc.get("seccompProfile", pod_sc.get("seccompProfile")) == {"type": "RuntimeDefault"}, where
        assert "readOnlyRootFilesystem" in sc, f"{where}: say whether the root filesystem is read-only"


def test_skipper_containers_have_a_read_only_root_and_writable_tmp_and_data(target: str) -> None:
    objs = render(target)
    for name, w in skipper_workloads(objs).items():
        c = skipper_container(w)
        assert c["securityContext"]["readOnlyRootFilesystem"] is True, name
        settings = load_settings(environ=resolve_env(objs, c, secrets_of(objs)))
        mounts = {m["mountPath"] for m in c.get("volumeMounts", []) if not m.get("readOnly")}
        assert "/tmp" in mounts, f"{name}: TensorFlow and training need a writable /tmp"
        assert str(settings.data_dir) in mounts, f"{name}: SKIPPER_DATA_DIR {settings.data_dir} is not a volume"


def test_skipper_probes_check_health_and_ready_on_the_port_skipper_listens_on(target: str) -> None:
    objs = render(target)
    assert skipper_workloads(objs)
    for name, w in skipper_workloads(objs).items():
        c = skipper_container(w)
        settings = load_settings(environ=resolve_env(objs, c, secrets_of(objs)))
        assert settings.host == "0.0.0.0", f"{name}: Skipper must listen on every interface in a pod"
        expected = {"startupProbe": HEALTH, "livenessProbe": HEALTH, "readinessProbe": READY}
        for probe, path in expected.items():
            assert probe in c, f"{name}: no {probe}"
            get = c[probe]["httpGet"]
            assert get["path"] == path, f"{name}: {probe} on {get['path']}, want {path}"
            assert named_port(c, get["port"]) == settings.port, f"{name}: {probe} port is not SKIPPER_PORT"
        assert {p["containerPort"] for p in c["ports"]} == {settings.port}


def graceful_http_shutdown_s() -> int:
    """How long uvicorn lets in-flight HTTP requests finish after SIGTERM (set in skipper/__main__.py)."""
    found = re.search(r"timeout_graceful_shutdown=(\d+)", (ROOT / "skipper" / "__main__.py").read_text())
    assert found, "skipper/__main__.py no longer sets uvicorn's timeout_graceful_shutdown"
    return int(found.group(1))


def test_every_skipper_pod_terminates_gracefully(target: str) -> None:
    objs = render(target)
    services = find(objs, "Service")
    for name, w in skipper_workloads(objs).items():
        spec = pod_spec(w)
        grace = spec.get("terminationGracePeriodSeconds")
        behind_service = any(selects(s["spec"].get("selector", {}), pod_labels(w)) for s in services)
        pre_stop = skipper_container(w).get("lifecycle", {}).get("preStop")
        sleep = 0
        if behind_service:
            # Endpoints drain before SIGTERM: the pod keeps serving meanwhile.
            command = pre_stop["exec"]["command"] if pre_stop else None
            assert command and command[0] == "sleep", f"{name}: behind a Service but no preStop sleep"
            sleep = int(command[1])
            assert sleep >= 3, f"{name}: a {sleep}s preStop sleep is shorter than endpoint propagation"
        # The grace period counts from the preStop hook: it must cover the hook, uvicorn's graceful
        # shutdown of in-flight requests, and a few seconds to drain and close the bus.
        least = sleep + graceful_http_shutdown_s() + 5
        assert isinstance(grace, int) and grace >= least, f"{name}: terminationGracePeriodSeconds {grace} < {least}"


def test_prometheus_scrapes_the_route_skipper_serves_metrics_on(target: str) -> None:
    objs = render(target)
    app = create_app(settings=load_settings(environ={}), role="api", modules=[])
    served = {route.path for route in app.routes if isinstance(route, Route)}
    annotated = {}
    for name, w in skipper_workloads(objs).items():
        annotations = w["spec"]["template"]["metadata"].get("annotations", {})
        if annotations.get("prometheus.io/scrape") != "true":
            continue
        annotated[name] = annotations
        settings = load_settings(environ=resolve_env(objs, skipper_container(w), secrets_of(objs)))
        assert annotations["prometheus.io/path"] == f"{API_BASE}/metrics" in served, f"{name}: {annotations}"
        assert int(annotations["prometheus.io/port"]) == settings.port, f"{name}: {annotations}"
    if target != "dev":
        assert {"api", "server"} <= set(annotated), "the api and the servers export metrics worth scraping"


def test_every_server_feeds_its_memory_limit_to_the_memory_guard(target: str) -> None:
    objs = render(target)
    servers = {name: w for name, w in skipper_workloads(objs).items() if "server" in roles_of(w)}
    assert servers
    for name, w in servers.items():
        c = skipper_container(w)
        var = next((v for v in c.get("env", []) if v["name"] == "SKIPPER_SERVING__MEMORY_LIMIT_MB"), None)
        assert var is not None, f"{name}: the memory guard does not know the container's memory limit"
        ref = var["valueFrom"]["resourceFieldRef"]
        assert ref["resource"] == "limits.memory" and ref["divisor"] == "1Mi", f"{name}: {ref}"
        settings = load_settings(environ=resolve_env(objs, c, secrets_of(objs)))
        limit_mb = quantity(c["resources"]["limits"]["memory"]) / 2**20
        assert settings.serving.memory_limit_mb == limit_mb
        budget = MemoryGuard.from_settings(settings.serving).budget_mb
        assert budget == limit_mb - settings.serving.memory_headroom_mb
        # A model of 64 MiB of weights must be able to swap (its old version held while the new loads)
        assert budget is not None and Footprint(64).resident_mb + Footprint(64).peak_mb <= budget, f"{name}: {budget}"


def test_one_image_runs_every_role(target: str) -> None:
    objs = render(target)
    images = {skipper_container(w)["image"] for w in skipper_workloads(objs).values()}
    assert len(images) == 1, images
    for name, w in skipper_workloads(objs).items():
        c = skipper_container(w)
        assert "command" not in c, f"{name}: keep the image's ENTRYPOINT (python -m skipper)"
        roles = [a.split("=", 1)[1] for a in c.get("args", []) if a.startswith("--role=")]
        assert len(roles) == 1, f"{name}: args {c.get('args')} must name the role"


def test_every_configmap_holds_only_valid_skipper_settings(target: str) -> None:
    for cm in find(render(target), "ConfigMap"):
        data = cm.get("data", {})
        assert data and all(k.startswith("SKIPPER_") for k in data), cm["metadata"]["name"]
        load_settings(environ=data)  # raises ConfigError on any unknown key or bad value


def test_every_skipper_container_environment_loads_as_skipper_settings(target: str) -> None:
    objs = render(target)
    for name, w in skipper_workloads(objs).items():
        env = resolve_env(objs, skipper_container(w), secrets_of(objs))
        settings = load_settings(environ=env)  # the full environment, as strict Skipper reads it at start
        assert settings.namespace == "skipper", name


def test_services_select_existing_pods_on_named_ports(target: str) -> None:
    objs = render(target)
    for svc in find(objs, "Service"):
        name = svc["metadata"]["name"]
        matched = [w for w in workloads(objs) if selects(svc["spec"]["selector"], pod_labels(w))]
        assert len(matched) == 1, f"Service {name} selects {len(matched)} workloads"
        ports = {p.get("name") for c in pod_spec(matched[0])["containers"] for p in c.get("ports", [])}
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in ports, f"Service {name}: targetPort {port['targetPort']} not in {ports}"


def test_ingress_routes_the_api_prefix_to_the_api_service(target: str) -> None:
    objs = render(target)
    ingress = one(objs, "Ingress", "api")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    paths = [p for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]]
    # the API, and the inference protocols at the root path (Open Inference Protocol, TF Serving)
    assert [(p["path"], p["pathType"]) for p in paths] == [(API_BASE, "Prefix"), ("/v2", "Prefix"),
                                                           ("/v1/models", "Prefix")]
    assert len({str(p["backend"]) for p in paths}) == 1
    backend = paths[0]["backend"]["service"]
    svc = one(objs, "Service", backend["name"])
    assert backend["port"]["name"] in {p["name"] for p in svc["spec"]["ports"]}
    api_pods = [w for w in workloads(objs) if selects(svc["spec"]["selector"], pod_labels(w))]
    assert [skipper_container(w)["args"] for w in api_pods] in ([["--role=api"]], [["--role=all"]])


# --------------------------------------------------------------------------------------------
# the role split (base, prod)
# --------------------------------------------------------------------------------------------
@pytest.fixture(params=["base", "prod"])
def split(request: pytest.FixtureRequest) -> list[Obj]:
    return render(str(request.param))


def test_the_role_split_runs_api_trainer_and_server_with_their_replica_counts(split: list[Obj]) -> None:
    deployments = {d["metadata"]["name"]: d for d in find(split, "Deployment")}
    assert set(deployments) == {"api", "trainer", "server"}
    for name, replicas in {"api": 2, "trainer": 1, "server": 2}.items():
        d = deployments[name]
        assert d["spec"]["replicas"] == replicas, name
        assert skipper_container(d)["args"] == [f"--role={name}"]
        assert selects(d["spec"]["selector"]["matchLabels"], pod_labels(d))


def test_only_the_api_gets_the_database_and_every_role_the_broker(split: list[Obj]) -> None:
    for name, w in skipper_workloads(split).items():
        env = resolve_env(split, skipper_container(w), secrets_of(split))
        settings = load_settings(environ=env)
        assert settings.transport == "rabbitmq"
        assert settings.broker_url.startswith("amqp://"), name
        assert ("SKIPPER_DATABASE_URL" in env) == (name == "api"), name
        if name == "api":
            assert settings.resolved_database_url.startswith("postgresql+psycopg://")


def test_broker_and_database_urls_point_at_the_services_in_the_render(split: list[Obj]) -> None:
    from urllib.parse import urlsplit

    example = secret_example()
    for key, service, port_name in (("broker-url", "rabbitmq", "amqp"), ("database-url", "postgres", "postgres")):
        url = urlsplit(example[key])
        svc = one(split, "Service", service)
        assert url.hostname == service
        assert url.port == {p["name"]: p["port"] for p in svc["spec"]["ports"]}[port_name]


def test_the_api_keeps_its_artifacts_on_a_shared_volume(split: list[Obj]) -> None:
    api = one(split, "Deployment", "api")
    claims = [v["persistentVolumeClaim"]["claimName"] for v in pod_spec(api)["volumes"] if "persistentVolumeClaim" in v]
    assert claims == ["api-data"]
    pvc = one(split, "PersistentVolumeClaim", "api-data")
    # Two api replicas on possibly different nodes write the same artifact store.
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


def test_the_hpa_and_the_pdb_target_the_server_deployment(split: list[Obj]) -> None:
    server = one(split, "Deployment", "server")
    hpa = one(split, "HorizontalPodAutoscaler", "server")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "server"}
    assert hpa["spec"]["minReplicas"] == server["spec"]["replicas"] <= hpa["spec"]["maxReplicas"]
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Resource"] == ["cpu"]
    pdb = one(split, "PodDisruptionBudget", "server")
    assert selects(pdb["spec"]["selector"]["matchLabels"], pod_labels(server))
    others = [w for w in workloads(split) if w is not server]
    assert not [w for w in others if selects(pdb["spec"]["selector"]["matchLabels"], pod_labels(w))]
    assert pdb["spec"]["minAvailable"] < server["spec"]["replicas"]


def test_no_service_selects_the_server_pods(split: list[Obj]) -> None:
    server = one(split, "Deployment", "server")
    selecting = [s["metadata"]["name"] for s in find(split, "Service") if selects(s["spec"]["selector"], pod_labels(server))]
    assert not selecting, f"servers are reached through the broker, yet Services {selecting} select them"


def test_rabbitmq_and_postgres_run_as_stateful_sets_with_volumes(split: list[Obj]) -> None:
    for name in ("rabbitmq", "postgres"):
        sts = one(split, "StatefulSet", name)
        assert sts["spec"]["serviceName"] == name
        assert [t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]] == ["data"]
        c = pod_spec(sts)["containers"][0]
        assert "data" in {m["name"] for m in c["volumeMounts"]}
        assert "readinessProbe" in c and "livenessProbe" in c


def test_every_skipper_process_serving_the_api_on_every_interface_has_keys(target: str) -> None:
    # Bound to 0.0.0.0 without keys the api refuses to start (exit 2): each api pod mounts a keys file.
    objs = render(target)
    secrets = secrets_of(objs)
    for name, w in skipper_workloads(objs).items():
        c = skipper_container(w)
        env = resolve_env(objs, c, secrets)
        role = c["args"][0].split("=", 1)[1]
        if role not in ("api", "all"):
            assert "SKIPPER_AUTH__KEYS_FILE" not in env, f"{name} serves only open routes: it needs no keys"
            continue
        keys_file = Path(env["SKIPPER_AUTH__KEYS_FILE"])
        mounts = secret_volumes(w, c)
        assert str(keys_file.parent) in mounts, f"{name}: the keys file is not in a mounted Secret"
        secret, items = mounts[str(keys_file.parent)]
        entries = yaml.safe_load(secrets[secret][items[keys_file.name]])
        assert entries and all(set(e) == {"name", "sha256", "scopes"} for e in entries), name
        assert next(m for m in c["volumeMounts"] if m["mountPath"] == str(keys_file.parent))["readOnly"] is True


def test_the_registry_and_every_server_share_the_signing_key(split: list[Obj]) -> None:
    refs = {}
    for name in ("api", "server"):
        env = {v["name"]: v for v in skipper_container(one(split, "Deployment", name))["env"]}
        refs[name] = env["SKIPPER_BUS__SIGNING_KEY"]["valueFrom"]["secretKeyRef"]
    assert refs["api"] == refs["server"] == {"name": "skipper-auth", "key": "signing-key"}
    settings = load_settings(environ={"SKIPPER_BUS__SIGNING_KEY": auth_example()["signing-key"]})
    assert settings.bus.signing_key is not None


def test_the_placeholder_api_key_is_marked_and_matches_its_documented_key() -> None:
    text = AUTH_EXAMPLES["api-keys.yaml"].read_text(encoding="utf-8")
    assert "PLACEHOLDER" in text and "CHANGE-ME" in AUTH_EXAMPLES["signing-key"].read_text(encoding="utf-8")
    documented = next(line.split()[-1] for line in text.splitlines() if line.strip().startswith("#   sk_"))
    assert [e["sha256"] for e in yaml.safe_load(text)] == [hashlib.sha256(documented.encode()).hexdigest()]


def test_prod_ships_no_placeholder_credentials() -> None:
    prod = render("prod")
    assert not find(prod, "Secret"), "prod must use the Secret created outside git (docs/deploy.md)"
    assert "CHANGE-ME" not in yaml.safe_dump_all(prod)
    images = {c["image"] for _, c in containers(prod)}
    assert not [i for i in images if i.endswith(":latest") or ":" not in i.rsplit("/", 1)[-1]], images


def test_base_deploys_whole_with_placeholder_credentials_marked_as_such() -> None:
    base = render("base")
    secret = one(base, "Secret", "skipper-credentials")
    assert set(secret["data"]) == set(secret_example())
    assert "PLACEHOLDER" in SECRET_EXAMPLE.read_text(encoding="utf-8")
    assert all("CHANGE-ME" in v for k, v in secret_example().items() if "password" in k or "url" in k)


# --------------------------------------------------------------------------------------------
# dev: one all-in-one pod
# --------------------------------------------------------------------------------------------
def test_dev_runs_one_all_in_one_pod_on_the_memory_transport_without_broker_or_database() -> None:
    dev = render("dev")
    assert [d["metadata"]["name"] for d in find(dev, "Deployment")] == ["skipper"]
    assert not find(dev, "StatefulSet") and not find(dev, "HorizontalPodAutoscaler")
    assert [s["metadata"]["name"] for s in find(dev, "Secret")] == ["skipper-auth"]  # API keys: it binds 0.0.0.0
    d = one(dev, "Deployment", "skipper")
    assert d["spec"]["replicas"] == 1
    assert d["spec"]["strategy"]["type"] == "Recreate"  # never two writers on SQLite
    c = skipper_container(d)
    assert c["args"] == ["--role=all"]
    env = resolve_env(dev, c, secrets_of(dev))
    assert not SECRET_SETTINGS & env.keys()
    settings = load_settings(environ=env)
    assert settings.transport == "memory"
    assert settings.resolved_database_url.startswith("sqlite:///")
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod_spec(d)["volumes"]
              if "persistentVolumeClaim" in v}
    data_mount = [m for m in c["volumeMounts"] if m["mountPath"] == str(settings.data_dir)]
    assert [claims.get(m["name"]) for m in data_mount] == ["api-data"]
    assert one(dev, "PersistentVolumeClaim", "api-data")["spec"]["accessModes"] == ["ReadWriteOnce"]
