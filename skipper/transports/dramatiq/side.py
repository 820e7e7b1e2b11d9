"""The declared interface between the Dramatiq transport and its side channels (requests' replies, fanout).

Dramatiq has work queues only; requests' replies, fanout and consumer presence run beside it on
the same broker, over a `SideChannel` (`AmqpSide` for RabbitMQ, `RedisSide` for Redis). A side
channel calls back only through a `SideListener`, on the transport's event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Protocol

from skipper.core.bus import Transport
from skipper.core.errors import Unavailable
from skipper.transports.dramatiq.wire import unpack_frame

log = logging.getLogger("skipper.transports.dramatiq")

CONNECT_TIMEOUT_S = 10.0
# Dramatiq attaches each queue's consumer in its own thread, on its own connection, and waits its
# restart delay (1 s, see __init__) after a failed attempt: on a loaded machine a start can take a few of them.
ATTACH_TIMEOUT_S = 30.0


class SideListener(Protocol):
    """What a side channel reports, always on the event loop."""

    def on_reply(self, data: bytes) -> None:
        """A reply frame arrived on this transport's reply address."""

    def on_event(self, topic: str, data: bytes) -> None:
        """A fanout frame arrived for `topic`."""

    def on_reconnect(self) -> None:
        """The side channel came back after a loss (fanout may have been missed meanwhile)."""

    def on_disconnect(self) -> None:
        """The side channel lost its connection: replies to requests in flight cannot arrive."""

    def on_request(self, queue: str, data: bytes, done: Callable[[], None]) -> None:
        """A request frame taken for (qualified) `queue`; call `done()` once it was handled."""


class SideChannel(Protocol):
    """Replies, fanout and consumer presence beside Dramatiq. Every method raises `Unavailable` when the broker is unreachable."""

    presence_on_send: bool  # `send_request` itself reports a queue nobody consumes: no check before

    @property
    def connected(self) -> bool: ...

    async def start(self, loop: asyncio.AbstractEventLoop, *, topics: list[str]) -> None:
        """Connect and subscribe to the reply address and `topics`; returns once subscriptions are confirmed."""

    async def close(self) -> None:
        """Disconnect (idempotent)."""

    async def withdraw(self) -> None:
        """Stop counting this process as a consumer of any queue (closing: requests see NoConsumers)."""

    async def withdraw_queue(self, queue: str) -> None:
        """Stop counting this process as a consumer of `queue`."""

    async def consumers_attached(self, queues: list[str], *, wait: bool = True) -> None:
        """This process now consumes `queues`; with `wait`, return once `has_consumers` sees it."""

    def reply_address(self) -> str:
        """Where replies to this transport's requests go."""

    async def has_consumers(self, queue: str) -> bool:
        """Whether any process consumes the (qualified) `queue` now."""

    async def send_request(self, queue: str, frame: bytes, *, timeout: float) -> bool:
        """Queue a request frame for one consumer of (qualified) `queue`, beside Dramatiq; False: nobody consumes it.

        Consumers get it through `SideListener.on_request`, at most their queue's prefetch at a time."""

    async def publish(self, topic: str, frame: bytes) -> None:
        """Send a fanout frame to every subscriber of `topic`."""

    async def reply(self, address: str, frame: bytes) -> None:
        """Send a reply frame to a requester's reply address."""

    async def add_topic(self, topic: str) -> None:
        """Subscribe to `topic` from now on (and after reconnects)."""

    def exchanges(self) -> set[str]:
        """Broker objects declared for fanout (for cleanup tools)."""


class TransportListener:
    """The `SideListener` of a transport: frames decoded, then handed to the base class's public hooks."""

    def __init__(self, transport: Transport, *, serve_request: Callable[[str, bytes, Callable[[], None]], None]) -> None:
        self._t = transport
        self.on_request = serve_request

    def on_reply(self, data: bytes) -> None:
        try:
            reply, token = unpack_frame(data)
        except (ValueError, json.JSONDecodeError):
            log.warning("dropping an unreadable reply")
            return
        self._t.reply_arrived(token, reply)

    def on_event(self, topic: str, data: bytes) -> None:
        try:
            msg, _ = unpack_frame(data)
        except (ValueError, json.JSONDecodeError):
            log.warning("dropping an unreadable message on topic %s", topic)
            return
        self._t.fan_out(topic, msg)

    def on_reconnect(self) -> None:
        if not self._t.closed:
            self._t.spawn(self._t.notify_connected())

    def on_disconnect(self) -> None:
        # The reply address went with the connection (RabbitMQ's exclusive queue, Redis's
        # subscription): a reply sent meanwhile is lost, so the callers hear it now, not at their timeout.
        self._t.fail_requests(Unavailable("the connection to the broker was lost while waiting for a reply"))
