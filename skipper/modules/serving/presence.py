"""A server tells the api replicas that it is alive and what it serves.

At start, after each install, and every `serving.announce_s`, it publishes on the
`server.announced` fanout topic: its id, host, role, the model versions it serves and its
uptime (sealed with `bus.signing_key` when one is set). On shutdown it says it is leaving.
The api keeps the last announcement of each server and forgets one silent for three periods.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from skipper import __version__
from skipper.core import contracts, signing
from skipper.core.bus import Transport
from skipper.core.messages import Message
from skipper.core.settings import Settings

log = logging.getLogger("skipper.serving.presence")


class Presence:
    """Announces this server every `serving.announce_s` seconds until stopped."""

    def __init__(self, *, bus: Transport, settings: Settings, role: str, versions: Callable[[], dict[str, int]]) -> None:
        self._bus = bus
        self._settings = settings
        self._role = role
        self._versions = versions
        self.host = socket.gethostname()
        self.id = f"{self.host}:{os.getpid()}"
        self._started = time.monotonic()
        self._started_at = time.time()
        self._task: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()

    def body(self, *, leaving: bool = False) -> dict[str, Any]:
        body = {"id": self.id, "host": self.host, "role": self._role, "pid": os.getpid(), "skipper": __version__,
                "models": self._versions(), "uptime_s": round(time.monotonic() - self._started, 1),
                "started_at": self._started_at, "period_s": self._settings.serving.announce_s, "leaving": leaving}
        return signing.seal(self._settings.bus.signing_key, body)

    async def start(self) -> None:
        self._stopped.clear()
        self._task = asyncio.create_task(self._loop(), name="skipper.serving.presence")

    async def stop(self, *, goodbye: bool = True) -> None:
        """Stop announcing and say goodbye (best effort: silence also tells, three periods later)."""
        if self._task is None:
            return
        self._stopped.set()  # not cancel(): Python 3.11's wait_for can swallow a cancellation
        done, _ = await asyncio.wait([self._task], timeout=3)
        if not done:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._task = None
        if goodbye:
            await self.announce(leaving=True)

    async def announce(self, *, leaving: bool = False) -> None:
        msg = Message(type=contracts.SERVER_ANNOUNCED, body=self.body(leaving=leaving))
        try:
            await asyncio.wait_for(self._bus.publish(contracts.SERVER_ANNOUNCED, msg), self._settings.bus.request_timeout_s)
        except Exception as exc:  # the broker is away: the next period tries again
            log.debug("could not announce this server: %s", exc)

    async def _loop(self) -> None:
        while not self._stopped.is_set():
            await self.announce()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), self._settings.serving.announce_s)
