"""A live all-in-one Skipper (`python -m skipper`, a real process on a free port) for client and CLI tests."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.processes import Cluster, Role, eventually, http, train

FEATURES = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]


@dataclass
class LiveSkipper:
    """A running server with `diabetes` trained once (version `version`, by task `task_id`)."""

    role: Role
    task_id: str
    version: int

    @property
    def url(self) -> str:
        """What a user passes as --url: the server's address without the API path."""
        return f"http://127.0.0.1:{self.role.port}"

    @property
    def api(self) -> str:
        return self.role.url

    def get(self, path: str) -> Any:
        status, body = http("GET", self.api + path)
        assert status == 200, (status, body)
        return body

    def logs(self) -> str:
        return self.role.tail(60)


@contextlib.contextmanager
def live_skipper(workdir: Path, env: dict[str, str] | None = None, epochs: int = 2) -> Iterator[LiveSkipper]:
    """Start `python -m skipper` (memory transport, SQLite in `workdir`), train diabetes, yield it, stop it."""
    cluster = Cluster(env={"SKIPPER_LOG_JSON": "false", **(env or {})}, workdir=workdir)
    try:
        role = cluster.start("all", "skipper")
        task = train(role, "diabetes", epochs=epochs)
        assert task["status"] == "succeeded", task
        version = task["result"]["model_version"]
        eventually(lambda: role.models().get("diabetes") == version, what="diabetes installed")
        yield LiveSkipper(role, task["task_id"], version)
    finally:
        cluster.stop()
