"""Reaching the real services on this machine: skip locally when one is absent, fail in CI."""

from __future__ import annotations

import os
import socket

import pytest

CI = bool(os.environ.get("CI"))

RABBITMQ_URL = os.environ.get("TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def require_port(name: str, host: str, port: int) -> None:
    """Skip the test when `name` is not listening, unless CI is set, where that is a failure."""
    try:
        with socket.create_connection((host, port), timeout=2):
            return
    except OSError as exc:
        if CI:
            raise RuntimeError(f"{name} is not reachable at {host}:{port} in CI: {exc}") from exc
        pytest.skip(f"{name} is not running at {host}:{port}")


def require_rabbitmq() -> None:
    require_port("RabbitMQ", "127.0.0.1", 5672)


def require_redis() -> None:
    require_port("Redis", "127.0.0.1", 6379)


def require_postgres() -> None:
    require_port("PostgreSQL", "127.0.0.1", 5432)
