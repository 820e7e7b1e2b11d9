"""The `skipper` command in a real pseudo-terminal (pexpect): the live progress bar and Ctrl-C."""

from __future__ import annotations

import io
import os
import re
import sys
from pathlib import Path

import pexpect
import pytest

from tests.liveserver import LiveSkipper
from tests.processes import http

pytestmark = pytest.mark.tensorflow  # the live server trains

SKIPPER = Path(sys.executable).with_name("skipper")
QUEUED = r"task (?:\x1b\[[\d;]*m)*([0-9a-f]{32})(?:\x1b\[[\d;]*m)* queued"  # the id is bold on a terminal


def spawn(server: LiveSkipper, *args: str) -> tuple[pexpect.spawn, io.StringIO]:
    env = {**os.environ, "SKIPPER_URL": server.url, "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    child = pexpect.spawn(str(SKIPPER), list(args), env=env, encoding="utf-8", timeout=120, dimensions=(40, 140))
    screen = io.StringIO()
    child.logfile_read = screen
    return child, screen


def test_train_follow_shows_a_live_bar_up_to_5_of_5_then_the_metrics_and_the_version(skipper_server: LiveSkipper) -> None:
    child, screen = spawn(skipper_server, "train", "diabetes", "-p", "epochs=5", "--follow")
    child.expect(QUEUED)
    task_id = child.match.group(1)
    child.expect("5/5")
    child.expect("rmse")
    child.expect(r"version (\d+)")
    version = int(child.match.group(1))
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, screen.getvalue()[-2000:]
    shown = screen.getvalue()
    # The bar was redrawn in place (cursor control, not a line per epoch) and only moved forward to 5/5.
    assert "\x1b[" in shown and "epoch 1/5" not in shown
    counts = [int(n) for n in re.findall(r"(?<!\d)(\d)/5(?!\d)", shown)]
    assert counts and counts == sorted(counts) and counts[-1] == 5, counts
    assert re.search(r"loss \S*\d", shown) and "val_loss" in shown
    task = http("GET", f"{skipper_server.api}/tasks/{task_id}")[1]
    assert task["status"] == "succeeded" and task["result"]["model_version"] == version


def test_ctrl_c_asks_whether_to_cancel_no_follows_on_and_yes_cancels(skipper_server: LiveSkipper) -> None:
    child, screen = spawn(skipper_server, "train", "diabetes", "-p", "epochs=1000", "-p", "early_stopping=null", "--follow")
    child.expect(QUEUED)
    task_id = child.match.group(1)
    child.expect(r"\d+/1000")  # training, the bar moving
    child.sendintr()
    child.expect(rf"Cancel task {task_id}\?")
    child.sendline("n")
    child.expect("following again")
    child.expect(r"\d+/1000")
    child.sendintr()
    child.expect(rf"Cancel task {task_id}\?")
    child.sendline("y")
    child.expect(f"cancelled task {task_id}")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 1, screen.getvalue()[-2000:]
    assert http("GET", f"{skipper_server.api}/tasks/{task_id}")[1]["status"] == "cancelled"
