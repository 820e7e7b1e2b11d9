"""Channels and the connection class: pika's callbacks turned into futures on the event loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pika
import pika.exceptions
from pika.adapters.asyncio_connection import AsyncioConnection

from skipper.core.errors import Unavailable

RPC_TIMEOUT_S = 5.0  # channel-level round trips (declare, qos, consume, cancel)
_COALESCE_MAX_BYTES = 64 * 1024  # above this, copying frames costs more than a syscall


class ChannelGone(Unavailable):
    """The channel an operation ran on closed (the broker refused it, or the link died)."""

    def __init__(self, reason: BaseException | None) -> None:
        super().__init__(f"channel closed: {reason!r}")
        self.reply_code = int(getattr(reason, "reply_code", 0) or 0)


class Unroutable(Unavailable):
    """A message published `mandatory` reached no queue (e.g. its queue was deleted)."""


class Channel:
    """A pika channel whose RPCs and confirms are futures that fail when it closes."""

    def __init__(self, raw: Any, loop: asyncio.AbstractEventLoop, on_lost: Callable[[Channel], None] | None) -> None:
        self.raw = raw
        self._loop = loop
        self._on_lost = on_lost
        self._waiters: set[asyncio.Future[Any]] = set()
        self._confirms: dict[int, asyncio.Future[None]] = {}
        self._mandatory: dict[int, str | None] = {}  # tag -> message id, for mandatory publishes
        self._returned: set[int] = set()
        self._published = 0
        self.closed_by_us = False
        raw.add_on_close_callback(self._on_close)

    @property
    def is_open(self) -> bool:
        return bool(self.raw.is_open)

    def expect(self) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._waiters.add(fut)
        fut.add_done_callback(self._waiters.discard)
        return fut

    def publish(self, exchange: str, routing_key: str, body: bytes, props: Any, *, mandatory: bool = False) -> None:
        try:
            self.raw.basic_publish(exchange, routing_key, body, props, mandatory=mandatory)
        except pika.exceptions.AMQPError as exc:
            raise Unavailable(f"cannot publish to RabbitMQ: {exc!r}") from exc

    def publish_confirmed(
        self, exchange: str, routing_key: str, body: bytes, props: Any, *, mandatory: bool = False
    ) -> asyncio.Future[None]:
        """Publish on a channel in confirm mode; the future settles with the broker's ack.

        With `mandatory`, a message no queue took fails with `Unroutable` instead.
        """
        self.publish(exchange, routing_key, body, props, mandatory=mandatory)
        self._published += 1
        fut: asyncio.Future[None] = self._loop.create_future()
        self._confirms[self._published] = fut
        if mandatory:
            self._mandatory[self._published] = props.message_id
        return fut

    def on_return(self, _raw: Any, _method: Any, props: Any, _body: bytes) -> None:
        # The broker sends basic.return just before the ack of the same message, which
        # names no delivery tag: match the oldest unconfirmed mandatory publish of that id.
        for tag, message_id in self._mandatory.items():
            if message_id == props.message_id and tag not in self._returned:
                self._returned.add(tag)
                return

    def on_confirm(self, frame: Any) -> None:
        method = frame.method
        ok = isinstance(method, pika.spec.Basic.Ack)
        if method.multiple:
            # Tags are inserted in increasing order, so the oldest come first.
            while self._confirms:
                tag = next(iter(self._confirms))
                if tag > method.delivery_tag:
                    break
                self._settle(tag, self._confirms.pop(tag), ok)
        else:
            fut = self._confirms.pop(method.delivery_tag, None)
            if fut is not None:
                self._settle(method.delivery_tag, fut, ok)

    def _settle(self, tag: int, fut: asyncio.Future[None], ok: bool) -> None:
        self._mandatory.pop(tag, None)
        returned = tag in self._returned
        self._returned.discard(tag)
        if fut.done():
            return
        if returned:
            fut.set_exception(Unroutable("no queue took the message"))
        elif ok:
            fut.set_result(None)
        else:
            fut.set_exception(Unavailable("RabbitMQ refused the message (nack)"))

    def held(self) -> contextlib.AbstractContextManager[None]:
        """Frames written on this channel's connection inside the block leave in one write (`Connection.held`)."""
        connection: Connection = self.raw.connection  # every Link opens one of ours
        return connection.held()

    def ack(self, delivery_tag: int) -> None:
        """Ack on this channel if it is still open; a closed channel's deliveries were requeued."""
        if self.raw.is_open:
            with contextlib.suppress(pika.exceptions.AMQPError):
                self.raw.basic_ack(delivery_tag)

    def close(self) -> None:
        self.closed_by_us = True
        if self.raw.is_open:
            with contextlib.suppress(pika.exceptions.AMQPError):
                self.raw.close()

    def _on_close(self, _raw: Any, reason: BaseException) -> None:
        err = ChannelGone(reason)
        pending = [*self._waiters, *self._confirms.values()]
        self._confirms.clear()
        self._mandatory.clear()
        self._returned.clear()
        for fut in pending:
            if not fut.done():
                fut.set_exception(err)
        if self._on_lost is not None and not self.closed_by_us:
            self._on_lost(self)


class Connection(AsyncioConnection):  # type: ignore[misc]  # pika is untyped
    """pika's asyncio connection, writing each published message as one buffer.

    pika hands the transport a message's method, header and body frames separately, and
    the transport then makes one `send()` system call per frame; joining the frames of one
    small message first roughly halves the syscalls on the request path. `held()` goes
    further for what is written together: a server's reply and the ack of the request
    leave in one write, one system call and one wake-up of the broker instead of two.
    """

    _held: list[bytes] | None = None

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Everything written inside leaves in one write at the end (a reply and the ack of its request)."""
        if self._held is not None:  # already holding: the outermost block writes
            yield
            return
        self._held = []
        try:
            yield
        finally:
            held, self._held = self._held, None
            if held and self._transport is not None:
                self._adapter_emit_data(b"".join(held))

    def _output_marshaled_frames(self, marshaled_frames: list[bytes]) -> None:
        if self._held is not None:
            self._held.extend(marshaled_frames)
            self.bytes_sent += sum(map(len, marshaled_frames))
            self.frames_sent += len(marshaled_frames)
            return
        if len(marshaled_frames) > 1 and sum(map(len, marshaled_frames)) <= _COALESCE_MAX_BYTES:
            data = b"".join(marshaled_frames)
            self.bytes_sent += len(data)
            self.frames_sent += len(marshaled_frames)
            self._adapter_emit_data(data)
        else:
            super()._output_marshaled_frames(marshaled_frames)



async def rpc(channel: Channel, invoke: Callable[[Callable[[Any], None]], object], *, timeout: float = RPC_TIMEOUT_S) -> Any:
    """Run one synchronous AMQP method; fails with `ChannelGone` if the channel closes."""
    fut = channel.expect()

    def done(frame: Any) -> None:
        if not fut.done():
            fut.set_result(frame)

    try:
        invoke(done)
    except pika.exceptions.AMQPError as exc:
        fut.cancel()
        raise Unavailable(f"RabbitMQ channel unusable: {exc!r}") from exc
    try:
        return await asyncio.wait_for(fut, timeout)
    except TimeoutError as exc:
        raise Unavailable("RabbitMQ did not answer in time") from exc
