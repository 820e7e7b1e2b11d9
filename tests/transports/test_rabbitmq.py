"""RabbitMQ-specific behaviour of the transport, against the broker on this machine.

The shared semantics are in test_contract.py; here: broker-side connection
loss and recovery, redelivery after a consumer process dies, retries and dead letters kept
in the broker, `NoConsumers`/`RequestTimeout` details, and what the messages look like on
the wire.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest

from skipper.core import contracts
from skipper.core.bus import BusOptions
from skipper.core.errors import NoConsumers, RequestTimeout, Unavailable
from skipper.core.messages import Message, new_id
from skipper.transports.rabbitmq import BYTES_TYPE, JSON_TYPE, RabbitMQTransport
from tests.conftest import eventually, holds_for
from tests.services import CI, RABBITMQ_URL, require_rabbitmq
from tests.transports.factory_rabbitmq import delete_broker_objects

REPO = Path(__file__).resolve().parents[2]


class Broker:
    """Builds RabbitMQ transports on one fresh namespace and reads the broker directly."""

    def __init__(self) -> None:
        self.namespace = f"test-{new_id()[:12]}"
        self.built: list[RabbitMQTransport] = []

    def transport(
        self, *, connection_name: str | None = None, **overrides: Any
    ) -> RabbitMQTransport:
        options = {"namespace": self.namespace, "retry_backoff_s": 0.05, "retry_backoff_max_s": 0.2, "max_retries": 2}
        options.update(overrides)
        transport = RabbitMQTransport(
            BusOptions(**options),
            url=RABBITMQ_URL,
            connection_name=connection_name or f"skipper-test:{self.namespace}",
        )
        self.built.append(transport)
        return transport

    def queue(self, logical: str) -> str:
        return f"{self.namespace}.{logical}"

    async def blocking(self, work: Callable[[Any], Any]) -> Any:
        """Run `work(channel)` on a plain blocking pika connection, off the event loop."""

        def run() -> Any:
            connection = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
            try:
                return work(connection.channel())
            finally:
                connection.close()

        return await asyncio.to_thread(run)

    async def message_count(self, queue: str) -> int:
        frame = await self.blocking(lambda ch: ch.queue_declare(self.queue(queue), passive=True))
        return int(frame.method.message_count)

    async def wait_for_messages(self, queue: str, count: int, timeout: float = 10.0) -> None:
        """Wait until `queue` exists and holds `count` messages."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if await self.message_count(queue) == count:
                    return
            except pika.exceptions.ChannelClosedByBroker:
                pass  # not declared yet
            assert time.monotonic() < deadline, f"{queue} never held {count} message(s)"
            await asyncio.sleep(0.05)

    async def get(self, queue: str) -> tuple[Any, bytes]:
        """Take one message off `queue` (fails if there is none)."""
        method, props, body = await self.blocking(lambda ch: ch.basic_get(self.queue(queue), auto_ack=True))
        assert method is not None, f"queue {queue} is empty"
        return props, body


@pytest.fixture
async def broker() -> AsyncIterator[Broker]:
    require_rabbitmq()
    broker = Broker()
    yield broker
    for transport in broker.built:
        await transport.close()
    objects = {obj for transport in broker.built for obj in transport.broker_objects}
    await asyncio.to_thread(delete_broker_objects, objects)


def require_rabbitmqctl() -> None:
    if shutil.which("rabbitmqctl") is None or os.geteuid() != 0:
        if CI:
            raise RuntimeError("rabbitmqctl (as root) is needed in CI for the connection-loss test")
        pytest.skip("rabbitmqctl is not available as root")


