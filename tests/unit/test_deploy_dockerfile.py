"""The image: the Dockerfile (parsed, not built: no Docker engine in CI), its build context and
the dependency lock that the image and CI both install from."""

from __future__ import annotations

import importlib.metadata
import json
import re
import shlex
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from dockerfile_parse import DockerfileParser
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from skipper.core.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
LOCK = ROOT / "requirements.lock"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
HEALTH = "/api/v1/skipper/health"
BASE_IMAGE = "python:3.11-slim"

Instruction = dict[str, Any]


def global_args() -> dict[str, str]:
    """The ARGs declared before the first FROM, with their defaults."""
    args: dict[str, str] = {}
    for ins in DockerfileParser(path=str(DOCKERFILE)).structure:
        if ins["instruction"] == "FROM":
            break
        if ins["instruction"] == "ARG":
            name, _, default = ins["value"].partition("=")
            args[name.strip()] = default.strip()
    return args


def stages() -> list[list[Instruction]]:
    """The Dockerfile's instructions grouped by stage (comments dropped)."""
    parser = DockerfileParser(path=str(DOCKERFILE))
    result: list[list[Instruction]] = []
    for ins in parser.structure:
        if ins["instruction"] == "FROM":
            result.append([])
        if ins["instruction"] != "COMMENT":
            if not result:
                assert ins["instruction"] == "ARG", "only ARGs may come before the first FROM"
                continue
            result[-1].append(ins)
    return result


def stage_name(stage: list[Instruction]) -> str:
    words = values(stage, "FROM")[0].split()
    return words[2] if len(words) == 3 and words[1].lower() == "as" else ""


def with_ancestors(stage: list[Instruction]) -> list[Instruction]:
    """A stage's instructions after those of the earlier stage it starts FROM (what the image inherits)."""
    parent = values(stage, "FROM")[0].split()[0]
    earlier = {stage_name(s): s for s in stages()}
    if parent in earlier:
        return [i for i in with_ancestors(earlier[parent]) if i["instruction"] != "FROM"] + stage
    return stage


def named_stage(name: str) -> list[Instruction]:
    (found,) = [s for s in stages() if stage_name(s) == name]
    return with_ancestors(found)


def final_stage() -> list[Instruction]:
    """The default target (the last stage) with what it inherits."""
    return with_ancestors(stages()[-1])


def values(stage: list[Instruction], instruction: str) -> list[str]:
    return [i["value"] for i in stage if i["instruction"] == instruction]


