"""The event sink: every module's events arrive over the bus and become JSON log lines and rows."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Any

from pydantic import BaseModel, Field
from sse_starlette import EventSourceResponse, ServerSentEvent
from sse_starlette.sse import AppStatus
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from skipper.core import contracts
from skipper.core.bus import Transport
from skipper.core.contracts import Event
from skipper.core.errors import ValidationFailed
from skipper.core.messages import Message
from skipper.core.module import Module
from skipper.core.repositories import EventRepository, TaskRepository
from skipper.core.routing import Call, Endpoint, PageQuery, Reply
from skipper.core.settings import Settings
from skipper.modules.logging.stream import EventFeed, all_events, task_events

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


class StreamQuery(BaseModel):
    after: int | None = Field(None, ge=0, le=2**63 - 1,
                              description="start after this event id (what Last-Event-ID says on a reconnect)")


STREAM = Reply(description="Server-Sent Events: `id` the event id, `data` the event as GET /events lists it; "
                           "a `:` comment every http.sse_heartbeat_s", media_type="text/event-stream")


class TaskEvents(BaseModel):
    """A task's events, oldest first."""

    task_id: str
    events: list[EventOut]


class LoggingModule(Module):
    """Consumes the `events` queue; writes each event to stdout (JSON) and to the events table."""

    name = "logging"

    def __init__(self, *, events: EventRepository, tasks: TaskRepository, settings: Settings) -> None:
        self._events = events
        self._tasks = tasks
        self._heartbeat_s = settings.http.sse_heartbeat_s
        self.feed = EventFeed(events)

    def register(self, bus: Transport) -> None:
        bus.consume(contracts.EVENTS, self._on_event)

    async def start(self) -> None:
        # sse-starlette ends every stream once `AppStatus.should_exit` is set, by any uvicorn server's
        # exit in this process, and nothing resets it: a server started after another one stopped
        # (an embedding app, a test session) would close each stream at once.
        AppStatus.should_exit = False
        await self.feed.start()

    async def stop(self) -> None:
        await self.feed.stop()

    async def _on_event(self, msg: Message) -> None:
        event = Event.from_body(msg.body)
        at = dt.datetime.fromtimestamp(event.at or msg.created_at, dt.UTC)
        log.info(
            event.kind,
            extra={"event": event.kind, "source": event.source, "task_id": event.task_id,
                   "correlation_id": msg.correlation_id, **{f"f_{k}": v for k, v in event.fields.items()}},
        )
        await asyncio.to_thread(
            self._events.add, kind=event.kind, source=event.source, task_id=event.task_id,
            correlation_id=msg.correlation_id, fields=event.fields, at=at,
        )
        self.feed.nudge()

    def routes(self) -> list[Endpoint]:
        return [
            Endpoint("GET", "/tasks/{task_id}/events", self._task_events, scope="read", path_params=TaskPath,
                     query=PageQuery, responses={200: TaskEvents},
                     summary="The events of one task, oldest first (queued, started, progress, succeeded/failed)."),
            Endpoint("GET", "/tasks/{task_id}/stream", self._task_stream, scope="read", path_params=TaskPath,
                     query=StreamQuery, responses={200: STREAM},
                     summary="A task's events as they happen (SSE), from its first (or after Last-Event-ID); ends "
                             "once the task is over and a server installed or rejected its model."),
            Endpoint("GET", "/events/stream", self._all_stream, scope="read", query=StreamQuery, responses={200: STREAM},
                     summary="Every event as it happens (SSE), from now (or after Last-Event-ID); endless."),
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

    async def _task_stream(self, call: Call[TaskPath, StreamQuery, None]) -> Response:
        task_id = call.path.task_id
        await asyncio.to_thread(self._tasks.get, task_id)  # 404 for an unknown task, before streaming
        last = _last_event_id(call.request, call.query.after)
        return self._sse(task_events(self.feed, self._events, self._tasks, task_id, last))

    async def _all_stream(self, call: Call[None, StreamQuery, None]) -> Response:
        return self._sse(all_events(self.feed, self._events, _last_event_id(call.request, call.query.after)))

    def _sse(self, messages: Any) -> Response:
        return EventSourceResponse(messages, ping=self._heartbeat_s, send_timeout=30,
                                   ping_message_factory=lambda: ServerSentEvent(comment="heartbeat"))


def _last_event_id(request: Request, after: int | None) -> int | None:
    """Where a stream resumes: the `Last-Event-ID` header a reconnecting EventSource sends, else `?after=`."""
    raw = request.headers.get("last-event-id")
    if raw is None or not raw.strip():
        return after
    if not raw.strip().isdigit() or len(raw.strip()) > 18:
        raise ValidationFailed("Last-Event-ID must be an event id (a non-negative integer)",
                               details={"field": "Last-Event-ID"})
    return int(raw)
