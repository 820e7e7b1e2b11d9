"""Connecting and reconnecting a link with jittered exponential backoff."""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from collections.abc import Awaitable, Callable

from skipper.core.errors import Unavailable


def backoff_s(attempt: int, *, first_s: float, cap_s: float) -> float:
    """Seconds before retry `attempt` (0-based): doubling from `first_s` up to `cap_s`, with jitter down to half."""
    return float(min(cap_s, first_s * 2**attempt) * random.uniform(0.5, 1.0))


async def connect_within(
    connect: Callable[[], Awaitable[None]],
    *,
    timeout_s: float,
    backoff: Callable[[int], float],
    closed: Callable[[], bool],
    what: str,
    log: logging.Logger,
) -> None:
    """Run `connect` until it succeeds; `Unavailable` once the next try would pass `timeout_s`, or once `closed()`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    for attempt in itertools.count():
        try:
            await connect()
            return
        except Exception as exc:
            delay = backoff(attempt)
            if closed() or loop.time() + delay > deadline:
                raise Unavailable(f"cannot connect to {what}: {exc!r}") from exc
            log.warning("cannot connect to %s (%r); retrying in %.1fs", what, exc, delay)
            await asyncio.sleep(delay)


async def reconnect(
    connect: Callable[[], Awaitable[None]],
    *,
    backoff: Callable[[int], float],
    closed: Callable[[], bool],
    what: str,
    log: logging.Logger,
) -> bool:
    """After a loss: wait, then run `connect` until it succeeds (True) or `closed()` (False)."""
    attempt = 0
    while not closed():
        await asyncio.sleep(backoff(attempt))
        if closed():
            break
        try:
            await connect()
        except Exception as exc:
            attempt += 1
            log.warning("reconnect to %s failed (attempt %d): %r", what, attempt, exc)
            continue
        return True
    return False