def env_of(stage: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for value in values(stage, "ENV"):
        for item in shlex.split(value):
            key, _, val = item.partition("=")
            env[key] = val
    return env


# --------------------------------------------------------------------------------------------
# the Dockerfile
# --------------------------------------------------------------------------------------------
def test_every_stage_starts_from_the_slim_python_311_image() -> None:
    # By default: the BASE_IMAGE argument (a local Debian bookworm base in the image test) or an earlier stage.
    assert global_args() == {"BASE_IMAGE": BASE_IMAGE}
    earlier: set[str] = set()
    for stage in stages():
        parent = values(stage, "FROM")[0].split()[0]
        assert parent == "${BASE_IMAGE}" or parent in earlier, parent
        earlier.add(stage_name(stage))


def test_the_api_target_has_no_tensorflow_and_runs_the_api_role() -> None:
    builder = next(s for s in stages() if stage_name(s) == "api-builder")
    (install,) = [r for r in values(builder, "RUN") if "requirements.in" in r and "pip install" in r]
    assert "startswith(('tensorflow', 'keras', 'scikit-learn'))" in install and "-c requirements.lock" in install
    api = named_stage("api")
    assert values(api, "COPY") == ["--from=api-builder /opt/venv /opt/venv"]
    assert json.loads(values(api, "CMD")[-1]) == ["--role=api"]
    assert values(api, "USER")[-1] == "10001:10001"


def test_the_build_is_multi_stage_and_the_runtime_copies_the_builders_venv() -> None:
    assert len(stages()) >= 2
    assert named_stage("builder"), "a stage named builder installs the venv"
    copies = values(final_stage(), "COPY")
    assert "--from=builder /opt/venv /opt/venv" in copies
    assert not [v for v in values(final_stage(), "RUN") if "pip install" in v], "install in the builder only"


def test_the_final_stage_runs_as_a_numeric_non_root_user() -> None:
    users = values(final_stage(), "USER")
    assert users, "no USER in the final stage: the container would run as root"
    uid = users[-1].split(":")[0]
    # Numeric, so that Kubernetes' runAsNonRoot can check it without /etc/passwd.
    assert uid.isdigit() and int(uid) != 0, users[-1]
    pod_uid = 10001  # the runAsUser of every Skipper pod in k8s/
    assert int(uid) == pod_uid


def test_the_entrypoint_is_python_dash_m_skipper_and_the_role_is_the_argument() -> None:
    entrypoints = values(final_stage(), "ENTRYPOINT")
    assert [json.loads(e) for e in entrypoints] == [["python", "-m", "skipper"]]
    cmd = json.loads(values(final_stage(), "CMD")[-1])
    assert cmd == ["--role=all"]


def test_the_image_exposes_the_port_skipper_listens_on() -> None:
    assert values(final_stage(), "EXPOSE") == ["8000"]
    env = env_of(final_stage())
    settings = load_settings(environ={k: v for k, v in env.items() if k.startswith("SKIPPER_")})
    assert settings.port == 8000
    assert settings.host == "0.0.0.0"


def test_the_healthcheck_asks_skipper_for_health_without_curl() -> None:
    (check,) = values(final_stage(), "HEALTHCHECK")
    _, _, command = check.partition("CMD")
    argv = json.loads(command.strip())
    assert argv[:2] == ["python", "-c"]
    assert HEALTH in argv[2] and "urllib.request" in argv[2]
    compile(argv[2], "HEALTHCHECK", "exec")  # the probe is valid Python
    assert "SKIPPER_PORT" in argv[2], "the healthcheck must follow the configured port"


def test_dependencies_are_installed_from_pyproject_pinned_by_requirements_lock() -> None:
    builder = named_stage("builder")
    assert any("requirements.lock" in c.split() for c in values(builder, "COPY"))
    installs = [r for r in values(builder, "RUN") if "pip install" in r and "requirements.in" in r]
    assert len(installs) == 1
    assert re.search(r"(-c|--constraint)\s+requirements\.lock", installs[0]), installs[0]
    assert "['project']['dependencies']" in installs[0], "install what pyproject's [project] names"
    assert "[dev]" not in installs[0]


def test_skipper_is_installed_as_a_package_and_the_image_has_no_source_tree() -> None:
    builder = named_stage("builder")
    runs = values(builder, "RUN")
    (install,) = [r for r in runs if re.search(r"pip install [^&]*--no-deps \.(\s|$)", r)]
    assert " -e " not in install and "--editable" not in install, "a wheel install, not an editable one"
    assert runs.index(install) > next(i for i, r in enumerate(runs) if "requirements.in" in r), "dependencies first"
    copied = " ".join(values(builder, "COPY"))
    for source in ("setup.py", "config/", "skipper/"):
        assert source in copied.split(), f"the builder needs {source} to build the package"
    final = final_stage()
    # Only the venv reaches the runtime: the config is package data (see setup.py), found without PYTHONPATH.
    assert values(final, "COPY") == ["--from=builder /opt/venv /opt/venv"]
    assert "PYTHONPATH" not in env_of(final)
    assert values(final, "WORKDIR")[-1] == env_of(final)["SKIPPER_DATA_DIR"]


def test_the_image_data_dir_is_writable_by_its_user() -> None:
    final = final_stage()
    data_dir = env_of(final)["SKIPPER_DATA_DIR"]
    setup = " ".join(values(final, "RUN"))
    assert f"mkdir -p {data_dir}" in setup and f"chown 10001:10001 {data_dir}" in setup


# --------------------------------------------------------------------------------------------
# the build context
# --------------------------------------------------------------------------------------------
def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def ignored(path: str) -> bool:
    """Docker's rule: the last pattern matching the path (or a directory above it) wins."""
    lines = [ln.strip() for ln in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()]
    patterns = [ln for ln in lines if ln and not ln.startswith("#")]
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _pattern_regex(pattern.lstrip("!").strip("/"))
        if any(regex.match(c) for c in candidates):
            result = not negate
    return result


@pytest.mark.parametrize(
    "path",
    [
        "tests/test_deploy_dockerfile.py", ".venv/bin/python", ".git/HEAD", "skipper-data/skipper.db",
        "benchmarks/predict.py", "k8s/base/secret.example.env", "skipper/core/__pycache__/bus.cpython-311.pyc",
        "docker-compose.yml", "Dockerfile",
    ],
)
def test_the_build_context_leaves_out(path: str) -> None:
    assert ignored(path)


def test_the_build_context_holds_everything_the_dockerfile_copies() -> None:
    sources = []
    for stage in stages():
        for copy in values(stage, "COPY"):
            words = [w for w in copy.split() if not w.startswith("--")]
            if not copy.startswith("--from"):
                sources += words[:-1]
    assert sources
    for source in sources:
        root = ROOT / source
        files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
        assert files, f"COPY {source}: nothing there"
        kept = [f for f in files if not ignored(f.relative_to(ROOT).as_posix())]
        assert kept == files, f"COPY {source}: .dockerignore drops {set(files) - set(kept)}"


# --------------------------------------------------------------------------------------------
# requirements.lock: one pinned set for the image and for CI
# --------------------------------------------------------------------------------------------
def lock() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in LOCK.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep and version and " " not in line, f"requirements.lock: {line!r} is not a name==version pin"
        key = canonicalize_name(name)
        assert key not in pins, f"requirements.lock pins {name} twice"
        pins[key] = version
    return pins


def closure(requirements: list[str]) -> set[str]:
    """Every distribution the requirements pull in, as installed here (extras and markers applied)."""
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        key = (canonicalize_name(req.name), frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        for raw in importlib.metadata.distribution(req.name).requires or []:
            sub = Requirement(raw)
            extras = ["", *sorted(req.extras)]
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in extras):
                todo.append(sub)
    return {name for name, _ in seen}


def test_the_lock_pins_every_pyproject_dependency_within_its_range() -> None:
    pins = lock()
    declared = PYPROJECT["project"]["dependencies"] + PYPROJECT["project"]["optional-dependencies"]["dev"]
    for raw in declared:
        req = Requirement(raw)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is in pyproject.toml but not pinned in requirements.lock"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} is outside {req.specifier}"


def test_the_lock_holds_the_whole_resolved_dependency_tree() -> None:
    pins = lock()
    runtime = closure(PYPROJECT["project"]["dependencies"])
    dev = closure(PYPROJECT["project"]["optional-dependencies"]["dev"])
    missing = sorted((runtime | dev) - pins.keys())
    assert not missing, f"requirements.lock lacks {missing}: regenerate it (see its header)"
    stale = sorted(pins.keys() - runtime - dev)
    assert not stale, f"requirements.lock pins {stale}, which nothing in pyproject.toml needs"
    assert "skipper" not in pins, "the lock pins dependencies, not Skipper itself"


def test_the_environment_the_tests_run_in_is_the_locked_one() -> None:
    pins = lock()
    runtime_and_dev = closure(PYPROJECT["project"]["dependencies"] + PYPROJECT["project"]["optional-dependencies"]["dev"])
    wrong = {
        name: (pins[name], importlib.metadata.version(name))
        for name in sorted(runtime_and_dev & pins.keys())
        if importlib.metadata.version(name) != pins[name]
    }
    assert not wrong, f"installed versions differ from requirements.lock (locked, installed): {wrong}"
