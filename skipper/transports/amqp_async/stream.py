"""pika on the event loop's own socket transport, instead of pika's Python one.

pika's asyncio adapter drives the socket itself: it watches the descriptor with
`add_reader`, reads with `sock.recv` in Python, and for every write registers a writer
callback (`add_writer`, an `epoll_ctl` each way) and sends on the next loop iteration.
So every message published waits one loop iteration before it leaves, and costs two extra
system calls and pika's Python read and write paths.

pika's stream protocol and transport interfaces are declared as a subset of asyncio's
(`pika.adapters.utils.nbio_interface`), for exactly this use: here the connected socket
pika made is handed to `loop.create_connection(sock=...)`, so the loop's transport (uvloop's,
in C, in every Skipper process) reads and writes it. A write goes out at once when the
socket takes it (asyncio's rule), and is buffered by the transport otherwise. Everything
above the stream (the AMQP handshake, heartbeats, TLS by pika's `SSLOptions`, the
connection workflow) is pika's, unchanged.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable
from typing import Any

from pika.adapters.asyncio_connection import _AsyncioIOServicesAdapter

StreamDone = Callable[[Any], None]  # (transport, protocol) on success, the exception on failure


class _Stream(asyncio.Protocol):
    """asyncio's protocol callbacks passed to pika's stream protocol (its own interface is their subset)."""

    def __init__(self, pika_protocol: Any) -> None:
        self.pika = pika_protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.pika.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.pika.data_received(data)

    def eof_received(self) -> bool | None:
        result: bool | None = self.pika.eof_received()
        return result

    def connection_lost(self, exc: Exception | None) -> None:
        self.pika.connection_lost(exc)

    # pause_writing / resume_writing stay asyncio's no-ops: pika has no write flow control (nor
    # does its own transport), and the write buffer only grows while the broker reads slowly.


class LoopStreamServices(_AsyncioIOServicesAdapter):  # type: ignore[misc]  # pika is untyped
    """pika's asyncio I/O services, with streams on the loop's own transport (see the module docstring)."""

    def create_streaming_connection(
        self,
        protocol_factory: Callable[[], Any],
        sock: socket.socket,
        on_done: StreamDone,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> Any:
        async def link_up() -> tuple[asyncio.BaseTransport, Any]:
            pika_protocol = protocol_factory()
            try:
                transport, _ = await self._loop.create_connection(
                    lambda: _Stream(pika_protocol), sock=sock, ssl=ssl_context,
                    server_hostname=server_hostname if ssl_context is not None else None)
            except BaseException:
                sock.close()  # this method owns the socket, as pika's own does
                raise
            return transport, pika_protocol

        return self._schedule_and_wrap_in_io_ref(link_up(), on_done)
