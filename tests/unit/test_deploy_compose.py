"""docker-compose.yml: the role split on one Docker host, checked against Skipper's settings and
routes (parsed, not run: there is no Docker engine in CI)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from dockerfile_parse import DockerfileParser

from skipper.core.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
SERVICES: dict[str, Any] = COMPOSE["services"]
ROLES = {"api": "api", "trainer": "trainer", "server": "server"}
_VARIABLE = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def interpolate(value: str) -> str:
    """Compose's ${VAR:-default}, with an empty .env (every default applies)."""
    return _VARIABLE.sub(lambda m: m.group(2) or "", value)


def environment(service: str) -> dict[str, str]:
    env = SERVICES[service].get("environment", {})
    assert isinstance(env, dict), f"{service}: write environment as a mapping"
    return {k: interpolate(str(v)) for k, v in env.items()}


def test_compose_runs_rabbitmq_postgres_and_the_three_roles() -> None:
    assert set(SERVICES) == {"rabbitmq", "postgres", *ROLES}
    for service, role in ROLES.items():
        assert SERVICES[service]["command"] == [f"--role={role}"], service
        assert SERVICES[service]["build"] == ".", f"{service}: every role runs the image of ./Dockerfile"
    assert len({interpolate(SERVICES[s]["image"]) for s in ROLES}) == 1, "one image for every role"


def test_two_servers_run_by_default() -> None:
    assert SERVICES["server"]["deploy"]["replicas"] == 2


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_every_service_has_a_healthcheck(service: str) -> None:
    check = SERVICES[service]["healthcheck"]
    assert check["test"][0] in {"CMD", "CMD-SHELL"}
    assert check.get("start_period"), f"{service}: give it time to start"


@pytest.mark.parametrize("service", sorted(ROLES))
def test_skipper_healthchecks_ask_the_port_skipper_listens_on(service: str) -> None:
    settings = load_settings(environ=environment(service))
    code = SERVICES[service]["healthcheck"]["test"][-1]
    assert f"http://127.0.0.1:{settings.port}/api/v1/skipper/ready" in code
    assert settings.host == "0.0.0.0"


@pytest.mark.parametrize("service", sorted(ROLES))
def test_skipper_environment_is_valid_skipper_settings(service: str) -> None:
    env = environment(service)
    settings = load_settings(environ=env)  # strict: an unknown SKIPPER_* key raises
    assert settings.transport == "rabbitmq"
    broker = urlsplit(settings.broker_url)
    assert (broker.hostname, broker.port) == ("rabbitmq", 5672)
    assert ("SKIPPER_DATABASE_URL" in env) == (service == "api"), "only the api opens the database"
    if service == "api":
        db = urlsplit(settings.resolved_database_url)
        assert (db.scheme, db.hostname, db.port) == ("postgresql+psycopg", "postgres", 5432)


def volume_targets(service: str) -> dict[str, str]:
    """Mount point -> volume type ("volume", "bind", "tmpfs") of a service's `volumes`, either syntax."""
    found = {}
    for volume in SERVICES[service].get("volumes", []):
        if isinstance(volume, dict):
            found[volume["target"]] = volume["type"]
            continue
        parts = str(volume).split(":")
        if len(parts) == 1:  # just a path: an anonymous volume
            found[parts[0]] = "volume"
        else:  # source:target[:mode]; a source that is a path is a bind mount
            found[parts[1]] = "bind" if parts[0].startswith((".", "/", "~")) else "volume"
    return found


@pytest.mark.parametrize("service", sorted(ROLES))
def test_skipper_containers_have_a_read_only_root_and_writable_tmp_and_data(service: str) -> None:
    spec = SERVICES[service]
    assert spec["read_only"] is True
    data_dir = str(load_settings(environ=environment(service)).data_dir)
    writable = set(spec.get("tmpfs", [])) | set(volume_targets(service))
    assert {"/tmp", data_dir} <= writable, service


