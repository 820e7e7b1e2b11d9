"""A request whose database connection is lost under it is answered 503 (retry), not 500."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx
from sqlalchemy import create_engine

from skipper.core.auth import OPEN
from skipper.core.http import create_app
from skipper.core.module import Module
from skipper.core.routing import Call, Endpoint, RouteGroup
from skipper.core.settings import load_settings
from tests.processes import free_port


class Lost(Module):
    """One open route that queries a PostgreSQL nobody listens on: psycopg's real OperationalError."""

    name = "lost"

    def __init__(self) -> None:
        self.engine = create_engine(f"postgresql+psycopg://skipper@127.0.0.1:{free_port()}/skipper",
                                    connect_args={"connect_timeout": 2})

    def routes(self) -> Sequence[Endpoint | RouteGroup]:
        return [Endpoint("GET", "/lost", self.lost, scope=OPEN)]

    async def lost(self, call: Call[Any, Any, Any]) -> Any:
        with self.engine.connect():
            raise AssertionError("unreachable: nothing listens on that port")


async def test_a_lost_database_connection_is_a_503_the_client_may_retry() -> None:
    settings = load_settings(environ={}, overrides={})
    app = create_app(settings=settings, role="api", modules=[Lost()])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as client:
        response = await client.get("/api/v1/skipper/lost")
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "unavailable"
