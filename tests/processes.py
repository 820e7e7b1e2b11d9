"""Starting Skipper roles as real processes for multi-process tests."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from tests.services import POSTGRES_URL

ROOT = Path(__file__).resolve().parents[1]
BASE = "/api/v1/skipper"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http(method: str, url: str, body: Any = None, timeout: float = 30) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            status = resp.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw


def eventually(check: Any, timeout: float = 60, interval: float = 0.25, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (OSError, KeyError, ValueError) as exc:
            last = exc
        time.sleep(interval)
    raise AssertionError(f"{what} not reached within {timeout}s (last: {last!r})")


@dataclass
class Role:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{BASE}"

    def ready(self) -> dict[str, Any]:
        status, body = http("GET", f"{self.url}/ready", timeout=5)
        return body if status == 200 and isinstance(body, dict) else {}

    def models(self) -> dict[str, int]:
        return dict(self.ready().get("models", {}))

    def metric(self, name: str) -> float:
        """A sample from this process's /metrics (0 when absent), e.g. `skipper_served_predictions_total{model="m"}`."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as resp:
            for line in resp.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.rsplit(" ", 1)[1])
        return 0.0

    def maps(self, fragment: str) -> bool:
        """Whether a file whose path holds `fragment` is mapped into this process (Linux's /proc/<pid>/maps)."""
        return fragment in Path(f"/proc/{self.proc.pid}/maps").read_text()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


@dataclass
class Cluster:
    """Processes of one deployment: a namespace on the broker, a schema in PostgreSQL, a temp data dir."""

    env: dict[str, str]
    workdir: Path
    roles: list[Role] = field(default_factory=list)

    def start(self, role: str, name: str | None = None, extra_env: dict[str, str] | None = None) -> Role:
        name = name or f"{role}-{len(self.roles)}"
        port = free_port()
        log = self.workdir / f"{name}.log"
        # api replicas share one artifact store (a ReadWriteMany volume in k8s); other roles keep their own dir
        data_dir = self.workdir / ("api-data" if role == "api" else name)
        env = {**os.environ, **self.env, "SKIPPER_DATA_DIR": str(data_dir), **(extra_env or {})}
        proc = subprocess.Popen([sys.executable, "-m", "skipper", f"--role={role}", f"--port={port}"], cwd=ROOT,
                                env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
        started = Role(name, proc, port, log)
        self.roles.append(started)
        try:
            eventually(lambda: proc.poll() is None and http("GET", f"{started.url}/health", timeout=2)[0] == 200,
                       timeout=90, what=f"{name} health")
        except AssertionError:
            raise AssertionError(f"{name} did not start:\n{started.tail()}") from None
        return started

    def stop(self) -> None:
        for role in self.roles:
            if role.proc.poll() is None:
                role.proc.send_signal(signal.SIGTERM)
        for role in self.roles:
            try:
                role.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                role.proc.kill()

    def logs(self) -> str:
        return "\n".join(f"--- {r.name}\n{r.tail()}" for r in self.roles)


@contextlib.contextmanager
def postgres_schema(application_name: str | None = None) -> Iterator[str]:
    """A fresh PostgreSQL schema; yields the database URL that uses it (naming its sessions `application_name`)."""
    schema = f"skipper_mp_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    named = f"&application_name={application_name}" if application_name else ""
    try:
        yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}{named}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def train(api: Role, workflow: str = "diabetes", timeout: float = 180, **params: Any) -> dict[str, Any]:
    status, body = http("POST", f"{api.url}/workflows/{workflow}/train", {"params": params})
    assert status == 202, body
    task_id = body["task_id"]

    def finished() -> dict[str, Any] | None:
        task = http("GET", f"{api.url}/tasks/{task_id}")[1]
        return task if task["status"] in ("succeeded", "failed", "cancelled") else None

    task: dict[str, Any] = eventually(finished, timeout=timeout, what=f"task {task_id} finished")
    return task


ROW = [0.038, 0.050, 0.061, 0.021, -0.044, -0.034, -0.043, -0.002, 0.019, -0.017]