def dockerfile_data_dir_owner() -> tuple[str, str]:
    """(the directory SKIPPER_DATA_DIR names in the image, the uid the image runs as), checked to be its owner."""
    parser = DockerfileParser(path=str(ROOT / "Dockerfile"))
    stages: list[list[dict[str, str]]] = []
    for instruction in parser.structure:
        if instruction["instruction"] == "FROM":
            stages.append([])
        if instruction["instruction"] in ("FROM", "ENV", "RUN", "USER"):
            stages[-1].append(instruction)
    # The default target is the last stage; it inherits what the stages it is built FROM set.
    names = {stage[0]["value"].split()[-1]: n for n, stage in enumerate(stages) if " AS " in stage[0]["value"].upper()}
    chain, n = [], len(stages) - 1
    while n is not None:
        chain.insert(0, stages[n])
        n = names.get(stages[n][0]["value"].split()[0])
    runtime = [i for stage in chain for i in stage]
    text = "\n".join(i["value"] for i in runtime)
    data_dir = re.search(r"SKIPPER_DATA_DIR=(\S+)", text)
    user = [i["value"] for i in runtime if i["instruction"] == "USER"]
    assert data_dir and user, "the runtime stage sets SKIPPER_DATA_DIR and a USER"
    uid = user[-1].split(":")[0]
    assert re.search(rf"chown {uid}(:\d+)? {re.escape(data_dir.group(1))}", text), "the image's data dir is not the user's"
    return data_dir.group(1), uid


@pytest.mark.parametrize("service", sorted(ROLES))
def test_the_data_dir_is_a_volume_the_non_root_user_can_write_never_a_tmpfs(service: str) -> None:
    # Under runc (Docker's default runtime) a tmpfs mounts root:root 0755 whatever the image's
    # directory was, and the non-root process cannot write its model cache or artifacts; a new
    # (named or anonymous) volume starts as a copy of the image's directory, owned by the user.
    data_dir, _uid = dockerfile_data_dir_owner()
    assert str(load_settings(environ=environment(service)).data_dir) == data_dir
    assert data_dir not in SERVICES[service].get("tmpfs", []), f"{service}: {data_dir} on a tmpfs"
    assert volume_targets(service).get(data_dir) == "volume", f"{service}: {data_dir} is not a volume"
    assert "user" not in SERVICES[service], f"{service}: run as the image's user, who owns {data_dir}"


def test_roles_start_only_after_what_they_need_is_healthy() -> None:
    needs = {"api": {"rabbitmq", "postgres"}, "trainer": {"rabbitmq", "api"}, "server": {"rabbitmq", "api"}}
    for service, wanted in needs.items():
        depends = SERVICES[service]["depends_on"]
        assert set(depends) == wanted, service
        assert {d["condition"] for d in depends.values()} == {"service_healthy"}, service


def test_credentials_come_from_variables_not_from_the_file() -> None:
    # Each password is a ${VARIABLE:-dev default}: a .env file on the host replaces it.
    for name, spec in SERVICES.items():
        for key, value in spec.get("environment", {}).items():
            if "PASS" in key or (key.endswith("_URL") and "@" in str(value)):
                assert "${" in str(value), f"{name}: {key} is hard-coded"
                assert "dev-only" in str(value) or "PASSWORD" in str(value), f"{name}: {key}"


def test_the_api_keeps_its_artifacts_and_the_stateful_services_their_data_on_volumes() -> None:
    assert set(COMPOSE["volumes"]) == {"rabbitmq-data", "postgres-data", "api-data"}
    assert "api-data:/var/lib/skipper" in SERVICES["api"]["volumes"]
    assert SERVICES["api"]["ports"] == ["8000:8000"]


def test_the_api_reads_its_keys_from_a_compose_secret_and_every_role_shares_the_signing_key() -> None:
    # The api binds 0.0.0.0: without keys it refuses to start (docs/security.md).
    api = environment("api")
    assert SERVICES["api"]["secrets"] == ["skipper-api-keys"]
    assert api["SKIPPER_AUTH__KEYS_FILE"] == "/run/secrets/skipper-api-keys"
    source = Path(interpolate(COMPOSE["secrets"]["skipper-api-keys"]["file"]))
    entries = yaml.safe_load((ROOT / source).read_text(encoding="utf-8"))
    settings = load_settings(environ={**api, "SKIPPER_AUTH__KEYS_FILE": str(ROOT / source)})
    from skipper.core.auth import configured_keys

    assert [k.name for k in configured_keys(settings)] == [e["name"] for e in entries] == ["placeholder-admin"]
    assert "${SKIPPER_API_KEYS_FILE" in COMPOSE["secrets"]["skipper-api-keys"]["file"], "replaceable from .env"
    keys = {environment(s)["SKIPPER_BUS__SIGNING_KEY"] for s in ("api", "server")}
    assert len(keys) == 1 and "dev-only" in next(iter(keys))
    assert "${SKIPPER_SIGNING_KEY" in str(SERVICES["api"]["environment"]["SKIPPER_BUS__SIGNING_KEY"])
    for service in ("trainer", "server"):
        assert "SKIPPER_AUTH__KEYS_FILE" not in environment(service), f"{service} serves only open routes"
