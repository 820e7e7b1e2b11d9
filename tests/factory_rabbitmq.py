"""Conformance-suite factory for the RabbitMQ transport (filled in with the transport)."""

from __future__ import annotations

FACTORIES: dict = {}
