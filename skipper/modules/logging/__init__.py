"""The event sink: every module's events arrive over the bus and become JSON log lines and rows."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Any

from pydantic import BaseModel, Field
from starlette.responses import JSONResponse, Response

from skipper.core import contracts
from skipper.core.bus import Transport
from skipper.core.messages import Message
from skipper.core.module import Module
from skipper.core.repositories import EventRepository, TaskRepository
from skipper.core.routing import Call, Endpoint, PageQuery

log = logging.getLogger("skipper.events")


class TaskPath(BaseModel):
    task_id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,32}$", examples=["3f2c9a0d4b1e4c7f8a6b5d4c3b2a1f0e"])


class EventsQuery(PageQuery):
    kind: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="only events of this kind")


class EventOut(BaseModel):
    id: int
    at: str | None
    kind: str
    source: str
    task_id: str | None
    correlation_id: str | None
    fields: dict[str, Any]


class EventList(BaseModel):
    """Events, oldest first."""

    events: list[EventOut]


class TaskEvents(BaseModel):
    """A task's events, oldest first."""

    task_id: str
    events: list[EventOut]


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

    def routes(self) -> list[Endpoint]:
        return [
            Endpoint("GET", "/tasks/{task_id}/events", self._task_events, scope="read", path_params=TaskPath,
                     query=PageQuery, responses={200: TaskEvents},
                     summary="The events of one task, oldest first (queued, started, progress, succeeded/failed)."),
            Endpoint("GET", "/events", self._all_events, scope="read", query=EventsQuery, responses={200: EventList},
                     summary="Events of every module, oldest first, filterable by kind (e.g. audit)."),
        ]

    async def _task_events(self, call: Call[TaskPath, PageQuery, None]) -> Response:
        task_id = call.path.task_id
        await asyncio.to_thread(self._tasks.get, task_id)  # 404 for an unknown task
        events = await asyncio.to_thread(self._events.list, task_id=task_id, limit=call.query.limit,
                                         offset=call.query.offset)
        return JSONResponse({"task_id": task_id, "events": events})

    async def _all_events(self, call: Call[None, EventsQuery, None]) -> Response:
        q = call.query
        events = await asyncio.to_thread(self._events.list, kind=q.kind, limit=q.limit, offset=q.offset)
        return JSONResponse({"events": events})
