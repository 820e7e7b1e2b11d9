"""Emitting events to the logging module over the bus."""

from __future__ import annotations

import logging
import time
from typing import Any

from skipper.core import contracts
from skipper.core.bus import Transport
from skipper.core.messages import Message

log = logging.getLogger("skipper.events")


class EventEmitter:
    """Sends `event` messages to the `events` queue; never lets a bus error reach the caller."""

    def __init__(self, bus: Transport, source: str) -> None:
        self._bus = bus
        self._source = source

    async def emit(
        self, kind: str, *, correlation_id: str | None = None, task_id: str | None = None, **fields: Any
    ) -> None:
        """Record that `kind` (e.g. `task.started`) happened; fields must be JSON-able."""
        body = {"kind": kind, "source": self._source, "task_id": task_id, "at": time.time(), "fields": fields}
        try:
            msg = Message(type=contracts.EVENT, body=body, correlation_id=correlation_id)
            await self._bus.send(contracts.EVENTS, msg)
        except Exception:  # an unreachable log sink must not fail training or serving
            log.warning("could not emit event %s", kind, exc_info=True, extra={"correlation_id": correlation_id})
