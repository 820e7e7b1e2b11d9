"""The bus semantics of DESIGN.md, checked on every transport (parametrized in conftest)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from skipper.core import contracts
from skipper.core.errors import NoConsumers, RequestTimeout, ValidationFailed
from skipper.core.messages import Message
from tests.conftest import BusFactory, eventually


async def test_each_work_message_is_handled_by_exactly_one_of_two_consumers(bus_factory: BusFactory) -> None:
    # Given two competing consumers (as two processes would be)
    a, b = bus_factory(), bus_factory()
    seen: Counter[str] = Counter()
    by_consumer: Counter[str] = Counter()

    def handler(name: str):  # type: ignore[no-untyped-def]
        async def handle(msg: Message) -> None:
            seen[msg.data["n"]] += 1
            by_consumer[name] += 1
            await asyncio.sleep(0.005)

        return handle

    a.consume("work", handler("a"), prefetch=4)
    b.consume("work", handler("b"), prefetch=4)
    await a.start()
    await b.start()
    # When forty messages are sent
    for n in range(40):
        await a.send("work", Message(type="job", body={"n": str(n)}))
    # Then each is handled once
    await eventually(lambda: sum(seen.values()) >= 40)
    await asyncio.sleep(0.2)
    assert sorted(seen) == sorted(str(n) for n in range(40))
    assert set(seen.values()) == {1}


async def test_a_failing_handler_is_retried_with_the_attempt_counted(bus_factory: BusFactory) -> None:
    bus = bus_factory()
    attempts: list[int] = []

    async def flaky(msg: Message) -> None:
        attempts.append(msg.attempt)
        if len(attempts) < 3:
            raise RuntimeError("transient")

    bus.consume("flaky", flaky)
    await bus.start()
    await bus.send("flaky", Message(type="job", body={"x": 1}))
    await eventually(lambda: len(attempts) >= 3)
    await asyncio.sleep(0.3)
    assert attempts == [0, 1, 2]


async def test_a_handler_failing_every_time_is_dead_lettered_and_reported(bus_factory: BusFactory) -> None:
    bus = bus_factory(max_retries=2)
    attempts: list[int] = []
    reports: list[Message] = []

    async def broken(msg: Message) -> None:
        attempts.append(msg.attempt)
        raise ValueError("always broken")

    async def on_dead_letter(msg: Message) -> None:
        reports.append(msg)

    bus.consume("broken", broken)
    bus.consume(contracts.DEAD_LETTERS, on_dead_letter)
    await bus.start()
    await bus.send("broken", Message(type="job", body={"task_id": "t1"}, correlation_id="corr-1"))
    await eventually(lambda: len(reports) == 1)
    await asyncio.sleep(0.3)
    assert attempts == [0, 1, 2]
    report = reports[0]
    assert report.type == contracts.MESSAGE_DEAD_LETTERED
    assert report.correlation_id == "corr-1"
    assert report.data["queue"] == "broken"
    assert report.data["attempts"] == 3
    assert "always broken" in report.data["error"]
    assert report.data["body"] == {"task_id": "t1"}


async def test_request_gets_the_reply_with_the_correlation_id(bus_factory: BusFactory) -> None:
    server, client = bus_factory(), bus_factory()

    async def double(msg: Message) -> Message:
        return msg.reply({"result": msg.data["x"] * 2})

    server.consume("rpc", double)
    await server.start()
    await client.start()
    replies = await asyncio.gather(
        *(client.request("rpc", Message(type="q", body={"x": i}, correlation_id=f"c{i}"), timeout=5) for i in range(10))
    )
    assert [r.data["result"] for r in replies] == [i * 2 for i in range(10)]
    assert [r.correlation_id for r in replies] == [f"c{i}" for i in range(10)]


async def test_request_without_a_consumer_fails_at_once_with_no_consumers(bus_factory: BusFactory) -> None:
    client = bus_factory()
    await client.start()
    started = time.monotonic()
    with pytest.raises(NoConsumers):
        await client.request("nobody-home", Message(type="q"), timeout=10)
    assert time.monotonic() - started < 2.0


async def test_request_to_a_consumer_that_never_replies_times_out(bus_factory: BusFactory) -> None:
    server, client = bus_factory(), bus_factory()
    release = asyncio.Event()

    async def stuck(msg: Message) -> Message:
        await release.wait()
        return msg.reply({})

    server.consume("stuck", stuck)
    await server.start()
    await client.start()
    started = time.monotonic()
    with pytest.raises(RequestTimeout):
        await client.request("stuck", Message(type="q"), timeout=0.5)
    elapsed = time.monotonic() - started
    release.set()
    assert 0.4 < elapsed < 3.0


async def test_a_typed_error_in_a_request_handler_reaches_the_caller_typed(bus_factory: BusFactory) -> None:
    server, client = bus_factory(), bus_factory()

    async def picky(msg: Message) -> Message:
        raise ValidationFailed("instances[0] has 3 values, expected 10", details={"field": "instances[0]"})

    server.consume("picky", picky)
    await server.start()
    await client.start()
    with pytest.raises(ValidationFailed) as info:
        await client.request("picky", Message(type="q"), timeout=5)
    assert info.value.details == {"field": "instances[0]"}
    # the handler is not retried: the caller already has its answer, and the queue keeps serving
    with pytest.raises(ValidationFailed):
        await client.request("picky", Message(type="q"), timeout=5)


async def test_publish_reaches_every_subscriber(bus_factory: BusFactory) -> None:
    a, b = bus_factory(), bus_factory()
    got: dict[str, list[str]] = {"a1": [], "a2": [], "b": []}

    def recorder(name: str):  # type: ignore[no-untyped-def]
        async def record(msg: Message) -> None:
            got[name].append(msg.data["v"])

        return record

    a.subscribe("news", recorder("a1"))
    a.subscribe("news", recorder("a2"))
    b.subscribe("news", recorder("b"))
    await a.start()
    await b.start()
    await asyncio.sleep(0.2)  # let broker-side bindings settle
    for v in ("1", "2", "3"):
        await b.publish("news", Message(type="n", body={"v": v}))
    await eventually(lambda: all(len(v) == 3 for v in got.values()))
    assert got == {"a1": ["1", "2", "3"], "a2": ["1", "2", "3"], "b": ["1", "2", "3"]}


async def test_publish_without_subscribers_is_not_an_error(bus_factory: BusFactory) -> None:
    bus = bus_factory()
    await bus.start()
    await bus.publish("nobody-listens", Message(type="n", body={}))


async def test_bytes_bodies_and_headers_travel_intact(bus_factory: BusFactory) -> None:
    a, b = bus_factory(), bus_factory()
    payload = bytes(range(256)) * 1000
    received: list[Message] = []

    async def keep(msg: Message) -> None:
        received.append(msg)

    b.consume("blobs", keep)
    b.subscribe("blob-news", keep)
    await a.start()
    await b.start()
    await asyncio.sleep(0.2)
    await a.send("blobs", Message(type="artifact", body=payload, headers={"sha256": "abc", "size": len(payload)}))
    await a.publish("blob-news", Message(type="artifact", body=payload, headers={"sha256": "abc"}))
    await eventually(lambda: len(received) == 2)
    for msg in received:
        assert msg.body == payload
        assert msg.headers["sha256"] == "abc"
        assert msg.type == "artifact"


async def test_a_consumer_registered_after_start_receives_messages(bus_factory: BusFactory) -> None:
    bus = bus_factory()
    await bus.start()
    seen: list[int] = []

    async def late(msg: Message) -> None:
        seen.append(msg.data["n"])

    bus.consume("late", late)
    await asyncio.sleep(0.1)
    await bus.send("late", Message(type="job", body={"n": 7}))
    await eventually(lambda: seen == [7])


async def test_attach_takes_requests_at_once_and_detach_stops_new_ones_but_answers_those_taken(
    bus_factory: BusFactory,
) -> None:
    # Given a running server process that has not attached to the queue yet, and a client
    server, client = bus_factory(), bus_factory()
    await server.start()
    await client.start()
    with pytest.raises(NoConsumers):
        await client.request("model.a", Message(type="q", body={"n": 0}), timeout=5)
    release = asyncio.Event()

    async def answer(msg: Message) -> Message:
        if msg.data["n"] == 2:
            await release.wait()
        return msg.reply({"n": msg.data["n"]})

    # When it attaches, the next request is served (attach returns once the broker has it)
    await server.attach("model.a", answer)
    assert (await client.request("model.a", Message(type="q", body={"n": 1}), timeout=5)).data == {"n": 1}
    # And when it detaches with a request in flight, that request is still answered
    in_flight = asyncio.create_task(client.request("model.a", Message(type="q", body={"n": 2}), timeout=10))
    await asyncio.sleep(0.5)
    await server.detach("model.a")
    release.set()
    assert (await in_flight).data == {"n": 2}
    # but new requests find no consumer
    await asyncio.sleep(1.2)  # past any cached consumer count
    with pytest.raises(NoConsumers):
        await client.request("model.a", Message(type="q", body={"n": 3}), timeout=5)


async def test_close_waits_for_in_flight_handlers_and_is_idempotent(bus_factory: BusFactory) -> None:
    bus = bus_factory()
    started, finished = asyncio.Event(), asyncio.Event()

    async def slow(msg: Message) -> None:
        started.set()
        await asyncio.sleep(0.3)
        finished.set()

    bus.consume("slow", slow)
    await bus.start()
    await bus.send("slow", Message(type="job"))
    await asyncio.wait_for(started.wait(), 10)
    await bus.close()
    assert finished.is_set()
    await bus.close()


async def test_namespaces_isolate_deployments_on_one_broker(bus_factory: BusFactory) -> None:
    ours = bus_factory()
    theirs = bus_factory(namespace=bus_factory.namespace + "-other")
    seen: list[str] = []

    async def mine(msg: Message) -> None:
        seen.append("ours")

    async def other(msg: Message) -> None:
        seen.append("theirs")

    ours.consume("shared-name", mine)
    theirs.consume("shared-name", other)
    await ours.start()
    await theirs.start()
    await ours.send("shared-name", Message(type="job"))
    await eventually(lambda: len(seen) == 1)
    await asyncio.sleep(0.2)
    assert seen == ["ours"]
