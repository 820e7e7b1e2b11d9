"""The dashboard in a real browser (Debian's chromium driven by playwright), against a live all-in-one Skipper.

A new user's path: `/` lands on the dashboard; train diabetes from its form with 5 epochs and watch the
progress bar reach 5/5 and the loss curve draw itself epoch by epoch (the page is open before the first
epoch: the task waits behind another until the page is up); see the new version; roll back to the
previous one with its button and see production change; predict from the Predict page. With API keys:
log in, a session cookie that is HttpOnly and SameSite=Strict, live pages on it, and only what the key may
do on offer. Each page's screenshot lands in test-artifacts/dashboard/.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.processes import ROW, Cluster, Role, eventually, http, train
from tests.services import CI

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard"
PAGE_BUDGET = 150_000  # bytes a page may weigh: its HTML, scripts and styles


def require_chromium() -> None:
    if not os.path.exists(CHROMIUM):
        if CI:
            raise RuntimeError(f"{CHROMIUM} is missing in CI (.ci/run installs the chromium package)")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")


@pytest.fixture
def skipper(tmp_path: Path) -> Iterator[Role]:
    require_chromium()
    cluster = Cluster(env={"SKIPPER_LOG_JSON": "false", "SKIPPER_SERVING__ANNOUNCE_S": "1"}, workdir=tmp_path)
    try:
        role = cluster.start("all", "skipper")
        first = train(role, "diabetes", epochs=2)  # v1: what the rollback goes back to
        assert first["status"] == "succeeded", first
        eventually(lambda: role.models().get("diabetes") == 1, what="diabetes v1 installed")
        yield role
    except BaseException:
        print(cluster.logs())
        raise
    finally:
        cluster.stop()


def weight(page: Any) -> int:
    """Bytes of the page's document and everything it loaded."""
    return int(page.evaluate("""() => performance.getEntriesByType('navigation')
        .concat(performance.getEntriesByType('resource')).reduce((n, e) => n + (e.decodedBodySize || 0), 0)"""))


def shoot(page: Any, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
    assert weight(page) < PAGE_BUDGET, f"{name} weighs {weight(page)} bytes"


@pytest.mark.tensorflow
def test_a_user_trains_watches_the_curve_rolls_back_and_predicts_in_a_browser(skipper: Role) -> None:
    from playwright.sync_api import expect, sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    root = f"http://127.0.0.1:{skipper.port}"
    # A long task trains first: the one the browser queues waits until its page is open.
    status, blocker = http("POST", f"{skipper.url}/workflows/wine/train", {"params": {"epochs": 500, "batch_size": 1}})
    assert status == 202, blocker
    eventually(lambda: http("GET", f"{skipper.url}/tasks/{blocker['task_id']}")[1]["status"] == "running",
               what="the blocking task running")
    dialogs: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.accept()))
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)

        # Given the root URL, the dashboard opens on its workflows
        page.goto(root + "/")
        assert page.url == f"{skipper.url}/ui/"
        card = page.locator("#workflow-diabetes")
        expect(card.get_by_role("heading", name="diabetes")).to_be_visible()
        shoot(page, "1-workflows")

        # A bad value is refused next to its field
        card.get_by_label("epochs").fill("0")
        card.get_by_role("button", name="Train diabetes").click()
        expect(page.locator("#diabetes-epochs-error")).to_contain_text("greater than or equal to 1")
        shoot(page, "2-train-form-error")
        assert [e for e in errors if "422" not in e] == []  # the refused form came back as a 422 page, as it should
        errors.clear()

        # When the user trains diabetes with 5 epochs from the form
        card = page.locator("#workflow-diabetes")
        card.get_by_label("epochs", exact=True).fill("5")
        card.get_by_label("batch size").fill("1")  # slow enough epochs to watch
        card.get_by_label("learning rate").fill("0.001")
        card.get_by_role("button", name="Train diabetes").click()
        page.wait_for_url(f"{skipper.url}/ui/tasks/*")
        task_id = page.url.rsplit("/", 1)[1]
        # Then the task's page is open before its first epoch
        live = page.locator("#live")
        assert live.get_attribute("data-initial-epoch") == "0"
        expect(page.locator("#status")).to_have_text("queued")
        expect(page.locator("#epochs")).to_have_text("0/5")
        assert http("DELETE", f"{skipper.url}/tasks/{blocker['task_id']}")[0] == 200  # now it may start

        # And the bar and the loss curve follow each epoch as it arrives
        page.wait_for_function("() => window.skipperDraws.length >= 2", timeout=120_000)
        expect(page.locator("#status")).to_have_text("running")
        shoot(page, "3-task-training")
        expect(page.locator("#epochs")).to_have_text("5/5", timeout=120_000)
        expect(page.locator("#status")).to_have_text("succeeded", timeout=60_000)
        assert page.evaluate("window.skipperDraws") == [1, 2, 3, 4, 5]
        assert page.locator("#loss-chart").get_attribute("data-points") == "5"
        assert page.locator("#loss-chart canvas").count() == 1
        expect(page.locator("#version-link")).to_have_text("diabetes v2", timeout=30_000)
        expect(page.locator("#event-log")).to_contain_text("task.progress")
        expect(page.locator("#event-log")).to_contain_text("model.installed", timeout=30_000)
        shoot(page, "4-task-done")

        # The tasks table lists it, finished, beside the cancelled one
        page.goto(f"{skipper.url}/ui/tasks")
        row = page.locator(f"tr[data-task='{task_id}']")
        expect(row).to_contain_text("succeeded")
        expect(row).to_contain_text("5/5")
        expect(page.locator(f"tr[data-task='{blocker['task_id']}']")).to_contain_text("cancelled")
        shoot(page, "5-tasks")
        # and follows what happens without a reload: a task queued elsewhere shows up, then its cancel
        status, other = http("POST", f"{skipper.url}/workflows/wine/train", {"params": {"epochs": 500, "batch_size": 1}})
        assert status == 202, other
        expect(page.locator(f"tr[data-task='{other['task_id']}']")).to_be_visible(timeout=10_000)
        assert http("DELETE", f"{skipper.url}/tasks/{other['task_id']}")[0] == 200
        expect(page.locator(f"tr[data-task='{other['task_id']}']")).to_contain_text("cancelled", timeout=10_000)

        # The models page shows the new version in production, and rolls back with a click
        page.goto(f"{skipper.url}/ui/models")
        model = page.locator("#model-diabetes")
        expect(model.locator("tr[data-version='2']")).to_contain_text("production")
        expect(page.locator("#replicas")).to_contain_text("diabetes v2", timeout=15_000)
        model.locator("tr[data-version='1']").get_by_role("button", name="Roll back").click()
        expect(model.locator("tr[data-version='1']")).to_contain_text("production")
        expect(model.locator("tr[data-version='2']")).not_to_contain_text("production")
        assert dialogs == ["Roll back diabetes to v1? Every server switches to it."]
        expect(page.locator("#replicas")).to_contain_text("diabetes v1", timeout=15_000)
        shoot(page, "6-models")

        # And the predict page predicts with the production version
        page.goto(f"{skipper.url}/ui/predict?model=diabetes")
        for i, value in enumerate(ROW, start=1):
            page.locator(f"#feature-{i}").fill(str(value))
        page.get_by_role("button", name="Predict").click()
        expect(page.locator("#prediction")).to_contain_text("by diabetes v1")
        float(page.locator("#prediction-value").inner_text().strip())
        shoot(page, "7-predict")
        assert errors == [], errors
        browser.close()
    assert http("GET", f"{skipper.url}/models/diabetes")[1]["production_version"] == 1


