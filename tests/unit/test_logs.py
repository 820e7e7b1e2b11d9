"""Logs for people and for machines: one readable line on a terminal, JSON lines elsewhere (or as
`log.format` says), never a terminal colour code inside JSON; `python -m skipper` names the dashboard's
URL once it is ready."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

from skipper.core.logs import JsonFormatter, configure_logging
from tests.processes import ROOT, eventually, free_port, http

ANSI = "\x1b["


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def record(message: str, **extra: object) -> logging.LogRecord:
    entry = logging.LogRecord("skipper.training", logging.INFO, __file__, 1, message, (), None)
    entry.__dict__.update(extra)
    return entry


def test_json_lines_carry_no_terminal_colour_codes() -> None:
    # uvicorn logs its start with a coloured copy of the message in `color_message`
    line = JsonFormatter("api").format(record("Uvicorn running on \x1b[1mhttp://127.0.0.1:8000\x1b[0m",
                                              color_message="\x1b[32mUvicorn\x1b[0m running", f_loss="\x1b[31m0.1\x1b[0m"))
    entry = json.loads(line)
    assert ANSI not in line and "\\u001b" not in line
    assert entry["message"] == "Uvicorn running on http://127.0.0.1:8000" and entry["f_loss"] == "0.1"
    assert "color_message" not in entry


def test_auto_is_text_on_a_terminal_and_json_elsewhere(restore_logging: None) -> None:
    piped = io.StringIO()
    configure_logging("INFO", role="api", fmt="auto", stream=piped)
    logging.getLogger("skipper.training").info("task %s trained", "3f2c", extra={"correlation_id": "abc123"})
    assert json.loads(piped.getvalue())["message"] == "task 3f2c trained"

    primary, secondary = os.openpty()
    with os.fdopen(secondary, "w", buffering=1) as terminal:
        configure_logging("INFO", role="api", fmt="auto", stream=terminal)
        logging.getLogger("skipper.training").info("task %s trained", "3f2c", extra={"correlation_id": "abc123",
                                                                                    "f_epoch": 3})
        shown = os.read(primary, 4096).decode()
    os.close(primary)
    assert shown.count("\n") == 1 and not shown.lstrip().startswith("{")
    assert "task 3f2c trained" in shown and "epoch=3" in shown and "cid=abc123" in shown and "INFO" in shown

    text = io.StringIO()  # log.format: text, to a file: readable, and no colours where no terminal reads them
    configure_logging("INFO", role="api", fmt="text", stream=text)
    logging.getLogger("skipper.api").warning("careful")
    assert "WARNING" in text.getvalue() and "careful" in text.getvalue() and ANSI not in text.getvalue()


def test_run_on_a_terminal_prints_readable_lines_and_the_dashboard_url_once_ready(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "SKIPPER_DATA_DIR": str(tmp_path), "TERM": "xterm-256color"}
    child = pexpect.spawn(sys.executable, ["-m", "skipper", "--role=api", f"--port={port}"], cwd=str(ROOT), env=env,
                          encoding="utf-8", timeout=60)
    try:
        child.expect(r"dashboard ready at (http://\S+)")
        before = child.before
        url = child.match.group(1).replace("\x1b[0m", "")
        assert url == f"http://127.0.0.1:{port}/api/v1/skipper/ui/"
        assert http("GET", url)[0] == 200
        assert "skipper started" in before and '{"ts"' not in before
    finally:
        child.terminate(force=True)


def test_run_without_a_terminal_writes_json_lines(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "SKIPPER_DATA_DIR": str(tmp_path)}
    log = tmp_path / "out.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "skipper", "--role=api", f"--port={port}"], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
        try:
            eventually(lambda: "dashboard ready" in log.read_text(), timeout=60, what="ready")
        finally:
            proc.terminate()
            proc.wait(30)
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # every line is JSON
    assert ANSI not in log.read_text()
    ready = next(e for e in entries if e["message"].startswith("dashboard ready"))
    assert ready["url"] == f"http://127.0.0.1:{port}/api/v1/skipper/ui/"
