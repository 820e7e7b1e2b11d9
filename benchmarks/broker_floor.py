"""RabbitMQ's own round trip on this machine: the floor under a role split's single-request latency.

Two processes on Skipper's own AMQP stack (uvloop, pika over the loop's transport, `Link`) pass
one small message at a time through RabbitMQ, the way a predict request travels between the api
and a server: published `mandatory`, non-persistent, with an expiration and a correlation id, to a
queue with one consumer; the server takes each delivery in a task of its own and answers by
direct reply-to, the reply and the ack in one write. No envelope, no handler, no HTTP, no model:
what is left is the broker, the client library, and a wake-up of each process and of the broker
each way. A role split cannot answer one request faster than this plus the all-in-one process's
own time, so `predict.py` measures it beside the RabbitMQ variants at concurrency 1.

Besides the round trip's p50 and p99 it reports the broker's CPU per round trip, from the
scheduler's exact run times of every thread of `beam.smp` (`/proc/<pid>/task/*/schedstat`; the
`/proc/<pid>/stat` ticks are 10 ms samples, too coarse at this rate).

    python benchmarks/broker_floor.py                     # 5 s against the local RabbitMQ
    python benchmarks/broker_floor.py --duration 3 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pika
import uvloop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from skipper.transports.amqp_async.channel import Channel, rpc  # noqa: E402  (after the path)
from skipper.transports.amqp_async.link import Link  # noqa: E402

URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
REPLY_TO = "amq.rabbitmq.reply-to"
BODY = b'{"instances":[[0.038,0.05,0.061,0.021,-0.044,-0.034,-0.043,-0.002,0.019,-0.017]]}'
WARM_UP_S = 0.5


async def _channel(url: str) -> tuple[Link, Channel]:
    link = await Link.open(pika.URLParameters(url), asyncio.get_running_loop(), on_close=lambda *_: None,
                           on_channel_lost=lambda _: None)
    return link, await link.open_channel(essential=False)


async def serve(url: str, queue: str) -> None:
    """Echo every delivery of `queue` to its reply-to address until stdin closes."""
    loop = asyncio.get_running_loop()
    link, channel = await _channel(url)
    await rpc(channel, lambda cb: channel.raw.queue_declare(queue, auto_delete=True, callback=cb))
    await rpc(channel, lambda cb: channel.raw.basic_qos(prefetch_count=64, callback=cb))

    async def answer(tag: int, props: Any, body: bytes) -> None:
        with channel.held():
            channel.publish("", props.reply_to, body, pika.BasicProperties(correlation_id=props.correlation_id))
            channel.ack(tag)

    answering: set[asyncio.Task[None]] = set()

    def on_delivery(_raw: Any, method: Any, props: Any, body: bytes) -> None:
        task = loop.create_task(answer(method.delivery_tag, props, body))  # as a Skipper server does: a task each
        answering.add(task)
        task.add_done_callback(answering.discard)

    await rpc(channel, lambda cb: channel.raw.basic_consume(queue, on_delivery, callback=cb))
    print("ready", flush=True)
    await loop.run_in_executor(None, sys.stdin.read)  # the client closes our stdin when done
    link.abort()


def broker_cpu_ns(name: str = "beam.smp") -> int | None:
    """Exact CPU nanoseconds used so far by every thread of the processes called `name`; None if none is found."""
    total, found = 0, False
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() != name:
                continue
            for stat in comm.parent.glob("task/*/schedstat"):
                total += int(stat.read_text().split()[0])
            found = True
        except (OSError, ValueError):
            continue
    return total if found else None


async def measure(url: str, queue: str, duration: float) -> dict[str, float | None]:
    """Round trips one at a time for `duration` seconds (after a warm-up): latency and broker CPU per round trip."""
    loop = asyncio.get_running_loop()
    link, channel = await _channel(url)
    waiting: dict[str, asyncio.Future[bytes]] = {}

    def on_reply(_raw: Any, _method: Any, props: Any, body: bytes) -> None:
        fut = waiting.pop(props.correlation_id, None)
        if fut is not None and not fut.done():
            fut.set_result(body)

    await rpc(channel, lambda cb: channel.raw.basic_consume(REPLY_TO, on_reply, auto_ack=True, callback=cb))

    async def round_trip(i: int) -> None:
        key = str(i)
        fut = waiting[key] = loop.create_future()
        props = pika.BasicProperties(reply_to=REPLY_TO, correlation_id=key, expiration="5000", delivery_mode=1)
        channel.publish("", queue, BODY, props, mandatory=True)
        assert await asyncio.wait_for(fut, 5) == BODY

    i = 0
    warm_until = time.perf_counter() + WARM_UP_S
    while time.perf_counter() < warm_until:
        await round_trip(i := i + 1)
    latencies: list[float] = []
    cpu_before, started = broker_cpu_ns(), time.perf_counter()
    while (now := time.perf_counter()) - started < duration:
        await round_trip(i := i + 1)
        latencies.append(time.perf_counter() - now)
    elapsed, cpu_after = time.perf_counter() - started, broker_cpu_ns()
    link.abort()
    latencies.sort()
    cpu = None if cpu_before is None or cpu_after is None else (cpu_after - cpu_before) / 1000 / len(latencies)
    return {"round_trips_per_s": len(latencies) / elapsed, "p50_ms": statistics.median(latencies) * 1000,
            "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000, "broker_cpu_us": cpu}


def run(url: str = URL, duration: float = 5.0, queue: str | None = None) -> dict[str, float | None]:
    """Start the echo server in a process of its own, measure from this one, stop the server (its queue goes too)."""
    queue = queue or f"bench-floor-{uuid.uuid4().hex[:8]}"
    server = subprocess.Popen([sys.executable, __file__, "--serve", queue, "--url", url], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready", "echo server did not start"
        return uvloop.run(measure(url, queue, duration))
    finally:
        if server.stdin is not None:
            server.stdin.close()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=URL)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of round trips, after a warm-up")
    parser.add_argument("--json", action="store_true", help="print one JSON object (for predict.py)")
    parser.add_argument("--serve", metavar="QUEUE", help=argparse.SUPPRESS)  # the echo server's own process
    args = parser.parse_args()
    if args.serve:
        uvloop.run(serve(args.url, args.serve))
        return
    result = run(args.url, args.duration)
    if args.json:
        print(json.dumps(result))
        return
    cpu = result["broker_cpu_us"]
    print(f"RabbitMQ round trip, one at a time: {result['round_trips_per_s']:.0f}/s, p50 {result['p50_ms']:.3f} ms, "
          f"p99 {result['p99_ms']:.3f} ms, broker CPU {'-' if cpu is None else f'{cpu:.0f} us'} per round trip")


if __name__ == "__main__":
    main()
