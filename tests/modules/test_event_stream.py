"""Live event streams (SSE) over real HTTP: ids are event ids, Last-Event-ID resumes without loss or
repeats, heartbeats keep the stream alive, a task's stream ends with the task; the feed never skips an
event committed late (the horizon waits at a gap)."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import httpx_sse
import uvicorn
from sqlalchemy import insert

from skipper.core.db import Database, EventRow
from skipper.core.repositories import EventRepository
from skipper.modules.logging.stream import EventFeed
from tests.httpserve import served

API = frozenset({"api"})


async def events_listed(http: httpx.AsyncClient, base: str) -> list[dict[str, Any]]:
    body = (await http.get(f"{base}/events", params={"limit": 1000})).json()
    return sorted(body["events"], key=lambda e: e["id"])


async def until(check: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def read(source: httpx_sse.EventSource, n: int, timeout: float = 10.0) -> list[httpx_sse.ServerSentEvent]:
    got: list[httpx_sse.ServerSentEvent] = []

    async def take() -> None:
        async for message in source.aiter_sse():
            got.append(message)
            if len(got) == n:
                return

    await asyncio.wait_for(take(), timeout)
    return got


async def test_a_reconnect_with_last_event_id_loses_and_repeats_nothing(tmp_path: Path) -> None:
    async with served(tmp_path, API) as (base, _), httpx.AsyncClient(timeout=10) as http:
        async def train() -> str:
            response = await http.post(f"{base}/workflows/diabetes/train", json={"params": {"epochs": 1}})
            assert response.status_code == 202, response.text
            return str(response.json()["task_id"])

        # Given a client on the stream of every event, which reads the first three and drops the connection
        async with httpx_sse.aconnect_sse(http, "GET", f"{base}/events/stream") as source:
            assert source.response.headers["content-type"].startswith("text/event-stream")
            tasks = [await train(), await train()]  # each: task.queued and an audit event
            first = await read(source, 3)
        # When more happens while it is away
        await http.delete(f"{base}/tasks/{tasks[0]}")
        tasks.append(await train())
        everything = await until(lambda: _at_least(http, base, 8))
        # And it comes back with the id of the last event it saw
        seen = first[-1].id
        async with httpx_sse.aconnect_sse(http, "GET", f"{base}/events/stream",
                                          headers={"last-event-id": seen}) as source:
            rest = await read(source, len([e for e in everything if e["id"] > int(seen)]))
        # Then it has every event since it first connected, each once, in id order, as the event list has them
        streamed = [int(m.id) for m in first + rest]
        assert streamed == [e["id"] for e in everything if e["id"] >= int(first[0].id)]
        assert [m.json() for m in first + rest] == [e for e in everything if e["id"] >= int(first[0].id)]
        assert {m.json()["task_id"] for m in first + rest if m.json()["kind"] == "task.queued"} == set(tasks)


async def _at_least(http: httpx.AsyncClient, base: str, n: int) -> list[dict[str, Any]] | None:
    events = await events_listed(http, base)
    return events if len(events) >= n else None


async def test_a_task_stream_replays_the_task_goes_live_and_ends_when_the_task_does(tmp_path: Path) -> None:
    async with served(tmp_path, API) as (base, _), httpx.AsyncClient(timeout=10) as http:
        task_id = (await http.post(f"{base}/workflows/diabetes/train", json={})).json()["task_id"]
        other = (await http.post(f"{base}/workflows/wine/train", json={})).json()["task_id"]
        await until(lambda: _at_least(http, base, 4))
        async def rest(messages: Any) -> list[dict[str, Any]]:
            return [m.json() async for m in messages]  # returns only when the server ends the stream

        async with httpx_sse.aconnect_sse(http, "GET", f"{base}/tasks/{task_id}/stream") as source:
            messages = source.aiter_sse()
            queued = await asyncio.wait_for(anext(messages), 10)  # from the task's first event, though it is past
            assert queued.json()["kind"] == "task.queued" and queued.json()["task_id"] == task_id
            assert (await http.delete(f"{base}/tasks/{task_id}")).status_code == 200
            after = await asyncio.wait_for(rest(messages), 10)
        assert [e["kind"] for e in after] == ["task.cancelled"] and after[0]["task_id"] == task_id
        # a reconnect after the last event gets nothing more and ends at once; other tasks never show
        async with httpx_sse.aconnect_sse(http, "GET", f"{base}/tasks/{task_id}/stream",
                                          headers={"last-event-id": str(after[0]["id"])}) as source:
            assert await asyncio.wait_for(rest(source.aiter_sse()), 10) == []
        async with httpx_sse.aconnect_sse(http, "GET", f"{base}/tasks/{task_id}/stream",
                                          params={"after": str(queued.json()["id"])}) as source:
            assert [e["id"] for e in await asyncio.wait_for(rest(source.aiter_sse()), 10)] == [after[0]["id"]]
        assert other not in {e["task_id"] for e in after}


async def test_a_quiet_stream_sends_heartbeat_comments(tmp_path: Path) -> None:
    async with (served(tmp_path, API, http={"sse_heartbeat_s": 0.2}) as (base, _), httpx.AsyncClient(timeout=10) as http,
                http.stream("GET", f"{base}/events/stream") as response):
        assert response.headers["cache-control"].startswith("no-")

        async def comment() -> str:
            async for line in response.aiter_lines():
                if line.startswith(":"):
                    return line
            return ""

        assert (await asyncio.wait_for(comment(), 5)) == ": heartbeat"


async def test_streams_stay_open_on_a_server_started_after_another_one_exited_in_the_process(tmp_path: Path) -> None:
    # Given a uvicorn server in this process that was told to exit (an embedding app, a test session)
    uvicorn.Server(uvicorn.Config(app=None)).handle_exit(signal.SIGTERM, None)
    # When a new Skipper server starts and a client opens a quiet stream
    async with (served(tmp_path, API, http={"sse_heartbeat_s": 0.2}) as (base, _), httpx.AsyncClient(timeout=10) as http,
                http.stream("GET", f"{base}/events/stream") as response):
        lines = await asyncio.wait_for(_comments(response, 2), 5)
    # Then the stream lives on, heartbeat after heartbeat, instead of closing at once
    assert lines == [": heartbeat", ": heartbeat"]


async def _comments(response: httpx.Response, n: int) -> list[str]:
    got: list[str] = []
    async for line in response.aiter_lines():
        if line.startswith(":"):
            got.append(line)
            if len(got) == n:
                break
    return got


async def test_streams_refuse_unknown_tasks_and_bad_ids_with_json_errors(tmp_path: Path) -> None:
    async with served(tmp_path, API) as (base, _), httpx.AsyncClient(timeout=10) as http:
        missing = await http.get(f"{base}/tasks/nosuchtask/stream")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
        bad = await http.get(f"{base}/events/stream", headers={"last-event-id": "yesterday"})
        assert bad.status_code == 422 and bad.json()["error"]["details"]["field"] == "Last-Event-ID"


async def test_the_feed_waits_at_a_gap_for_an_event_committed_late(tmp_path: Path) -> None:
    # Given events 1..3, and a feed that gives up on a missing id after 0.3 s
    db = Database(f"sqlite:///{tmp_path / 'events.db'}")
    db.create_schema()
    events = EventRepository(db)

    def put(event_id: int) -> None:
        with db.sessions.begin() as s:
            s.execute(insert(EventRow).values(id=event_id, kind="k", source="t", fields={}))

    for i in (1, 2, 3):
        put(i)
    feed = EventFeed(events, gap_wait_s=0.3)
    feed.horizon = 3
    # When 5 commits before 4, the horizon stays below the gap until 4 commits
    put(5)
    await feed.advance()
    assert feed.horizon == 3
    put(4)
    await feed.advance()
    assert feed.horizon == 5
    # And an id that never commits (a rolled-back insert) holds streams back only for the wait
    put(7)
    await feed.advance()
    assert feed.horizon == 5
    await asyncio.sleep(0.35)
    await feed.advance()
    assert feed.horizon == 7
    db.dispose()


async def test_the_feed_reads_the_table_only_while_a_stream_waits_on_it(tmp_path: Path) -> None:
    # Given a started feed polling every 20 ms, whose reads of the table are counted
    db = Database(f"sqlite:///{tmp_path / 'events.db'}")
    db.create_schema()
    events = EventRepository(db)
    reads: list[int] = []
    ids_after = events.ids_after
    events.ids_after = lambda after: (reads.append(after), ids_after(after))[1]  # type: ignore[method-assign]

    def put(event_id: int) -> None:
        with db.sessions.begin() as s:
            s.execute(insert(EventRow).values(id=event_id, kind="k", source="t", fields={}))

    feed = EventFeed(events, poll_s=0.02)
    await feed.start()
    try:
        # When no stream is open, nothing reads the table, however many events come
        await asyncio.sleep(0.2)
        put(1)
        feed.nudge()
        await asyncio.sleep(0.2)
        assert reads == []
        # Then a stream starting "from now" sees the table as it is (the feed was resting)
        assert await feed.now() == 1
        # And a stream waiting on the feed gets an event committed meanwhile, from the feed's polls
        waiting = asyncio.create_task(feed.wait(1, timeout=5))
        await asyncio.sleep(0.1)
        put(2)
        assert await asyncio.wait_for(waiting, 5) == 2
        polled = len(reads)
        assert polled >= 3
        # And once no stream waits, the feed rests again
        await asyncio.sleep(0.2)
        settled = len(reads)
        await asyncio.sleep(0.2)
        assert len(reads) == settled
    finally:
        await feed.stop()
        db.dispose()
