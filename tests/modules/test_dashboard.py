"""The dashboard over HTTP: with API keys, a login page that sets a signed HttpOnly SameSite=Strict session
cookie; forms that need a CSRF token; actions a key may not take are not offered; pages load nothing from
elsewhere and weigh under 150 KB; the vendored scripts ship with their licences."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from skipper.modules.api.dashboard import STATIC
from tests.apphelpers import running_skipper, scoped_keys

UI = "/api/v1/skipper/ui"
PAGE_BUDGET = 150_000


@pytest.fixture
async def keyed(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, str]]]:
    from skipper.core.apikeys import new_key

    keys, entries = scoped_keys()
    keys["operator"], entry = new_key("operator", ["read", "train"])  # pages need read; the train form, train
    entries.append(entry)
    async with running_skipper(tmp_path, frozenset({"api"}), auth={"keys": entries, "session_secret": "s" * 32}) as (c, _):
        c.base_url = httpx.URL("http://127.0.0.1")
        yield c, keys


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html
    return found.group(1)


async def log_in(client: httpx.AsyncClient, key: str) -> httpx.Response:
    page = await client.get(f"{UI}/login")
    return await client.post(f"{UI}/login", data={"csrf": csrf_of(page.text), "key": key, "next": f"{UI}/models"})


async def test_a_page_without_a_session_leads_to_the_login_page_and_a_key_opens_a_session(keyed: tuple) -> None:
    client, keys = keyed
    # Given no session, a page sends the browser to log in, and / goes to the dashboard
    assert (await client.get("/")).headers["location"] == f"{UI}/"
    away = await client.get(f"{UI}/tasks")
    assert away.status_code == 303 and away.headers["location"] == f"{UI}/login?next=%2Fapi%2Fv1%2Fskipper%2Fui%2Ftasks"
    # A wrong key is refused on the page
    wrong = await log_in(client, "sk_not_a_key")
    assert wrong.status_code == 401 and "not one this server knows" in wrong.text
    assert "skipper_session" not in client.cookies
    # When a key logs in
    response = await log_in(client, keys["read"])
    # Then it gets a signed, HttpOnly, SameSite=Strict cookie (never the key) and goes where it was going
    assert response.status_code == 303 and response.headers["location"] == f"{UI}/models"
    cookie = next(c for c in response.headers.get_list("set-cookie") if c.startswith("skipper_session="))
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict") and "Path=/api/v1/skipper" in cookie
    assert keys["read"] not in cookie
    page = await client.get(f"{UI}/tasks")
    assert page.status_code == 200 and "read-key" in page.text
    # and the cookie works for the API the pages use (JSON, the event stream's task check)
    assert (await client.get("/api/v1/skipper/tasks")).status_code == 200
    assert (await client.get("/api/v1/skipper/tasks/nosuchtask/stream")).status_code == 404
    # A forged or tampered cookie is no session
    client.cookies.set("skipper_session", cookie.split(";")[0].split("=", 1)[1][:-2] + "xx", path="/api/v1/skipper")
    assert (await client.get(f"{UI}/tasks")).status_code == 303


async def test_a_key_is_offered_only_the_actions_its_scopes_allow(keyed: tuple) -> None:
    client, keys = keyed
    await log_in(client, keys["read"])
    workflows = await client.get(f"{UI}/")
    assert workflows.status_code == 200
    assert "Train diabetes" not in workflows.text and "lacks the <code>train</code> scope" in workflows.text
    # the forms' routes refuse it all the same
    refused = await client.post(f"{UI}/workflows/diabetes/train", data={"csrf": csrf_of(workflows.text)})
    assert refused.status_code == 403
    await client.post(f"{UI}/logout", data={"csrf": csrf_of(workflows.text)})
    assert (await client.get(f"{UI}/")).status_code == 303  # logged out
    await log_in(client, keys["operator"])
    workflows = await client.get(f"{UI}/")
    assert "Train diabetes" in workflows.text and "operator" in workflows.text
    queued = await client.post(f"{UI}/workflows/diabetes/train", data={"csrf": csrf_of(workflows.text), "epochs": "2"})
    assert queued.status_code == 303 and queued.headers["location"].startswith(f"{UI}/tasks/")


async def test_a_form_without_this_browsers_csrf_token_is_refused(keyed: tuple) -> None:
    client, keys = keyed
    await log_in(client, keys["admin"])
    page = await client.get(f"{UI}/")
    real = csrf_of(page.text)
    for token in ["", "0" * 64, real[:-1] + ("1" if real.endswith("0") else "0")]:
        response = await client.post(f"{UI}/workflows/diabetes/train", data={"csrf": token, "epochs": "2"})
        assert response.status_code == 403 and "another site" in response.text
    # another browser (no nonce cookie) with a token copied from this page is refused too
    async with httpx.AsyncClient(transport=client._transport, base_url="http://127.0.0.1") as other:
        other.cookies.set("skipper_session", client.cookies["skipper_session"], path="/api/v1/skipper")
        response = await other.post(f"{UI}/workflows/diabetes/train", data={"csrf": csrf_of(page.text)})
        assert response.status_code == 403
    assert (await client.get("/api/v1/skipper/tasks")).json()["total"] == 0


async def test_login_goes_back_only_to_a_dashboard_page(keyed: tuple) -> None:
    client, keys = keyed
    page = await client.get(f"{UI}/login", params={"next": "https://evil.example/"})
    for target in ["https://evil.example/", "//evil.example/x", f"{UI}//evil.example", "/api/v1/skipper/tasks"]:
        response = await client.post(f"{UI}/login", data={"csrf": csrf_of(page.text), "key": keys["read"],
                                                          "next": target})
        assert response.headers["location"] == f"{UI}/", target


async def test_pages_load_nothing_from_elsewhere_and_each_weighs_under_150_kb(tmp_path: Path) -> None:
    async with running_skipper(tmp_path, frozenset({"api"})) as (client, _):
        client.base_url = httpx.URL("http://127.0.0.1")
        task_id = (await client.post("/api/v1/skipper/workflows/diabetes/train", json={})).json()["task_id"]
        for path in ["/", "/tasks", f"/tasks/{task_id}", "/models", "/predict"]:
            page = await client.get(UI + path)
            assert page.status_code == 200, (path, page.text)
            assert "default-src 'none'" in page.headers["content-security-policy"]
            links = re.findall(r'(?:src|href)="([^"]+)"', page.text)
            assert not [link for link in links if re.match(r"^(https?:)?//", link)], links
            assets = [link for link in links if link.startswith(f"{UI}/static/")]
            weight = len(page.content)
            for asset in assets:
                response = await client.get(asset)
                assert response.status_code == 200, asset
                weight += len(response.content)
            assert weight < PAGE_BUDGET, f"{path}: {weight} bytes"
        # the vendored scripts, pinned by name, each with its licence in the package
        for name in ["htmx-2.0.11.min.js", "htmx-ext-sse-2.2.4.min.js", "uPlot-1.6.32.iife.min.js"]:
            assert (STATIC / name).is_file()
        for licence in ["LICENSE.htmx", "LICENSE.htmx-ext-sse", "LICENSE.uplot"]:
            response = await client.get(f"{UI}/static/{licence}")
            assert response.status_code == 200 and ("BSD" in response.text or "MIT" in response.text)
        assert (await client.get(f"{UI}/static/..%2Fsession.py")).status_code == 404


async def test_the_tasks_page_filters_by_workflow_and_status(tmp_path: Path) -> None:
    async with running_skipper(tmp_path, frozenset({"api"})) as (client, _):
        client.base_url = httpx.URL("http://127.0.0.1")
        ids = {}
        for workflow in ["diabetes", "wine", "wine"]:
            ids.setdefault(workflow, []).append(
                (await client.post(f"/api/v1/skipper/workflows/{workflow}/train", json={})).json()["task_id"])
        await client.delete(f"/api/v1/skipper/tasks/{ids['wine'][0]}")
        rows = await client.get(f"{UI}/tasks/rows", params={"workflow": "wine", "status": "queued"})
        assert re.findall(r'data-task="(\w+)"', rows.text) == [ids["wine"][1]]
        page = await client.get(f"{UI}/tasks", params={"status": "cancelled"})
        assert re.findall(r'data-task="(\w+)"', page.text) == [ids["wine"][0]]
        assert 'hx-get="/api/v1/skipper/ui/tasks/rows?status=cancelled"' in page.text  # live updates keep the filter
