"""The event sink: every module's events arrive over the bus and become JSON log lines and rows."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from skipper.core import contracts
from skipper.core.bus import Transport
from skipper.core.http import paging
from skipper.core.messages import Message
from skipper.core.module import Module
from skipper.core.repositories import EventRepository, TaskRepository

log = logging.getLogger("skipper.events")


class LoggingModule(Module):
    """Consumes the `events` queue; writes each event to stdout (JSON) and to the events table."""

    name = "logging"

    def __init__(self, *, events: EventRepository, tasks: TaskRepository) -> None:
        self._events = events
        self._tasks = tasks

    def register(self, bus: Transport) -> None:
        bus.consume(contracts.EVENTS, self._on_event)

    async def _on_event(self, msg: Message) -> None:
        body = msg.data
        kind = str(body.get("kind", "unknown"))
        fields: dict[str, Any] = body.get("fields") or {}
        at = dt.datetime.fromtimestamp(float(body.get("at") or msg.created_at), dt.UTC)
        log.info(
            kind,
            extra={"event": kind, "source": body.get("source"), "task_id": body.get("task_id"),
                   "correlation_id": msg.correlation_id, **{f"f_{k}": v for k, v in fields.items()}},
        )
        await asyncio.to_thread(
            self._events.add, kind=kind, source=str(body.get("source", "")), task_id=body.get("task_id"),
            correlation_id=msg.correlation_id, fields=fields, at=at,
        )

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/tasks/{task_id}/events", self._task_events, methods=["GET"]),
            Route("/events", self._all_events, methods=["GET"]),
        ]

    async def _task_events(self, request: Request) -> Response:
        """
        summary: 'The events of one task, oldest first (queued, started, progress, succeeded/failed).'
        parameters:
          - {name: task_id, in: path, required: true, schema: {type: string}}
        responses: {200: {description: '{"task_id", "events": [...]}'}, 404: {description: unknown task}}
        """
        task_id = request.path_params["task_id"]
        await asyncio.to_thread(self._tasks.get, task_id)  # 404 for an unknown task
        limit, offset = paging(request)
        events = await asyncio.to_thread(self._events.list, task_id=task_id, limit=limit, offset=offset)
        return JSONResponse({"task_id": task_id, "events": events})

    async def _all_events(self, request: Request) -> Response:
        """
        summary: 'Recent events of every module, filterable by kind.'
        parameters:
          - {name: kind, in: query, schema: {type: string}}
          - {name: limit, in: query, schema: {type: integer}}
          - {name: offset, in: query, schema: {type: integer}}
        responses: {200: {description: '{"events": [...]}'}}
        """
        limit, offset = paging(request)
        kind = request.query_params.get("kind")
        events = await asyncio.to_thread(self._events.list, kind=kind, limit=limit, offset=offset)
        return JSONResponse({"events": events})
