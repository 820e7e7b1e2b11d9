"""The replica view: servers announce themselves on a fanout topic; `GET /servers` lists those heard
from lately with the versions they serve, drops one silent for three periods, and ignores forgeries."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx

from skipper.app.runtime import Runtime
from skipper.core import contracts, signing
from skipper.core.messages import Message
from skipper.modules.api.replicas import ReplicaView
from skipper.modules.serving.presence import Presence
from tests.apphelpers import running_skipper

PERIOD = 0.2


async def servers(client: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    response = await client.get("/servers")
    assert response.status_code == 200, response.text
    return {s["id"]: s for s in response.json()["servers"]}


async def until(check: Any, timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := await check()):
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)
    return value


def another_server(runtime: Runtime, name: str, models: dict[str, int]) -> Presence:
    presence = Presence(bus=runtime.bus, settings=runtime.settings, role="server", versions=lambda: models)
    presence.id = name
    return presence


async def test_the_api_lists_live_servers_and_drops_one_silent_for_three_periods(tmp_path: Path) -> None:
    async with running_skipper(tmp_path, frozenset({"api", "server"}), serving={"announce_s": PERIOD}) as (client, rt):
        # Given this process's server and another one that serves diabetes v2
        other = another_server(rt, "other-host:7", {"diabetes": 2})
        await other.start()
        listed = await until(lambda: _with_count(client, 2))
        mine = next(s for s in listed.values() if s["id"] != "other-host:7")
        assert mine["role"] == "api,server" and mine["models"] == {} and mine["uptime_s"] >= 0
        assert listed["other-host:7"]["models"] == {"diabetes": 2} and listed["other-host:7"]["period_s"] == PERIOD
        # When the other one dies without a word
        await other.stop(goodbye=False)
        dead_at = time.monotonic()
        # Then it is listed for up to three periods, and then no more; the live one stays
        gone = await until(lambda: _with_count(client, 1))
        assert 2 * PERIOD <= time.monotonic() - dead_at < 3 * PERIOD + 1.5
        assert set(gone) == {mine["id"]}
        # And one that stops cleanly leaves the list at once
        third = another_server(rt, "third:1", {})
        await third.start()
        await until(lambda: _with_count(client, 2))
        await third.stop()
        left_at = time.monotonic()
        await until(lambda: _with_count(client, 1))
        assert time.monotonic() - left_at < PERIOD


async def _with_count(client: httpx.AsyncClient, n: int) -> dict[str, dict[str, Any]] | None:
    listed = await servers(client)
    return listed if len(listed) == n else None


async def test_with_a_signing_key_an_unsigned_announcement_is_ignored(tmp_path: Path) -> None:
    key = "k" * 32
    async with running_skipper(tmp_path, frozenset({"api"}), bus={"signing_key": key}) as (client, rt):
        body = {"id": "forged:1", "host": "forged", "role": "server", "models": {"diabetes": 9}, "uptime_s": 1,
                "period_s": 5, "skipper": "0", "leaving": False}
        await rt.bus.publish(contracts.SERVER_ANNOUNCED, Message(type=contracts.SERVER_ANNOUNCED, body=body))
        signed = signing.seal(rt.settings.bus.signing_key, {**body, "id": "real:1"})
        await rt.bus.publish(contracts.SERVER_ANNOUNCED, Message(type=contracts.SERVER_ANNOUNCED, body=signed))
        listed = await until(lambda: _with_count(client, 1))
        assert set(listed) == {"real:1"}


async def test_the_replica_count_per_model_is_what_the_coalescer_window_reads() -> None:
    view = ReplicaView(None)

    async def announce(server: str, models: dict[str, int], *, period_s: float = 5.0, leaving: bool = False) -> None:
        body = {"id": server, "host": "h", "role": "server", "models": models, "uptime_s": 1.0, "period_s": period_s,
                "skipper": "test", "leaving": leaving}
        await view.on_announced(Message(type=contracts.SERVER_ANNOUNCED, body=body))

    assert view.serving("diabetes") == 0
    await announce("a:1", {"diabetes": 2, "wine": 1})
    await announce("b:1", {"diabetes": 3})
    await announce("c:1", {})
    assert (view.serving("diabetes"), view.serving("wine"), view.serving("iris")) == (2, 1, 0)
    await announce("b:1", {}, leaving=True)
    assert view.serving("diabetes") == 1
    # A server silent for three of its periods no longer counts, even before anything prunes the view.
    await announce("d:1", {"diabetes": 3}, period_s=0.05)
    assert view.serving("diabetes") == 2
    await asyncio.sleep(0.2)
    assert view.serving("diabetes") == 1
