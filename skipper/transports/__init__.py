"""Transports: one file each, imported lazily so a role loads only the client it uses."""

from __future__ import annotations

from typing import TYPE_CHECKING

from skipper.core.errors import ConfigError

if TYPE_CHECKING:
    from skipper.core.bus import BusOptions, Transport
    from skipper.core.settings import Settings

TRANSPORTS = ("memory", "rabbitmq", "dramatiq")


def build_transport(settings: Settings, options: BusOptions) -> Transport:
    """The transport named by `settings.transport`, constructed but not started."""
    if settings.transport == "memory":
        from skipper.transports.memory import MemoryTransport

        return MemoryTransport(options)
    if settings.transport == "rabbitmq":
        from skipper.transports.rabbitmq import RabbitMQTransport

        return RabbitMQTransport(options, url=settings.broker_url, settings=settings.bus)
    if settings.transport == "dramatiq":
        from skipper.transports.dramatiq import DramatiqTransport

        return DramatiqTransport(options, url=settings.broker_url, settings=settings.bus)
    raise ConfigError(f"unknown transport {settings.transport!r}; choose one of {', '.join(TRANSPORTS)}")
