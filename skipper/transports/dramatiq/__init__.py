"""Dramatiq transport: work queues are Dramatiq actors on its RabbitMQ or Redis broker.

The URL scheme picks the broker: `amqp://` -> `RabbitmqBroker`, `redis://` -> `RedisBroker`.

Work queues (`send` / `consume`) are plain Dramatiq: one actor and one queue per logical queue,
both named `<namespace>.<queue>`, so Dramatiq's broker and middleware carry the work:
- the retry and dead-letter policy is the base class's (`Transport.run_handler`, one policy for
  every transport); the `Outcomes` middleware carries it out: a retry is the message re-enqueued
  through Dramatiq's delay queue with its `retries` option raised (`Message.attempt` is that
  counter), a dead letter is a failed message, which the broker moves to `<queue>.XQ`, plus the
  `Transport.dead_letter_report(...)` sent to the `dead_letters` queue;
- `TimeLimit` interrupts a handler after `BusOptions.time_limit_s` (counted as a failure);
- `AgeLimit` drops messages older than `BusOptions.max_age_s` (reported as dead letters);
- a message whose consumer died mid-handler (a killed trainer) comes back: RabbitMQ requeues it
  at once, Dramatiq's Redis broker once the dead worker missed heartbeats for `heartbeat_s`.
  `Redeliveries` counts that as one more attempt, as the other transports do (the base decides:
  `Transport.redelivery_outcome`), and holds a copy handed back after a mere connection drop
  until the handler here has finished (no task lost after a broker drop).

A `Worker` (threads: `BusOptions.worker_threads`) runs inside the transport. Handlers are
coroutines and run on the event loop the transport was started on: the actor, in a worker
thread, submits the handler to that loop and waits. A consumer's `prefetch` is its queue's
broker prefetch (unacked messages in this process); the worker threads bound how many handlers
of all queues run at once, so a handler that awaits a request served by the same transport
needs a spare thread. Each transport owns its broker, actors and worker; nothing touches
`dramatiq.set_broker`.

Requests and fanout are built beside Dramatiq on the same broker, over a `SideChannel`
(`side.py`, the declared interface): `AmqpSide` (pika's asyncio adapter on the loop) or
`RedisSide` (redis.asyncio on the loop). A side channel reports back only through a
`SideListener`, which hands replies and events to the base class's public hooks.

Requests (predictions) do not ride Dramatiq: its Redis consumer polls (5 ms and more between
looks at an idle queue) and its RabbitMQ path crosses a sender thread, a consumer thread and a
worker thread. They go on the side channel: a mandatory publish on an auto-delete
`<queue>.requests` queue (RabbitMQ), or a list that each consuming process BLPOPs (Redis); each
process holds at most the queue's prefetch of them and handles them on its loop. A request in
flight fails with `Unavailable` as soon as the side connection drops (its reply address went with
it). Upgrading from a version whose requests rode Dramatiq: roll the servers first (they take
requests both ways); an older server does not see the new path (RabbitMQ answers `NoConsumers`,
Redis times out).

Wire format (pinned byte for byte by tests/transports/test_wire_golden.py): `wire.py` (the envelope in a
Dramatiq message, the side-channel frames) and `encoding.py` (bytes bodies, never base64).

For the `dramatiq` CLI: messages are ordinary Dramatiq messages for actor `actor_name(ns, queue)`
on queue `<ns>.<queue>` with one argument, the envelope dict. A worker module can declare a
compatible actor with `declare_actor(broker, ...)` after `install_encoder()`.

Files: `transport.py` (the base class's hooks), `broker.py` (Dramatiq subclasses: broker,
consumer, worker, time limit), `middleware.py` (policy carried out), `side.py`,
`amqp_side.py`, `redis_side.py`, `wire.py`, `encoding.py`.

Broker configuration note: RabbitMQ closes a channel whose delivery stays unacked longer than
its `consumer_timeout` (30 minutes by default); set it above `bus.time_limit_s`, or a long
training run is redelivered (as its next attempt) while it is still going.
"""

from __future__ import annotations

import os

# A consumer thread that lost its connection waits this long before it reconnects; Dramatiq's
# 3 s default alone would use most of the 5 s recovery target after a broker drop. Dramatiq
# reads its documented `dramatiq_restart_delay` variable once, at import, so it is set first;
# a value in the environment wins.
os.environ.setdefault("dramatiq_restart_delay", "1000")

from skipper.transports.dramatiq.broker import declare_actor
from skipper.transports.dramatiq.encoding import SkipperEncoder, install_encoder
from skipper.transports.dramatiq.transport import DramatiqTransport
from skipper.transports.dramatiq.wire import actor_name, pack_frame, unpack_frame

__all__ = [
    "DramatiqTransport",
    "SkipperEncoder",
    "actor_name",
    "declare_actor",
    "install_encoder",
    "pack_frame",
    "unpack_frame",
]
