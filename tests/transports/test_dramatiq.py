"""What the Dramatiq transport adds to the conformance suite: Dramatiq's middleware configured
from Skipper's settings, dead-lettering, and redelivery when a worker dies; on both brokers."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Protocol

import dramatiq.broker
import pika
import pika.exceptions
import pytest
import redis
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.middleware import Retries

from skipper.core import contracts
from skipper.core.bus import BusOptions
from skipper.core.errors import ConfigError, NoConsumers, RequestTimeout, Unavailable
from skipper.core.messages import Message, new_id
from skipper.transports.dramatiq import DramatiqTransport, SkipperEncoder
from tests.conftest import eventually, holds_for
from tests.drops import drop_rabbitmq, require_rabbitmqctl
from tests.services import RABBITMQ_URL, REDIS_URL
from tests.transports.factory_dramatiq import URLS, build, close_and_clean, require

ROOT = Path(__file__).resolve().parents[2]


class Make(Protocol):
    namespace: str

    def __call__(self, **options: Any) -> DramatiqTransport: ...


class _Make:
    """Builds transports on one test namespace (each a separate "process"); cleans up after."""

    def __init__(self, broker: str, **transport_kwargs: Any) -> None:
        self.broker = broker
        self.namespace = f"test-dq-{new_id()[:12]}"
        self.transport_kwargs = transport_kwargs
        self.built: list[DramatiqTransport] = []

    def __call__(self, **options: Any) -> DramatiqTransport:
        base: dict[str, Any] = {"namespace": self.namespace, "retry_backoff_s": 0.05, "retry_backoff_max_s": 0.2}
        transport = build(self.broker, BusOptions(**{**base, **options}), **self.transport_kwargs)
        self.built.append(transport)
        return transport


@pytest.fixture(params=["rabbitmq", "redis"])
def broker(request: pytest.FixtureRequest) -> str:
    require(request.param)
    return str(request.param)


@pytest.fixture
async def make(broker: str) -> AsyncIterator[Make]:
    # On Redis, Dramatiq requeues a dead worker's messages once it missed heartbeats for
    # `heartbeat_s`, found by "maintenance" that runs on a share of commands: always, here.
    maker = _Make(broker, redis_maintenance_chance=1_000_000)
    yield maker
    await close_and_clean(broker, maker.built)


def redis_count(read: Callable[[redis.Redis], Any]) -> int:
    """One count read from the test Redis."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        return int(read(client))
    finally:
        client.close()


def dead_letter_count(bus: DramatiqTransport, queue: str) -> int:
    """Messages in Dramatiq's dead-letter queue (`<queue>.XQ`) of a logical queue."""
    name = bus.qualified(queue)
    if bus.kind == "rabbitmq":
        assert isinstance(bus.broker, RabbitmqBroker)
        return bus.broker.get_queue_message_counts(name)[2]
    return redis_count(lambda client: client.zcard(f"skipper:{bus.options.namespace}:{name}.XQ"))


def ready_count(bus: DramatiqTransport, queue: str) -> int:
    """Messages of a logical queue still waiting in the broker (not yet delivered to a consumer)."""
    name = bus.qualified(queue)
    if bus.kind == "rabbitmq":
        assert isinstance(bus.broker, RabbitmqBroker)
        return bus.broker.get_queue_message_counts(name)[0]
    return redis_count(lambda client: client.llen(f"skipper:{bus.options.namespace}:{name}"))


