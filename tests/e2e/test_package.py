"""The installable package: a wheel built from the sources the image copies, installed into a fresh venv
outside the source tree, serves, trains and predicts through the `skipper` command (slow: ~1-2 minutes)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.processes import ROW, eventually, free_port, http

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ["pyproject.toml", "setup.py", "README.md", "config", "skipper"]  # what the Dockerfile's builder copies


def build_wheel(tmp: Path, extra: dict[str, str] | None = None) -> Path:
    """A wheel built from a copy of the package sources (plus `extra` files), as `pip install .` builds it."""
    src = tmp / "src"
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            src.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    for path, text in (extra or {}).items():
        (src / path).parent.mkdir(parents=True, exist_ok=True)
        (src / path).write_text(text)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp / "dist"), str(src)],
                   check=True, cwd=tmp)
    (wheel,) = (tmp / "dist").glob("skipper-*.whl")
    return wheel


def venv(path: Path, *install: str) -> Path:
    """A fresh venv at `path` with `install` (pip arguments) installed; returns its bin directory."""
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    pip = [str(path / "bin" / "python"), "-m", "pip", "install", "-q", "--no-compile", "--disable-pip-version-check"]
    subprocess.run([*pip, *install], check=True, cwd=path)
    return path / "bin"


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without this checkout on the path or Skipper settings of the developer's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SKIPPER_", "PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(str(ROOT)))
    return {**env, **extra}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv (outside the source tree) with the wheel and its locked dependencies."""
    return venv(tmp_path_factory.mktemp("venv") / "venv", "-c", str(ROOT / "requirements.lock"), str(wheel))


def test_the_wheel_holds_the_package_its_default_config_and_nothing_else(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert "skipper/config/skipper.yaml" in names and "skipper/py.typed" in names
    assert "skipper/cli/app.py" in names and "skipper/client/sync.py" in names
    assert not [n for n in names if n.startswith(("tests/", "config/", "skipper/config/__")) or "__pycache__" in n]
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "skipper = skipper.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_web_assets_under_static_and_templates_ship_as_package_data(tmp_path: Path) -> None:
    assets = {"skipper/ui/__init__.py": "", "skipper/ui/static/js/app.js": "x", "skipper/ui/static/style.css": "x",
              "skipper/ui/templates/page.html": "<p>", "skipper/ui/templates/parts/row.html": "<tr>"}
    names = zipfile.ZipFile(build_wheel(tmp_path, assets)).namelist()
    assert set(assets) <= set(names)


def test_installed_wheel_serves_from_an_empty_directory_trains_and_predicts_with_the_cli(installed: Path, wheel: Path,
                                                                                         tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # SKIPPER_URL is the command's setting, not the server's: `skipper serve` must start with it set.
    env = clean_env(SKIPPER_URL=url, SKIPPER_LOG_JSON="false")
    where = subprocess.run([str(installed / "python"), "-c", "from skipper.core.settings import DEFAULTS_FILE as f; print(f)"],
                           cwd=empty, env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert where.startswith(str(installed.parent)) and where.endswith("site-packages/skipper/config/skipper.yaml"), where

    log = (tmp_path / "serve.log").open("wb")
    server = subprocess.Popen([str(installed / "skipper"), "serve", "--port", str(port)], cwd=empty, env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        eventually(lambda: server.poll() is None and http("GET", f"{url}/api/v1/skipper/health", timeout=2)[0] == 200,
                   timeout=120, what="skipper serve health")
        trained = subprocess.run([str(installed / "skipper"), "train", "diabetes", "-p", "epochs=2", "--follow"],
                                 cwd=empty, env=env, capture_output=True, text=True, timeout=300)
        assert trained.returncode == 0, (trained.stdout, trained.stderr)
        assert "epoch 2/2" in trained.stdout and trained.stdout.splitlines()[-1] == "version 1"
        predicted = subprocess.run([str(installed / "skipper"), "predict", "diabetes", json.dumps([ROW]), "--json"],
                                   cwd=empty, env=env, capture_output=True, text=True, timeout=60)
        assert predicted.returncode == 0, predicted.stderr
        body = json.loads(predicted.stdout)
        assert body["model_version"] == 1 and isinstance(body["predictions"][0], float)
        assert (empty / "skipper-data" / "skipper.db").is_file()  # the default data dir, relative to where it runs
        module = subprocess.run([str(installed / "python"), "-m", "skipper", "--help"], cwd=empty, env=env,
                                capture_output=True, text=True, check=True)
        assert "--role" in module.stdout

        # The client-only recipe of the README: the wheel without its dependencies, plus the client's own.
        light = venv(tmp_path / "light", "-c", str(ROOT / "requirements.lock"), "httpx", "httpx-sse", "typer", "rich",
                     "pyyaml")
        subprocess.run([str(light / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-compile", str(wheel)],
                       check=True, env=env)
        listed = subprocess.run([str(light / "skipper"), "workflows", "--json"], cwd=empty, env=env, capture_output=True,
                                text=True, timeout=60)
        assert listed.returncode == 0 and "diabetes" in {w["name"] for w in json.loads(listed.stdout)["workflows"]}
        assert subprocess.run([str(light / "python"), "-c", "import tensorflow"], capture_output=True).returncode != 0
    finally:
        server.terminate()
        server.wait(30)
        log.close()
    # A graceful stop: uvicorn finishes, then re-raises SIGTERM so the exit status says what stopped it.
    assert server.returncode in (0, -15), (server.returncode, (tmp_path / "serve.log").read_text()[-1500:])
    assert "Application shutdown complete" in (tmp_path / "serve.log").read_text()
