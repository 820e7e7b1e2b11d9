"""RabbitMQ transport on pika.
RabbitMQ transport on pika.

How asyncio and pika meet: there is no pika thread. The transport drives pika's
`AsyncioConnection` adapter on the event loop it was started on, so every pika callback
(deliveries, confirms, channel and connection events, heartbeats) runs on that loop, and
handlers (coroutines) are plain tasks on the same loop. Nothing is ever handed across
threads, which keeps pika single-threaded as it requires and keeps the predict path free
of thread hops. The flip side: a handler must not block the loop (DESIGN.md already puts
blocking work such as training in a worker thread owned by the module), otherwise
heartbeats stall with everything else on the loop.

Topology, for a namespace `ns` and a logical queue `q` or topic `t`:
- `ns.q`: durable work queue; messages persistent, published with publisher confirms;
  each consumer has its own channel with `basic_qos(prefetch)`, and a delivery is acked
  only after its handler returned (and after its retry or dead letter is confirmed).
- `ns.q.retry.<ms>`: durable delay queue, one per distinct backoff delay, with a queue TTL
  of `<ms>` that dead-letters back into `ns.q`. A failed message is republished there with
  `attempt + 1`, confirmed, and only then acked, so a pending retry lives in the broker and
  survives a crash of this process. (One queue per delay, not a per-message expiration,
  because RabbitMQ only expires messages at the head of a queue: a long delay would hold
  back a short one.)
- `ns.q.dlq`: durable dead-letter queue: a message that failed `max_retries + 1` times lands
  there, and `Transport.dead_letter_report` is sent to the `dead_letters` queue.
- `ns.t`: fanout exchange; each subscriber binds its own exclusive, auto-delete,
  server-named queue and handles its messages in order.
- requests use direct reply-to (`amq.rabbitmq.reply-to`) on one channel per connection:
  no queue per request; the AMQP `correlation_id` is a per-request key (the envelope's own
  correlation id travels in the headers); the request carries an AMQP `expiration` equal
  to its timeout so a stale request is dropped rather than handled after the caller left.

Wire format (pinned byte for byte by tests/transports/test_wire_golden.py; `wire.py`): a dict body is JSON
(`application/json`), a bytes body goes as it is (`application/octet-stream`), never base64. The
envelope rides in AMQP properties (`type`, `message_id`, `timestamp`, `content_type`,
`delivery_mode`) and headers (`x-correlation-id`, `x-attempt`, `x-created-at` as a string, then
the message's own headers). Header values an AMQP table cannot carry through pika (floats,
nested maps, huge ints) are JSON-encoded and listed in `x-skipper-json`, so they come back as
they went. Work-queue publishes are `mandatory`: if a queue was deleted behind the per-
connection declare cache, the broker returns the message, and the transport declares the queue
again and republishes.

`Message.attempt` travels in the `x-attempt` header. A work message the broker redelivers
because its consumer died before acking (the `redelivered` flag: a trainer killed mid-run)
counts as one more attempt (the base class decides: `Transport.redelivery_outcome`). Classic
queues do not count redeliveries, so the transport re-stamps it: it republishes the message with
`attempt + 1` (confirmed), acks the redelivered copy, and the re-stamped message then runs like
any other. Once a message has used up every attempt this way (one that keeps killing its
consumer) it is dead-lettered instead of crashing consumers forever. Requests are never re-
stamped: their caller waits.

`NoConsumers`: before a request is published, the target queue's consumer count comes from
a passive declare. A positive count is cached for `PRESENCE_TTL_S` and refreshed in the
background once older than `PRESENCE_REFRESH_S`, so the steady-state predict path costs no
extra round trip; a zero count or a missing queue is never cached. The request is also
published `mandatory`, so a queue deleted since the check comes back as `NoConsumers` too.

Reconnect: when the connection drops (broker restart, `rabbitmqctl close_connection`, a
channel error on a channel the transport relies on), everything tied to it is dropped at
once: in-flight requests and unconfirmed sends fail with `Unavailable`, and until a new
connection is up `send`/`publish`/`request` raise `Unavailable` immediately. A background
task reconnects with jittered exponential backoff (capped at
`BusOptions.reconnect_backoff_max_s`), re-declares the topology, restarts every consumer
and subscriber, then awaits `notify_connected()` on the loop.

Work handlers outlive a dropped link, and the transport never lets that lose a message. The
guarantee: a work message is acknowledged only after its handler's outcome (done, a retry, a
dead letter) is in the broker, and until then the broker holds a copy. When the link drops
mid-handler, the broker requeues the delivery and hands it back (flagged redelivered) once we
are reconnected, while the handler still runs here. That copy is not run again and not counted
as an attempt: it is parked unacknowledged, and when the handler finishes its outcome is settled
through the copy (the original delivery died with its channel). A second drop just parks the
next copy. If this process dies meanwhile, the parked copy goes back to the queue and another
consumer runs it as the next attempt (so a trainer killed after a drop loses no task). An
outcome reached while the link is down, with no copy back yet, waits `UNSETTLED_TTL_S` for the
copy; a copy the broker hands to another process instead is run there (at least once).

Broker configuration note: RabbitMQ closes a channel whose delivery stays unacked longer
than its `consumer_timeout` (30 minutes by default); set it above the longest training run
(`bus.time_limit_s`), or the run is redelivered while it is still going.

Files, one concern each: `wire.py` (the message format), `topology.py` (declares, confirmed
publishes, consumer counts), `consumers.py` (consumers and subscribers on a link), `work.py`
(running work deliveries and settling their outcome: the held-redelivery guarantee), and
`transport.py` (the base class's hooks, connect / reconnect / close, replies). pika channels and
RPCs as futures (`Channel`) and one connection with its caches (`Link`) are in
`skipper.transports.amqp_async`, shared with the Dramatiq transport's RabbitMQ side channel.
"""

from __future__ import annotations

from skipper.transports.rabbitmq.transport import REPLY_TO, RabbitMQTransport
from skipper.transports.rabbitmq.wire import BYTES_TYPE, JSON_TYPE, decode, encode

__all__ = ["BYTES_TYPE", "JSON_TYPE", "REPLY_TO", "RabbitMQTransport", "decode", "encode"]
