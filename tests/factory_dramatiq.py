"""Conformance-suite factories for the Dramatiq transport (filled in with the transport)."""

from __future__ import annotations

FACTORIES: dict = {}
