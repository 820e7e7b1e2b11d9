"""One AMQP connection and everything that lives on it; the transport replaces it wholesale on reconnect."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import pika
import pika.exceptions

from skipper.core.errors import Unavailable
from skipper.transports.amqp_async.channel import RPC_TIMEOUT_S, Channel, ChannelGone, Connection, rpc
from skipper.transports.amqp_async.stream import LoopStreamServices

CONNECT_TIMEOUT_S = 10.0
SPARE_CHANNELS = 4


class Link:
    """A connection, its long-lived channels, and its caches (declares, consumer counts).

    `on_channel_lost(link)` is called when an essential channel closes under us: the transport
    then rebuilds the whole link (simple and complete). `on_close(link, reason)` is called once
    the connection closed, for whatever reason.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, *, on_channel_lost: Callable[[Link], None]) -> None:
        self.loop = loop
        self.conn: Any = None
        self.publisher: Channel | None = None  # confirm mode: send, publish, retries, dead letters
        self.rpc: Channel | None = None  # consumes replies (RabbitMQ: direct reply-to, with the request publishes)
        self.spare: list[Channel] = []  # short RPCs that may close a channel (passive declares)
        self.declared: dict[str, asyncio.Future[None]] = {}
        self.presence: dict[str, tuple[int, float]] = {}
        self.probes: dict[str, asyncio.Future[int]] = {}
        self.opening: set[asyncio.Future[Any]] = set()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.blocked = False
        self.closing = False
        self._on_channel_lost = on_channel_lost

    @classmethod
    async def open(
        cls,
        params: pika.URLParameters,
        loop: asyncio.AbstractEventLoop,
        *,
        on_close: Callable[[Link, BaseException], None],
        on_channel_lost: Callable[[Link], None],
    ) -> Link:
        """Open a connection (one attempt, bounded by `CONNECT_TIMEOUT_S`)."""
        link = cls(loop, on_channel_lost=on_channel_lost)
        opened: asyncio.Future[None] = loop.create_future()

        def on_open(_conn: Any) -> None:
            if not opened.done():
                opened.set_result(None)

        def on_open_error(_conn: Any, exc: BaseException) -> None:
            link.on_closed(exc)
            if not opened.done():
                opened.set_exception(exc if isinstance(exc, Exception) else Unavailable(repr(exc)))

        def closed(_conn: Any, reason: BaseException) -> None:
            link.on_closed(reason)
            on_close(link, reason)

        link.conn = Connection(
            params, on_open_callback=on_open, on_open_error_callback=on_open_error, on_close_callback=closed,
            custom_ioloop=LoopStreamServices(loop),
        )
        try:
            await asyncio.wait_for(opened, CONNECT_TIMEOUT_S)
        except BaseException:
            link.abort()
            raise
        link.conn.add_on_connection_blocked_callback(lambda *_: setattr(link, "blocked", True))
        link.conn.add_on_connection_unblocked_callback(lambda *_: setattr(link, "blocked", False))
        return link

    @property
    def is_open(self) -> bool:
        return self.conn is not None and bool(self.conn.is_open) and not self.closing

    def on_closed(self, reason: BaseException | None) -> None:
        for fut in list(self.opening):
            if not fut.done():
                fut.set_exception(Unavailable(f"connection closed: {reason!r}"))
        if not self.closed.done():
            self.closed.set_result(None)

    def abort(self) -> None:
        """Close the connection, whatever state it is in."""
        self.closing = True
        if self.conn is not None and not (self.conn.is_closed or self.conn.is_closing):
            with contextlib.suppress(pika.exceptions.AMQPError):
                self.conn.close()

    def channel_lost(self, _channel: Channel) -> None:
        self._on_channel_lost(self)

    async def open_channel(self, *, essential: bool) -> Channel:
        """A new channel; if `essential`, its closing under us rebuilds the link."""
        loop = self.loop
        fut: asyncio.Future[Channel] = loop.create_future()
        on_lost = self.channel_lost if essential else None

        def on_open(raw: Any) -> None:
            # Wrap at once, so a close right after the open is never missed.
            channel = Channel(raw, loop, on_lost)
            if fut.done():
                channel.close()
            else:
                fut.set_result(channel)

        self.opening.add(fut)
        try:
            self.conn.channel(on_open_callback=on_open)
            return await asyncio.wait_for(fut, RPC_TIMEOUT_S)
        except pika.exceptions.AMQPError as exc:
            raise Unavailable(f"cannot open a RabbitMQ channel: {exc!r}") from exc
        except TimeoutError as exc:
            raise Unavailable("RabbitMQ did not open a channel in time") from exc
        finally:
            self.opening.discard(fut)

    async def open_publisher(self) -> Channel:
        """The link's publisher channel: confirm mode; a returned `mandatory` publish fails its confirm (`Unroutable`)."""
        self.publisher = publisher = await self.open_channel(essential=True)
        await rpc(publisher, lambda cb: publisher.raw.confirm_delivery(publisher.on_confirm, callback=cb))
        publisher.raw.add_on_return_callback(publisher.on_return)
        return publisher

    async def once(self, key: str, make: Callable[[], Awaitable[None]]) -> None:
        """Run `make()` once on this link for `key` (a declare, a binding); concurrent callers share the
        one run, and a failed run is forgotten, so the next caller tries again."""
        fut = self.declared.get(key)
        if fut is None:
            fut = self.declared[key] = asyncio.ensure_future(make())

            def forget_failure(done: asyncio.Future[None]) -> None:
                # Reading the exception also marks it seen: its awaiters may all have been cancelled.
                if (done.cancelled() or done.exception() is not None) and self.declared.get(key) is done:
                    del self.declared[key]

            fut.add_done_callback(forget_failure)
        await asyncio.shield(fut)

    async def declare(self, key: str, invoke: Callable[[Channel, Callable[[Any], None]], object]) -> None:
        """One declare per link for `key`, on a spare channel (a refused declare closes only that channel)."""

        async def run() -> None:
            channel = await self.borrow()
            try:
                await rpc(channel, lambda cb: invoke(channel, cb))
            finally:
                self.give_back(channel)

        await self.once(key, run)

    async def consumer_count(self, queue: str) -> int:
        """Consumers of `queue` now (a passive declare); 0 when the queue does not exist."""
        channel = await self.borrow()
        try:
            frame = await rpc(channel, lambda cb: channel.raw.queue_declare(queue, passive=True, callback=cb))
            return int(frame.method.consumer_count)
        except ChannelGone as gone:
            if gone.reply_code != 404:
                raise
            return 0  # the queue does not exist: nobody consumes it
        finally:
            self.give_back(channel)

    async def borrow(self) -> Channel:
        """A spare channel for a short RPC that may close it (give it back after)."""
        while self.spare:
            channel = self.spare.pop()
            if channel.is_open:
                return channel
        return await self.open_channel(essential=False)

    def give_back(self, channel: Channel) -> None:
        if channel.is_open and self.is_open and len(self.spare) < SPARE_CHANNELS:
            self.spare.append(channel)
        else:
            channel.close()
