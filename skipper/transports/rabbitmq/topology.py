"""Broker objects and publishing: the per-connection declare cache, confirmed publishes, consumer counts.

For a namespace `ns`, a logical queue `q` and a topic `t`: `ns.q` (durable work queue),
`ns.q.retry.<ms>` (delay queues), `ns.q.dlq` (dead letters), `ns.t` (fanout exchange).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from skipper.core.errors import Unavailable
from skipper.core.messages import Message
from skipper.transports.amqp_async.channel import Unroutable
from skipper.transports.amqp_async.link import Link
from skipper.transports.rabbitmq.wire import encode

PRESENCE_TTL_S = 1.0  # how long a positive consumer count is trusted without a new check
PRESENCE_REFRESH_S = 0.25  # past this age a positive count is refreshed in the background


def retrieve(fut: asyncio.Future[Any]) -> None:
    """Mark a background future's failure as seen (it is logged where it matters)."""
    if not fut.cancelled():
        fut.exception()


class Topology:
    """Declares (once per connection; concurrent callers share one round trip) and publishes."""

    def __init__(self, *, confirm_timeout_s: float) -> None:
        self.confirm_timeout_s = confirm_timeout_s
        self.objects: set[tuple[str, str]] = set()  # ("queue" | "exchange", name), for cleanup tools

    # --- declares ----------------------------------------------------------------------

    async def declare_queue(self, link: Link, name: str, arguments: dict[str, Any] | None = None) -> None:
        self.objects.add(("queue", name))
        await link.declare(
            f"queue:{name}",
            lambda ch, cb: ch.raw.queue_declare(name, durable=True, arguments=arguments, callback=cb),
        )

    async def declare_exchange(self, link: Link, name: str) -> None:
        self.objects.add(("exchange", name))
        await link.declare(
            f"exchange:{name}",
            lambda ch, cb: ch.raw.exchange_declare(name, exchange_type="fanout", durable=True, callback=cb),
        )

    # --- publishing --------------------------------------------------------------------

    async def publish_to_queue(
        self,
        link: Link,
        name: str,
        msg: Message,
        *,
        arguments: dict[str, Any] | None = None,
        extra_headers: dict[str, Any] | None = None,
    ) -> None:
        """Declare `name` (once per connection) and publish a persistent message to it, confirmed.

        Published `mandatory`: if the queue was deleted behind the declare cache, the message
        comes back, and the queue is declared again and the message republished once.
        """
        for last_try in (False, True):
            await self.declare_queue(link, name, arguments)
            try:
                await self.publish_confirmed(link, "", name, msg, mandatory=True, extra_headers=extra_headers)
                return
            except Unroutable:
                link.declared.pop(f"queue:{name}", None)
                if last_try:
                    raise

    async def publish_confirmed(
        self,
        link: Link,
        exchange: str,
        routing_key: str,
        msg: Message,
        *,
        persistent: bool = True,
        mandatory: bool = False,
        extra_headers: dict[str, Any] | None = None,
    ) -> None:
        assert link.publisher is not None
        body, props = encode(msg, persistent=persistent, extra_headers=extra_headers)
        await self.confirm(link.publisher.publish_confirmed(exchange, routing_key, body, props, mandatory=mandatory))

    async def confirm(self, confirmed: asyncio.Future[None]) -> None:
        try:
            await asyncio.wait_for(confirmed, self.confirm_timeout_s)
        except TimeoutError as exc:
            raise Unavailable(f"RabbitMQ did not confirm within {self.confirm_timeout_s:g}s") from exc

    # --- consumer counts (for NoConsumers) ---------------------------------------------

    async def has_consumer(self, link: Link, name: str) -> bool:
        """Whether `name` has a consumer: a positive count is cached for `PRESENCE_TTL_S`, zero never is."""
        seen = link.presence.get(name)
        if seen is not None and seen[0] > 0:
            age = time.monotonic() - seen[1]
            if age < PRESENCE_TTL_S:
                if age > PRESENCE_REFRESH_S and name not in link.probes:
                    # Registered synchronously, so the requests of one loop tick start a single probe.
                    self._start_probe(link, name)
                return True
        return await asyncio.shield(link.probes.get(name) or self._start_probe(link, name)) > 0

    def _start_probe(self, link: Link, name: str) -> asyncio.Future[int]:
        probe = asyncio.ensure_future(self._probe(link, name))
        link.probes[name] = probe
        probe.add_done_callback(lambda _: link.probes.pop(name, None))
        probe.add_done_callback(retrieve)  # its awaiters may all have been cancelled
        return probe

    async def _probe(self, link: Link, name: str) -> int:
        count = await link.consumer_count(name)
        if count > 0:
            link.presence[name] = (count, time.monotonic())
        else:
            link.presence.pop(name, None)
        return count
