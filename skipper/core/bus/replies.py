"""The pending-reply table: one future per request in flight, keyed by an opaque token."""

from __future__ import annotations

import asyncio
import itertools
import uuid

from skipper.core.messages import Message


class PendingReplies:
    """Requests waiting for their reply. Keys are unique per process (`<random>.<n>`), never reused."""

    def __init__(self) -> None:
        self._waiting: dict[str, asyncio.Future[Message]] = {}
        self._prefix = uuid.uuid4().hex[:12]
        self._keys = itertools.count()

    def open(self) -> tuple[str, asyncio.Future[Message]]:
        """A new key and the future its reply will settle."""
        key = f"{self._prefix}.{next(self._keys)}"
        fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._waiting[key] = fut
        return key, fut

    def discard(self, key: str) -> None:
        self._waiting.pop(key, None)

    def resolve(self, key: str | None, reply: Message) -> bool:
        """Hand `reply` to the request waiting on `key`; False when nobody waits any more."""
        fut = self._waiting.get(key or "")
        if fut is None or fut.done():
            return False
        fut.set_result(reply)
        return True

    def fail(self, key: str | None, error: BaseException) -> None:
        """Fail the request waiting on `key` (e.g. `NoConsumers` when the broker returned it)."""
        fut = self._waiting.get(key or "")
        if fut is not None and not fut.done():
            fut.set_exception(error)

    def fail_all(self, error: BaseException) -> None:
        """Fail every request in flight (the connection or the transport is gone)."""
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(error)
