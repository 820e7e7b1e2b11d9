"""Emitting events to the logging module over the bus."""

from __future__ import annotations

import logging
import time
from typing import Any

from skipper.core import contracts
from skipper.core.bus import Transport
from skipper.core.contracts import Event, EventKind

log = logging.getLogger("skipper.events")


class EventEmitter:
    """Sends `event` messages to the `events` queue; never lets a bus error reach the caller."""

    def __init__(self, bus: Transport, source: str) -> None:
        self._bus = bus
        self._source = source

    async def emit(
        self, kind: EventKind, *, correlation_id: str | None = None, task_id: str | None = None, **fields: Any
    ) -> None:
        """Record that `kind` (e.g. `EventKind.TASK_STARTED`) happened; fields must be JSON-able."""
        event = Event(kind, self._source, task_id, time.time(), fields)
        try:
            await self._bus.send(contracts.EVENTS, event.message(correlation_id=correlation_id))
        except Exception:  # an unreachable log sink must not fail training or serving
            log.warning("could not emit event %s", kind, exc_info=True, extra={"correlation_id": correlation_id})