async def wait_until_prefetched(bus: DramatiqTransport, queue: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while await asyncio.to_thread(ready_count, bus, queue) != 0:
        assert time.monotonic() < deadline, f"{queue} was never prefetched"
        await asyncio.sleep(0.02)


async def test_a_message_that_exhausts_its_retries_is_dead_lettered_by_the_broker_and_reported(make: Make) -> None:
    # Given a handler that always fails, one retry allowed, and a dead-letter consumer
    bus = make(max_retries=1)
    attempts: list[int] = []
    reports: list[Message] = []

    async def broken(msg: Message) -> None:
        attempts.append(msg.attempt)
        raise ValueError("disk on fire")

    async def on_dead_letter(msg: Message) -> None:
        reports.append(msg)

    bus.consume("broken", broken)
    bus.consume(contracts.DEAD_LETTERS, on_dead_letter)
    await bus.start()
    # When a message is sent
    await bus.send("broken", Message(type="job", body={"task_id": "t9"}, correlation_id="corr-9"))
    # Then it ran twice, the report names the error, and the message sits in Dramatiq's dead-letter queue
    await eventually(lambda: len(reports) == 1)
    assert attempts == [0, 1]
    assert reports[0].data["attempts"] == 2
    assert reports[0].data["error"] == "ValueError: disk on fire"
    assert reports[0].correlation_id == "corr-9"
    deadline = time.monotonic() + 5
    while await asyncio.to_thread(dead_letter_count, bus, "broken") != 1:
        assert time.monotonic() < deadline, "the message never reached the dead-letter queue"
        await asyncio.sleep(0.05)


async def test_the_time_limit_from_the_settings_interrupts_a_handler_that_is_then_retried(make: Make) -> None:
    # Given a 0.3 s time limit and a handler that hangs on its first attempt
    bus = make(time_limit_s=0.3, max_retries=2)
    attempts: list[int] = []
    cancelled: list[int] = []

    async def hangs_once(msg: Message) -> None:
        attempts.append(msg.attempt)
        if msg.attempt == 0:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.append(msg.attempt)
                raise

    bus.consume("slow", hangs_once)
    await bus.start()
    assert bus.broker.get_actor(bus.qualified("slow")).options["time_limit"] == 300
    # When a message is sent
    started = time.monotonic()
    await bus.send("slow", Message(type="job"))
    # Then Dramatiq's TimeLimit stops the first attempt (cancelling the coroutine) and retries it
    await eventually(lambda: attempts == [0, 1], timeout=10)
    assert cancelled == [0]
    assert time.monotonic() - started < 5


async def test_the_retry_backoff_is_the_base_policys_from_the_bus_options(make: Make) -> None:
    # Given a transport whose retry backoff is 0.6 s (at least and at most), and no Dramatiq Retries
    bus = make(max_retries=1, retry_backoff_s=0.6, retry_backoff_max_s=0.6)
    assert not any(isinstance(m, Retries) for m in bus.broker.middleware)
    seen: list[float] = []

    async def fails_once(msg: Message) -> None:
        seen.append(time.monotonic())
        if msg.attempt == 0:
            raise RuntimeError("transient")

    bus.consume("backoff", fails_once)
    await bus.start()
    # When its handler fails once
    await bus.send("backoff", Message(type="job"))
    await eventually(lambda: len(seen) == 2)
    # Then the retry waited the base policy's backoff (`BusOptions.backoff(0)` = 0.6 s), as on every transport
    assert bus.options.backoff(0) == 0.6
    assert 0.55 <= seen[1] - seen[0] < 3.0


async def test_a_message_older_than_the_max_age_is_dead_lettered_without_running(make: Make) -> None:
    # Given a message that waits longer than max_age_s before anyone consumes its queue
    await make(max_age_s=0.2).send("stale", Message(type="job", body={"n": 1}))
    await asyncio.sleep(0.4)
    ran: list[Message] = []
    reports: list[Message] = []

    async def handle(msg: Message) -> None:
        ran.append(msg)

    async def on_dead_letter(msg: Message) -> None:
        reports.append(msg)

    # When a consumer starts
    bus = make(max_age_s=0.2)
    bus.consume("stale", handle)
    bus.consume(contracts.DEAD_LETTERS, on_dead_letter)
    await bus.start()
    # Then Dramatiq's AgeLimit drops it unhandled, and it is reported
    await eventually(lambda: len(reports) == 1)
    assert ran == []
    assert reports[0].data["queue"] == "stale"
    assert "age limit" in reports[0].data["error"]


async def test_a_request_fails_with_no_consumers_once_the_only_consumer_closed(make: Make) -> None:
    # Given a consumer that served a request, then closed
    server, client = make(), make()

    async def echo(msg: Message) -> Message:
        return msg.reply({"ok": True})

    server.consume("echo", echo)
    await server.start()
    await client.start()
    assert (await client.request("echo", Message(type="q"), timeout=5)).data == {"ok": True}
    await server.close()
    # When the client asks again, Then it learns at once that nobody is there
    started = time.monotonic()
    with pytest.raises(NoConsumers):
        await client.request("echo", Message(type="q"), timeout=10)
    assert time.monotonic() - started < 2.0


def waiting_beside(bus: DramatiqTransport, queue: str) -> int:
    """Requests of a logical queue waiting beside Dramatiq (not yet taken by a consumer)."""
    name = bus.qualified(queue)
    if bus.kind == "rabbitmq":
        connection = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
        try:
            return int(connection.channel().queue_declare(f"{name}.requests", passive=True).method.message_count)
        except pika.exceptions.ChannelClosedByBroker:
            return 0  # deleted with its last consumer
        finally:
            connection.close()
    return redis_count(lambda client: client.llen(f"skipper:{bus.options.namespace}:requests:{name}"))


def _waiting_requests(bus: DramatiqTransport, queue: str) -> tuple[int, int]:
    """(requests waiting in Dramatiq's own queue, requests waiting beside it)."""
    return ready_count(bus, queue), waiting_beside(bus, queue)


async def test_requests_skip_dramatiqs_queue_are_held_up_to_the_prefetch_and_leave_nothing_behind(make: Make) -> None:
    # Given a server holding one request at a time (prefetch 1), busy with the first
    server, client = make(), make()
    release = asyncio.Event()
    seen: list[int] = []

    async def slow(msg: Message) -> Message:
        seen.append(msg.data["n"])
        await release.wait()
        return msg.reply({"n": msg.data["n"]})

    server.consume("slow", slow, prefetch=1)
    await server.start()
    await client.start()
    try:
        first = asyncio.create_task(client.request("slow", Message(type="q", body={"n": 1}), timeout=5))
        await eventually(lambda: seen == [1])
        # When a second request waits behind it longer than its caller does
        second = asyncio.create_task(client.request("slow", Message(type="q", body={"n": 2}), timeout=0.5))
        await asyncio.sleep(0.2)
        # Then it waits beside Dramatiq (whose consumer may poll), not in Dramatiq's queue, nor here
        assert await asyncio.to_thread(_waiting_requests, server, "slow") == (0, 1)
        assert seen == [1]
        with pytest.raises(RequestTimeout):
            await second
        # And the broker drops it with its timeout
        await eventually(lambda: _waiting_requests(server, "slow") == (0, 0), timeout=5)
        # And the first is answered once its handler finishes; the expired one never runs
        release.set()
        assert (await first).data == {"n": 1}
        assert (await client.request("slow", Message(type="q", body={"n": 3}), timeout=5)).data == {"n": 3}
        assert seen == [1, 3]
    finally:
        release.set()


CHILD = """
import asyncio, sys
from skipper.core.bus import BusOptions
from skipper.transports.dramatiq import DramatiqTransport

async def main() -> None:
    bus = DramatiqTransport(BusOptions(namespace=sys.argv[2], heartbeat_s=1), url=sys.argv[1], poll_interval_s=0.05)

    async def hang(msg):
        print("handling", msg.data["n"], flush=True)
        await asyncio.sleep(3600)

    bus.consume("crash", hang, prefetch=1)
    await bus.start()
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def kill_mid_handler(broker: str, make: Make, body: dict[str, Any]) -> None:
    """Send a message, let a worker in another process start it, and kill that process."""
    await make().send("crash", Message(type="job", body=body))
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, URLS[broker], make.namespace,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(child.stdout.readline(), 30)
        assert line.split() == [b"handling", str(body["n"]).encode()]
    finally:
        child.kill()
        await child.wait()


async def test_a_message_whose_worker_is_killed_mid_handler_runs_again_as_the_next_attempt(
    broker: str, make: Make
) -> None:
    # Given a message whose worker, in another process, is killed while handling it
    await kill_mid_handler(broker, make, {"n": 7})
    got: list[Message] = []

    async def handle(msg: Message) -> None:
        got.append(msg)

    # When another worker consumes the queue
    survivor = make(heartbeat_s=1, max_retries=2)
    survivor.consume("crash", handle)
    await survivor.start()
    # Then it gets the message (RabbitMQ requeues it at once; Redis once the dead worker's
    # heartbeat is older than heartbeat_s), counted as a second attempt
    await eventually(lambda: len(got) == 1, timeout=15)
    assert got[0].data == {"n": 7}
    assert got[0].attempt == 1
    await holds_for(lambda: len(got) == 1)


async def test_a_message_that_kills_its_consumer_with_no_retries_left_is_dead_lettered(
    broker: str, make: Make
) -> None:
    # Given a message whose worker is killed while handling it, and no retries allowed
    await kill_mid_handler(broker, make, {"n": 8})
    ran: list[Message] = []
    reports: list[Message] = []

    async def handle(msg: Message) -> None:
        ran.append(msg)

    async def on_dead_letter(msg: Message) -> None:
        reports.append(msg)

    # When another worker consumes the queue
    survivor = make(heartbeat_s=1, max_retries=0)
    survivor.consume("crash", handle)
    survivor.consume(contracts.DEAD_LETTERS, on_dead_letter)
    await survivor.start()
    # Then it is dead-lettered and reported instead of taking another consumer down
    await eventually(lambda: len(reports) == 1, timeout=15)
    assert ran == []
    assert reports[0].data["attempts"] == 1
    assert "stopped before acknowledging" in reports[0].data["error"]


async def test_messages_a_closing_worker_prefetched_but_never_started_come_back_as_first_attempts(
    make: Make,
) -> None:
    # Given a one-thread worker that prefetched four messages and started one
    first = make(worker_threads=1)
    started = asyncio.Event()
    done: list[int] = []

    async def slow(msg: Message) -> None:
        started.set()
        await asyncio.sleep(0.3)
        done.append(msg.data["n"])

    first.consume("backlog", slow, prefetch=4)
    await first.start()
    for n in range(4):
        await first.send("backlog", Message(type="job", body={"n": n}))
    await asyncio.wait_for(started.wait(), 10)
    await wait_until_prefetched(first, "backlog")
    # When it closes gracefully (finishing the started one)
    await first.close()
    assert len(done) == 1
    got: list[Message] = []

    async def keep(msg: Message) -> None:
        got.append(msg)

    second = make()
    second.consume("backlog", keep)
    await second.start()
    # Then another worker gets the other three, none of them counted as a retry
    await eventually(lambda: len(got) == 3)
    await holds_for(lambda: len(got) == 3)
    assert sorted([m.data["n"] for m in got] + done) == [0, 1, 2, 3]
    assert [m.attempt for m in got] == [0, 0, 0]


def test_bytes_travel_raw_after_the_encoded_message_and_plain_messages_stay_json() -> None:
    encoder = SkipperEncoder()
    payload = bytes(range(256)) * 64
    data = {"queue_name": "q", "args": [{"body": payload, "headers": {"sha256": "abc"}}], "options": {}}
    encoded = encoder.encode(data)
    # the payload is in the wire bytes as-is, not base64, and comes back intact
    assert payload in encoded
    assert len(encoded) < len(payload) + 200
    decoded = encoder.decode(encoded)
    assert decoded["args"][0]["body"] == payload
    assert decoded["args"][0]["headers"] == {"sha256": "abc"}
    assert len(repr(decoded)) < 300  # Dramatiq logs a failed message's arguments
    # a message without bytes is the inner encoder's JSON, unchanged
    plain = {"queue_name": "q", "args": [{"body": {"x": 1}}], "options": {}}
    assert json.loads(encoder.encode(plain)) == plain
    assert encoder.decode(encoder.encode(plain)) == plain


def test_each_transport_owns_its_broker_and_namespaced_actors_and_leaves_the_global_broker_alone() -> None:
    global_before = dramatiq.broker.global_broker
    options = BusOptions(namespace="ns-a")

    async def handle(msg: Message) -> None:
        return None

    # Built without I/O, so no broker needs to run
    a = DramatiqTransport(options, url=URLS["rabbitmq"])
    b = DramatiqTransport(options, url=URLS["redis"])
    a.consume("train", handle)
    b.consume("train", handle)
    assert a.broker is not b.broker
    for bus in (a, b):
        actor = bus.broker.get_actor("ns-a.train")
        assert actor.queue_name == "ns-a.train"
        assert actor.options["max_retries"] == options.max_retries
    assert dramatiq.broker.global_broker is global_before


def test_a_broker_url_that_is_neither_amqp_nor_redis_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        DramatiqTransport(BusOptions(), url="kafka://127.0.0.1:9092")


async def test_the_rabbitmq_side_channel_closed_by_the_broker_fails_requests_in_flight_then_comes_back() -> None:
    # Requests, replies and fanout ride the side connection (`<role>:dramatiq-side`), beside Dramatiq's own.
    require("rabbitmq")
    require_rabbitmqctl()
    maker = _Make("rabbitmq")
    server, client = maker(role="server"), maker(role="api")
    release = asyncio.Event()
    news: list[Any] = []

    async def answer(msg: Message) -> Message:
        if msg.data.get("hold"):
            await release.wait()
        return msg.reply({"n": msg.data["n"]})

    async def on_news(msg: Message) -> None:
        news.append(msg.data["n"])

    server.consume("rpc", answer)
    client.subscribe("news", on_news)
    try:
        await server.start()
        await client.start()
        assert (await client.request("rpc", Message(type="q", body={"n": 1}), timeout=5)).data == {"n": 1}

        # When the broker closes both side connections while a request waits for its reply
        held = asyncio.create_task(client.request("rpc", Message(type="q", body={"n": 2, "hold": True}), timeout=30))
        await asyncio.sleep(0.2)
        started = time.monotonic()
        assert await asyncio.to_thread(drop_rabbitmq, f"skipper:{maker.namespace}:api:dramatiq-side") == 1
        assert await asyncio.to_thread(drop_rabbitmq, f"skipper:{maker.namespace}:server:dramatiq-side") == 1
        # Then the request hears it at once (its reply address went with the connection), not at its timeout
        with pytest.raises(Unavailable):
            await held
        assert time.monotonic() - started < 5
        release.set()

        # And both come back by themselves: requests and fanout flow again
        await eventually(lambda: client.connected and server.connected, timeout=15)
        reply = await client.request("rpc", Message(type="q", body={"n": 3}), timeout=5)
        assert reply.data == {"n": 3}
        await server.publish("news", Message(type="n", body={"n": 4}))
        await eventually(lambda: news == [4])
    finally:
        await close_and_clean("rabbitmq", maker.built)
