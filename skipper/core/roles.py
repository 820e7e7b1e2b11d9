"""Roles: which modules a process runs."""

from __future__ import annotations

from skipper.core.errors import ConfigError

ROLES = ("api", "trainer", "server")


def parse_roles(value: str) -> frozenset[str]:
    """`all`, one role, or a comma-separated combination such as `api,server`."""
    parts = {p.strip() for p in value.split(",") if p.strip()}
    if not parts:
        raise ConfigError("--role must name at least one role")
    if "all" in parts:
        return frozenset(ROLES)
    unknown = parts - set(ROLES)
    if unknown:
        raise ConfigError(f"unknown role {sorted(unknown)[0]!r}; choose all, {', '.join(ROLES)} or a comma-separated list")
    return frozenset(parts)


def role_label(roles: frozenset[str]) -> str:
    return "all" if roles == frozenset(ROLES) else ",".join(r for r in ROLES if r in roles)
