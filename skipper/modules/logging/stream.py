"""Live event streams (Server-Sent Events) read from the shared events table.

Every api replica writes the events it consumes to one table, so a stream on any replica
sees what happened anywhere. Each SSE message's `id` is the event's row id and its `data`
is the event as `GET /events` lists it; a client that reconnects with `Last-Event-ID`
gets exactly the events after that id.

Ids are handed out when a row is inserted but become visible when it commits, and two
replicas commit in any order: id 11 can be readable before id 10. Streams therefore only
read up to the *horizon*, the highest id below which every id is readable, so none is
skipped. An id that stays missing (a rolled-back insert) is given up on after
`GAP_WAIT_S`. One `EventFeed` per process polls the table for the horizon while a stream
waits on it, and streams wake when it moves; with no stream open it rests (no query every
`POLL_S` on a server busy with predictions) and a new stream brings the horizon up to date.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from skipper.core.contracts import INSTALL_KINDS, TERMINAL_KINDS
from skipper.core.repositories import TERMINAL, EventRepository, TaskRepository

log = logging.getLogger("skipper.events.stream")

POLL_S = 0.2
GAP_WAIT_S = 2.0
PAGE = 500
# A succeeded task's stream waits this long for a server to report installing its version (none may run).
INSTALL_WAIT_S = 30.0


class EventFeed:
    """The process's view of the events table: the horizon, and a wake-up for streams when it moves."""

    def __init__(self, events: EventRepository, *, poll_s: float = POLL_S, gap_wait_s: float = GAP_WAIT_S) -> None:
        self._events = events
        self._poll_s = poll_s
        self._gap_wait_s = gap_wait_s
        self.horizon = 0
        self._gap: tuple[int, float] | None = None  # the first missing id, and since when
        self._moved = asyncio.Event()
        self._nudged = asyncio.Event()
        self._watchers = 0  # streams in `wait` now: the feed polls only while there are some
        self._watched = asyncio.Event()
        self._reading = asyncio.Lock()  # one `advance` at a time: the loop's and a stream's `now`
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    async def start(self) -> None:
        self.horizon = await asyncio.to_thread(self._events.last_id)
        self._stopped = False
        self._task = asyncio.create_task(self._run(), name="skipper.events.feed")

    async def stop(self) -> None:
        self._stopped = True  # checked too: Python 3.11's wait_for can swallow the cancellation
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def nudge(self) -> None:
        """An event was just written here: look now rather than at the next poll."""
        self._nudged.set()

    async def now(self) -> int:
        """The horizon, read from the table first when no stream keeps the feed polling."""
        if not self._watchers:
            await self.advance()
        return self.horizon

    async def wait(self, beyond: int, timeout: float) -> int:
        """The horizon once it passes `beyond`, or as it is after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        self._watchers += 1
        self._watched.set()
        try:
            while self.horizon <= beyond:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                moved = self._moved
                try:
                    await asyncio.wait_for(moved.wait(), left)
                except TimeoutError:
                    break
        finally:
            self._watchers -= 1
        return self.horizon

    async def _run(self) -> None:
        while not self._stopped:
            if not self._watchers:
                self._watched.clear()
                await self._watched.wait()
            try:
                await self.advance()
            except asyncio.CancelledError:
                raise
            except Exception:  # the database is away for a moment: streams wait, they do not fail
                log.warning("could not read the events table", exc_info=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._nudged.wait(), self._poll_s)
            self._nudged.clear()

    async def advance(self) -> None:
        """Move the horizon over every id readable without a gap (or past a gap older than `gap_wait_s`)."""
        async with self._reading:
            await self._advance()

    async def _advance(self) -> None:
        ids = await asyncio.to_thread(self._events.ids_after, self.horizon)
        horizon, now = self.horizon, time.monotonic()
        for i in ids:
            if i != horizon + 1:
                missing = horizon + 1
                if self._gap is None or self._gap[0] != missing:
                    self._gap = (missing, now)
                if now - self._gap[1] < self._gap_wait_s:
                    break
                log.info("event ids %d..%d never appeared; streams go on past them", missing, i - 1)
            horizon = i
        if horizon != self.horizon:
            self.horizon, self._gap = horizon, None
            moved, self._moved = self._moved, asyncio.Event()
            moved.set()


def sse_message(event: dict[str, Any]) -> dict[str, Any]:
    """An event as sse-starlette's message: `id` the row id, `data` the event's JSON."""
    return {"id": str(event["id"]), "data": json.dumps(event, separators=(",", ":"), default=str)}


async def all_events(feed: EventFeed, events: EventRepository, last_id: int | None,
                     *, idle_s: float = 5.0) -> AsyncIterator[dict[str, Any]]:
    """Every event after `last_id` (from now when None), as it becomes readable; endless."""
    last = await feed.now() if last_id is None else last_id
    while True:
        horizon = await feed.wait(last, idle_s)
        while last < horizon:
            page = await asyncio.to_thread(events.after, last, upto=horizon, limit=PAGE)
            for event in page:
                yield sse_message(event)
                last = event["id"]
            if len(page) < PAGE:
                last = horizon


async def task_events(feed: EventFeed, events: EventRepository, tasks: TaskRepository, task_id: str,
                      last_id: int | None, *, idle_s: float = 1.0,
                      install_wait_s: float = INSTALL_WAIT_S) -> AsyncIterator[dict[str, Any]]:
    """A task's events after `last_id` (from its first when None); ends once the task is over.

    Over: failed or cancelled (and that event sent), or succeeded and a server reported
    installing or rejecting its version; or finished more than `install_wait_s` ago.
    """
    last = last_id or 0
    while True:
        horizon = max(await feed.now(), last)
        while True:
            page = await asyncio.to_thread(events.after, last, upto=horizon, task_id=task_id, limit=PAGE)
            for event in page:
                yield sse_message(event)
                last = event["id"]
            if len(page) < PAGE:
                break
        task = await asyncio.to_thread(tasks.get, task_id)
        if task.status in TERMINAL:
            kinds = await asyncio.to_thread(events.kinds, task_id, upto=horizon)
            told = bool(kinds & TERMINAL_KINDS[task.status])
            settled = task.status != "succeeded" or bool(kinds & INSTALL_KINDS)
            # Long over without those events (no server runs, or an event was lost): over all the same.
            if (told and settled) or _age_s(task.finished_at) >= install_wait_s:
                return
        await feed.wait(horizon, idle_s)


def _age_s(iso: str | None) -> float:
    if iso is None:
        return 0.0
    return (dt.datetime.now(dt.UTC) - dt.datetime.fromisoformat(iso)).total_seconds()