async def rabbitmqctl(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        "rabbitmqctl", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, f"rabbitmqctl {' '.join(args)} failed: {err.decode()}"
    return out.decode()


async def close_connections_named(name: str) -> int:
    """Close, from the broker side, only the connections whose client gave them `name`."""
    listing = await rabbitmqctl("list_connections", "pid", "client_properties", "-q", "--no-table-headers")
    pids = [line.split("\t")[0] for line in listing.splitlines() if f'{{"connection_name","{name}"}}' in line]
    await asyncio.gather(*(rabbitmqctl("close_connection", pid, "skipper test: broker-side close") for pid in pids))
    return len(pids)


# A consumer in its own process, killed mid-handler by the test (a trainer dying mid-run).
CONSUMER_PROCESS = """
import asyncio, sys
from skipper.core.bus import BusOptions
from skipper.transports.rabbitmq import RabbitMQTransport

async def main(url, namespace):
    bus = RabbitMQTransport(BusOptions(namespace=namespace), url=url)
    async def hang(msg):
        print("started", msg.attempt, flush=True)
        await asyncio.Event().wait()
    bus.consume("train", hang, prefetch=1)
    await bus.start()
    await asyncio.Event().wait()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


async def run_consumer_until_it_starts_then_kill_it(namespace: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CONSUMER_PROCESS, RABBITMQ_URL, namespace,
        stdout=asyncio.subprocess.PIPE, cwd=REPO, env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line.decode().split() == ["started", "0"], line
    finally:
        proc.kill()  # SIGKILL: no ack, no clean close; the broker sees the socket die
        await proc.wait()


# --- connection loss -----------------------------------------------------------------------


async def test_a_connection_closed_by_the_broker_is_reestablished_and_work_flows_again(broker: Broker) -> None:
    require_rabbitmqctl()
    name = f"skipper-test-recovery-{new_id()[:8]}"
    server = broker.transport(connection_name=name)
    client = broker.transport(connection_name=name)
    connects: Counter[str] = Counter()
    jobs: list[int] = []

    async def echo(msg: Message) -> Message:
        return msg.reply({"echo": msg.data["n"]})

    async def job(msg: Message) -> None:
        jobs.append(msg.data["n"])

    async def server_connected() -> None:
        connects["server"] += 1

    async def client_connected() -> None:
        connects["client"] += 1

    server.on_connected(server_connected)
    client.on_connected(client_connected)
    server.consume("echo", echo)
    server.consume("jobs", job)
    await server.start()
    await client.start()
    assert connects == {"server": 1, "client": 1}
    assert (await client.request("echo", Message(type="q", body={"n": 1}), timeout=5)).data == {"echo": 1}

    # When the broker closes both connections
    closing = asyncio.create_task(close_connections_named(name))
    deadline = time.monotonic() + 15
    while client.connected:
        assert time.monotonic() < deadline, "the broker-side close was not noticed"
        await asyncio.sleep(0.001)
    # Then, while down (the first reconnect waits at least 0.1 s), calls fail at once
    started = time.monotonic()
    with pytest.raises(Unavailable):
        await client.send("jobs", Message(type="job", body={"n": 0}))
    with pytest.raises(Unavailable):
        await client.request("echo", Message(type="q", body={"n": 0}), timeout=5)
    with pytest.raises(Unavailable):
        await client.publish("news", Message(type="n"))
    assert time.monotonic() - started < 0.5
    assert await closing == 2

    # And both come back by themselves, notify their listeners again, and work flows
    await eventually(lambda: client.connected and server.connected, timeout=15)
    await eventually(lambda: connects == {"server": 2, "client": 2}, timeout=5)
    assert (await client.request("echo", Message(type="q", body={"n": 2}), timeout=5)).data == {"echo": 2}
    await client.send("jobs", Message(type="job", body={"n": 3}))
    await eventually(lambda: jobs == [3])


async def test_a_handler_running_longer_than_the_heartbeat_keeps_its_connection(broker: Broker) -> None:
    # Given a one-second heartbeat and a handler that works for three seconds in a worker
    # thread (as training does)
    bus = broker.transport(heartbeat_s=1)
    connects: list[int] = []
    handled: list[int] = []

    async def count_connect() -> None:
        connects.append(1)

    async def train(msg: Message) -> None:
        await asyncio.to_thread(time.sleep, 3.0)
        handled.append(msg.attempt)

    bus.on_connected(count_connect)
    bus.consume("train", train, prefetch=1)
    await bus.start()
    await bus.send("train", Message(type="train.command"))
    await eventually(lambda: handled == [0], timeout=15)
    # Then the connection never dropped and the message was acked once, not redelivered
    await holds_for(lambda: bus.connected and connects == [1] and handled == [0])
    assert await broker.message_count("train") == 0


# --- redelivery, retries, dead letters -----------------------------------------------------


async def test_a_message_whose_consumer_process_dies_is_redelivered_and_handled_by_another(broker: Broker) -> None:
    sender = broker.transport()
    await sender.start()
    await sender.send("train", Message(type="train.command", body={"task_id": "t-7"}))
    # Given a consumer process killed while handling the message
    await run_consumer_until_it_starts_then_kill_it(broker.namespace)
    # When another consumer starts
    seen: list[tuple[int, Any]] = []

    async def train(msg: Message) -> None:
        seen.append((msg.attempt, msg.body))

    survivor = broker.transport()
    survivor.consume("train", train, prefetch=1)
    await survivor.start()
    # Then it handles the message once, counted as the second attempt
    await eventually(lambda: len(seen) == 1, timeout=15)
    await holds_for(lambda: len(seen) == 1)
    assert seen == [(1, {"task_id": "t-7"})]


async def test_a_message_that_keeps_killing_its_consumer_is_dead_lettered_without_running(broker: Broker) -> None:
    sender = broker.transport()
    await sender.start()
    await sender.send("train", Message(type="train.command", body={"task_id": "t-8"}, correlation_id="c-8"))
    await run_consumer_until_it_starts_then_kill_it(broker.namespace)
    # Given no retries allowed, when the redelivered message reaches another consumer
    ran: list[Message] = []
    reports: list[Message] = []

    async def train(msg: Message) -> None:
        ran.append(msg)

    async def on_dead_letter(msg: Message) -> None:
        reports.append(msg)

    survivor = broker.transport(max_retries=0)
    survivor.consume("train", train)
    survivor.consume(contracts.DEAD_LETTERS, on_dead_letter)
    await survivor.start()
    # Then it is dead-lettered and reported instead of being run again
    await eventually(lambda: len(reports) == 1, timeout=15)
    assert ran == []
    assert reports[0].correlation_id == "c-8"
    assert reports[0].data["queue"] == "train"
    assert reports[0].data["attempts"] == 1
    assert "stopped" in reports[0].data["error"]
    _props, body = await broker.get("train.dlq")
    assert body == b'{"task_id":"t-8"}'


async def queue_state(broker: Broker, queue: str) -> tuple[int, int]:
    """(ready, unacknowledged) messages of a queue, as the broker counts them."""
    listing = await rabbitmqctl("list_queues", "name", "messages_ready", "messages_unacknowledged", "-q",
                                "--no-table-headers")
    for line in listing.splitlines():
        name, ready, unacked = line.split("\t")
        if name == broker.queue(queue):
            return int(ready), int(unacked)
    raise AssertionError(f"no queue {queue}")


async def wait_for_state(broker: Broker, queue: str, state: tuple[int, int], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while (seen := await queue_state(broker, queue)) != state:
        assert time.monotonic() < deadline, f"{queue}: {seen}, never {state}"
        await asyncio.sleep(0.2)


@pytest.mark.parametrize("outcome", ["returns", "raises"])
async def test_a_drop_mid_handler_neither_loses_the_message_nor_runs_it_twice(broker: Broker, outcome: str) -> None:
    require_rabbitmqctl()
    name = f"skipper-test-hold-{new_id()[:8]}"
    bus = broker.transport(connection_name=name)
    release = asyncio.Event()
    runs: list[int] = []

    async def train(msg: Message) -> None:
        runs.append(msg.attempt)
        if msg.attempt == 0:
            await release.wait()
            if outcome == "raises":
                raise RuntimeError("the run failed")

    bus.consume("train", train, prefetch=1)
    await bus.start()
    await bus.send("train", Message(type="train.command", body={"task_id": "t-1"}))
    await eventually(lambda: runs == [0])
    # When the broker drops the connection while the handler runs, twice
    for _ in range(2):
        assert await close_connections_named(name) == 1
        await eventually(lambda: not bus.connected, timeout=10)
        await eventually(lambda: bus.connected, timeout=15)
        # Then the broker hands the message back, and the transport holds it unacknowledged
        await wait_for_state(broker, "train", (0, 1))
    assert runs == [0]  # not run again, not counted as an attempt
    # And when the handler ends, its outcome is settled through the copy
    release.set()
    if outcome == "returns":
        await wait_for_state(broker, "train", (0, 0))
        await holds_for(lambda: runs == [0], seconds=0.5)
    else:
        await eventually(lambda: runs == [0, 1], timeout=15)  # retried once, as attempt 1
        await wait_for_state(broker, "train", (0, 0))


async def test_a_pending_retry_is_kept_by_the_broker_and_outlives_the_consumer(broker: Broker) -> None:
    # Given a consumer whose handler fails once, with a two-second retry delay
    first = broker.transport(retry_backoff_s=2.0, retry_backoff_max_s=2.0, max_retries=1)
    failures: list[int] = []

    async def fail(msg: Message) -> None:
        failures.append(msg.attempt)
        raise RuntimeError("disk full")

    first.consume("jobs", fail)
    await first.start()
    await first.send("jobs", Message(type="job", body={"n": 1}, headers={"origin": "test"}))
    await eventually(lambda: failures == [0])
    # When that consumer goes away before the retry is due
    await first.close()
    # Then the retry waits in the broker's delay queue, not in the dead process
    assert await broker.message_count("jobs.retry.2000") == 1
    # And a new consumer gets it as attempt 1, and dead-letters it after its last failure
    reports: list[Message] = []

    async def on_dead_letter(msg: Message) -> None:
        reports.append(msg)

    second = broker.transport(retry_backoff_s=2.0, retry_backoff_max_s=2.0, max_retries=1)
    second.consume("jobs", fail)
    second.consume(contracts.DEAD_LETTERS, on_dead_letter)
    await second.start()
    await eventually(lambda: len(reports) == 1, timeout=15)
    assert failures == [0, 1]
    assert reports[0].data["attempts"] == 2
    assert "disk full" in reports[0].data["error"]
    props, body = await broker.get("jobs.dlq")
    assert body == b'{"n":1}'
    assert props.headers["x-attempt"] == 1
    assert props.headers["origin"] == "test"
    assert "disk full" in props.headers["x-skipper-error"]
    assert await broker.message_count("jobs") == 0


# --- requests ------------------------------------------------------------------------------


async def test_a_request_to_a_queue_nobody_consumes_fails_within_two_seconds(broker: Broker) -> None:
    client = broker.transport()
    await client.start()
    # A queue that does not exist, and one that exists (it holds a message) with no consumer
    await client.send("idle", Message(type="job"))
    for queue in ("missing", "idle"):
        started = time.monotonic()
        with pytest.raises(NoConsumers) as info:
            await client.request(queue, Message(type="q"), timeout=30)
        assert time.monotonic() - started < 2.0
        assert info.value.details == {"queue": queue}
    # The failed checks left the client healthy
    assert client.connected
    await client.send("idle", Message(type="job"))
    assert await broker.message_count("idle") == 2


async def test_a_request_to_a_consumer_that_never_answers_raises_request_timeout(broker: Broker) -> None:
    server, client = broker.transport(), broker.transport()
    release = asyncio.Event()

    async def stuck(msg: Message) -> Message:
        await release.wait()
        return msg.reply({})

    server.consume("stuck", stuck)
    await server.start()
    await client.start()
    started = time.monotonic()
    with pytest.raises(RequestTimeout) as info:
        await client.request("stuck", Message(type="q"), timeout=0.4)
    assert 0.3 < time.monotonic() - started < 3.0
    assert info.value.details == {"queue": "stuck", "timeout_s": 0.4}
    release.set()


async def test_a_request_after_the_last_consumer_left_fails_with_no_consumers(broker: Broker) -> None:
    server, client = broker.transport(), broker.transport()

    async def echo(msg: Message) -> Message:
        return msg.reply({"ok": True})

    server.consume("echo", echo)
    await server.start()
    await client.start()
    assert (await client.request("echo", Message(type="q"), timeout=5)).data == {"ok": True}
    await server.close()
    # The client trusted the consumer count for at most a second; then it knows again
    outcomes: list[str] = []

    async def ask() -> None:
        try:
            await client.request("echo", Message(type="q"), timeout=0.2)
        except NoConsumers:
            outcomes.append("no_consumers")
        except RequestTimeout:
            outcomes.append("timeout")

    deadline = time.monotonic() + 5
    while not outcomes or outcomes[-1] != "no_consumers":
        assert time.monotonic() < deadline, outcomes
        await ask()
    # A stale request left behind expires in the queue instead of waiting for a consumer
    await broker.wait_for_messages("echo", 0, timeout=2.0)


async def test_concurrent_requests_each_get_their_own_reply(broker: Broker) -> None:
    server, client = broker.transport(prefetch=64), broker.transport()

    async def square(msg: Message) -> Message:
        await asyncio.sleep(0.01)
        return msg.reply({"y": msg.data["x"] ** 2})

    server.consume("square", square)
    await server.start()
    await client.start()
    same = "one-correlation-for-all"  # callers may share a correlation id; replies must not mix
    replies = await asyncio.gather(
        *(client.request("square", Message(type="q", body={"x": x}, correlation_id=same), timeout=10) for x in range(200))
    )
    assert [r.data["y"] for r in replies] == [x * x for x in range(200)]


async def test_a_server_sends_each_reply_and_the_ack_of_its_request_in_one_write(broker: Broker) -> None:
    # Given a server answering requests, whose connection's writes to the broker are counted
    server, client = broker.transport(), broker.transport()
    server.consume("echo", _echo)
    await server.start()
    await client.start()
    await client.request("echo", Message(type="q", body={"n": -1}), timeout=10)  # warmed up: declared, consuming
    link = server.link
    assert link is not None and link.conn is not None
    writes: list[bytes] = []
    emit = link.conn._adapter_emit_data
    link.conn._adapter_emit_data = lambda data: (writes.append(data), emit(data))
    # When it answers ten requests, one at a time
    for n in range(10):
        reply = await client.request("echo", Message(type="q", body={"n": n}), timeout=10)
        assert reply.data == {"n": n}
    # Then each answer went out as one write: the reply (method, header, body frames) and the ack
    assert len(writes) == 10, [len(w) for w in writes]
    # And every request was acknowledged: closing the server requeues nothing
    await server.close()
    assert await broker.message_count("echo") == 0


async def _echo(msg: Message) -> Message:
    return msg.reply(dict(msg.data))


# --- on the wire ---------------------------------------------------------------------------


async def test_messages_on_the_wire_are_json_or_raw_bytes_with_the_envelope_in_properties(broker: Broker) -> None:
    bus = broker.transport()
    await bus.start()
    blob = bytes(range(256)) * 64
    created = time.time()
    await bus.send("wire", Message(type="model.artifact", body=blob, headers={"sha256": "abc", "size": len(blob)}))
    await bus.send(
        "wire",
        Message(
            type="event", body={"loss": 0.25}, correlation_id="c-1", created_at=created,
            headers={"metrics": {"mae": 1.5}, "ratio": 0.5, "tags": ["a", "b"]},
        ),
    )  # fmt: skip

    props, body = await broker.get("wire")
    assert props.content_type == BYTES_TYPE
    assert body == blob  # raw, not base64 in JSON
    assert props.delivery_mode == 2
    assert props.type == "model.artifact"
    assert props.headers["sha256"] == "abc" and props.headers["size"] == len(blob)

    props, body = await broker.get("wire")
    assert props.content_type == JSON_TYPE
    assert body == b'{"loss":0.25}'
    assert props.delivery_mode == 2
    assert props.headers["x-correlation-id"] == "c-1"
    assert props.headers["x-attempt"] == 0

    # And values AMQP tables cannot hold (floats, nested maps) come back intact
    seen: list[Message] = []

    async def keep(msg: Message) -> None:
        seen.append(msg)

    bus.consume("wire-back", keep)
    original = Message(
        type="event", body={"loss": 0.25}, created_at=created,
        headers={"metrics": {"mae": 1.5}, "ratio": 0.5, "tags": ["a", "b"], "big": 2**70},
    )  # fmt: skip
    await bus.send("wire-back", original)
    await eventually(lambda: len(seen) == 1)
    assert seen[0].headers == original.headers
    assert seen[0].created_at == created
    assert seen[0].id == original.id and seen[0].type == "event"


async def test_a_malformed_message_from_a_foreign_publisher_is_parked_in_the_dead_letter_queue(broker: Broker) -> None:
    bus = broker.transport()
    ran: list[Message] = []

    async def job(msg: Message) -> None:
        ran.append(msg)

    bus.consume("jobs", job)
    await bus.start()
    props = pika.BasicProperties(content_type=JSON_TYPE, delivery_mode=2)
    await broker.blocking(lambda ch: ch.basic_publish("", broker.queue("jobs"), b"{not json", props))
    await bus.send("jobs", Message(type="job", body={"ok": True}))
    # The consumer survives it, keeps working, and the raw bytes wait in the dead-letter queue
    await eventually(lambda: len(ran) == 1)
    assert ran[0].data == {"ok": True}
    await broker.wait_for_messages("jobs.dlq", 1)
    _props, body = await broker.get("jobs.dlq")
    assert body == b"{not json"


async def test_a_send_after_its_queue_was_deleted_behind_the_transports_back_still_lands(broker: Broker) -> None:
    bus = broker.transport()
    await bus.start()
    await bus.send("orders", Message(type="job", body={"n": 1}))
    # Given the queue deleted by someone else while this transport remembers declaring it
    await broker.blocking(lambda ch: ch.queue_delete(broker.queue("orders")))
    # When it sends again, the broker returns the message; the transport re-declares and resends
    await bus.send("orders", Message(type="job", body={"n": 2}))
    assert await broker.message_count("orders") == 1
    _props, body = await broker.get("orders")
    assert body == b'{"n":2}'