def test_with_api_keys_the_browser_logs_in_and_sees_only_what_its_key_may_do(tmp_path: Path) -> None:
    require_chromium()
    from playwright.sync_api import expect, sync_playwright

    from skipper.core.apikeys import new_key

    reader, reader_entry = new_key("reader", ["read"])
    operator, operator_entry = new_key("operator", ["read", "train"])
    keys_file = tmp_path / "keys.yaml"
    keys_file.write_text(json.dumps([reader_entry, operator_entry]))
    cluster = Cluster(env={"SKIPPER_AUTH__KEYS_FILE": str(keys_file), "SKIPPER_AUTH__SESSION_SECRET": "x" * 32},
                      workdir=tmp_path)
    SHOTS.mkdir(parents=True, exist_ok=True)
    try:
        api = cluster.start("api", "api")  # no trainer: a task stays queued until cancelled
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            page = context.new_page()
            page.on("dialog", lambda dialog: dialog.accept())
            # Given no session, the dashboard asks for a key
            page.goto(f"http://127.0.0.1:{api.port}/")
            expect(page.get_by_role("heading", name="Log in")).to_be_visible()
            page.get_by_label("API key").fill("sk_wrong")
            page.get_by_role("button", name="Log in").click()
            expect(page.locator("#login-error")).to_be_visible()
            shoot(page, "8-login")
            # When the operator logs in, the session cookie is HttpOnly and SameSite=Strict
            page.get_by_label("API key").fill(operator)
            page.get_by_role("button", name="Log in").click()
            expect(page.get_by_role("button", name="Train diabetes")).to_be_visible()
            [cookie] = [c for c in context.cookies() if c["name"] == "skipper_session"]
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and operator not in cookie["value"]
            # and the task page's live stream runs on that cookie: queued, then cancelled with its button
            page.locator("#workflow-diabetes").get_by_role("button", name="Train diabetes").click()
            page.wait_for_url(f"{api.url}/ui/tasks/*")
            expect(page.locator("#event-log")).to_contain_text("task.queued")
            page.get_by_role("button", name="Cancel task").click()
            expect(page.locator("#status")).to_have_text("cancelled", timeout=15_000)
            # Then a key that may only read is offered neither training nor cancelling
            page.get_by_role("button", name="Log out").click()
            page.get_by_label("API key").fill(reader)
            page.get_by_role("button", name="Log in").click()
            expect(page.locator("#workflow-diabetes")).to_contain_text("lacks the train scope")
            assert page.get_by_role("button", name="Train diabetes").count() == 0
            browser.close()
    except BaseException:
        print(cluster.logs())
        raise
    finally:
        cluster.stop()
