"""Following a task to its end, without I/O: which events are new, the progress, and when it is over.

`Client` and `AsyncClient` feed it the task's events, from the server's event stream
(`GET /tasks/{id}/stream`, Server-Sent Events) where it has one, else from polling
`GET /tasks/{id}/events?offset=N`, and the task itself (`GET /tasks/{id}`). A task is over
when it failed or was cancelled, or when it succeeded and a server reported installing
(or rejecting) the version it trained: then a prediction right after it gets that version.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

from skipper.client.errors import ModelRejected, TaskCancelled, TaskFailed, WaitTimeout
from skipper.client.models import Event, Installation, Progress, TaskState

S = TypeVar("S", bound=TaskState)

INSTALL_KINDS = frozenset({"model.installed", "model.rejected"})
OnProgress = Callable[[Progress], None]
OnEvent = Callable[[Event], None]


class Follow:
    """The state of one wait: events seen (by id), the latest progress, the install report, the deadline."""

    def __init__(self, task_id: str, *, timeout: float | None, install_timeout: float,
                 on_progress: OnProgress | None = None, on_event: OnEvent | None = None) -> None:
        self.task_id = task_id
        self.offset = 0  # how many entries of the event list polling has read
        self.progress: Progress | None = None
        self.installation: Installation | None = None
        self._seen: set[int] = set()
        self._on_progress = on_progress
        self._on_event = on_event
        self._deadline = time.monotonic() + timeout if timeout is not None else None
        self._timeout = timeout
        self._install_timeout = install_timeout
        self._succeeded_at: float | None = None

    def add(self, data: dict[str, Any]) -> Event | None:
        """Take one event (an entry of the events list, or one SSE message's data); None when already seen."""
        try:
            event = Event.from_json(data)
        except (KeyError, TypeError, ValueError):
            return None
        if event.id in self._seen or (event.task_id is not None and event.task_id != self.task_id):
            return None
        self._seen.add(event.id)
        if self._on_event is not None:
            self._on_event(event)
        if event.kind == "task.progress":
            progress = Progress.from_json(event.fields)
            # Events from different processes may arrive out of order: the bar only moves forward.
            if self.progress is None or progress.epoch > self.progress.epoch:
                self.progress = progress
                if self._on_progress is not None:
                    self._on_progress(progress)
        elif event.kind in INSTALL_KINDS and self.installation is None:
            self.installation = Installation.from_event(event)
        return event

    def add_page(self, page: list[dict[str, Any]], start: int) -> None:
        """Take a page of the event list that starts at entry `start`."""
        for data in page:
            self.add(data)
        self.offset = max(self.offset, start + len(page))

    def poll_offset(self, state: TaskState) -> int:
        """Where the next events page starts: from the top once the task is over but its install was not seen.

        The event list is ordered by when things happened, so an event from a slower process can
        land before entries already read; one full re-read at the end finds it (ids deduplicate).
        """
        return 0 if state.finished and self.installation is None else self.offset

    def done(self, state: TaskState) -> bool:
        if state.status in ("failed", "cancelled"):
            return True
        if state.status != "succeeded":
            return False
        if self.installation is not None:
            return True
        now = time.monotonic()
        if self._succeeded_at is None:
            self._succeeded_at = now
        # No server reported in time (none running, or one that catches up later): the version is registered.
        return now - self._succeeded_at >= self._install_timeout

    def check_deadline(self) -> None:
        if self._deadline is not None and time.monotonic() >= self._deadline:
            raise WaitTimeout(f"task {self.task_id} did not finish within {self._timeout:g}s (it goes on)")

    def remaining(self, cap: float) -> float:
        return cap if self._deadline is None else max(0.0, min(cap, self._deadline - time.monotonic()))

    def outcome(self, state: S) -> S:
        """The finished task with its install report; raises when it failed, was cancelled or was rejected."""
        state = replace(state, installation=self.installation)
        if state.status == "cancelled":
            raise TaskCancelled(f"task {state.task_id} was cancelled", state)
        if state.status == "failed":
            message = state.error.message if state.error else "no reason given"
            raise TaskFailed(f"task {state.task_id} failed: {message}", state)
        if self.installation is not None and not self.installation.installed:
            reason = self.installation.reason or "no reason given"
            raise ModelRejected(f"{self.installation.model} v{self.installation.version} was rejected by a server: {reason}; "
                                "the previous version keeps serving", state, reason)
        return state


def sse_data(data: str) -> dict[str, Any] | None:
    """One SSE message's `data:` as an event entry; None for anything else (a keep-alive, a malformed line)."""
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
