"""Transports, by name: a registry of lazy import paths (as kombu's aliases), so a role loads only the client it uses.

    resolve_transport("rabbitmq")   # -> the RabbitMQTransport class, imported now
    resolve_transport("amqp")       # an alias of the same
    resolve_transport("rabitmq")    # ConfigError: unknown transport 'rabitmq'; did you mean 'rabbitmq'?
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING

from skipper.core.errors import ConfigError
from skipper.core.imports import resolve

if TYPE_CHECKING:
    from skipper.core.bus import BusOptions, Transport
    from skipper.core.settings import Settings

TRANSPORTS: dict[str, str] = {
    "memory": "skipper.transports.memory:MemoryTransport",
    "rabbitmq": "skipper.transports.rabbitmq:RabbitMQTransport",
    "dramatiq": "skipper.transports.dramatiq:DramatiqTransport",
}
ALIASES: dict[str, str] = {"inmemory": "memory", "amqp": "rabbitmq", "pika": "rabbitmq"}
NEEDS_URL = frozenset({"rabbitmq", "dramatiq"})  # constructed with `url=settings.broker_url`


def canonical_name(name: str) -> str:
    """The registered name for `name` or one of its aliases; `ConfigError` (with a suggestion) otherwise."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key in TRANSPORTS:
        return key
    close = difflib.get_close_matches(key, [*TRANSPORTS, *ALIASES], n=1)
    hint = f"; did you mean {ALIASES.get(close[0], close[0])!r}?" if close else ""
    raise ConfigError(
        f"unknown transport {name!r}{hint} (choose one of {', '.join(TRANSPORTS)})",
        details={"transport": name, "choices": sorted(TRANSPORTS)},
    )


def resolve_transport(name: str) -> type[Transport]:
    """The transport class registered as `name` (or an alias), imported on first use."""
    cls: type[Transport] = resolve(TRANSPORTS[canonical_name(name)], what="transport")
    return cls


def build_transport(settings: Settings, options: BusOptions) -> Transport:
    """The transport named by `settings.transport`, constructed (no I/O) but not started."""
    name = canonical_name(settings.transport)
    cls = resolve_transport(name)
    if name in NEEDS_URL:
        return cls(options, url=settings.broker_url)  # type: ignore[call-arg]
    return cls(options)
