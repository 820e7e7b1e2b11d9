"""The bus: the `Transport` contract every transport implements, and the semantics they share.

Three patterns (see DESIGN.md, "The bus"):
- work queues: `send` / `consume`; one consumer per message, at-least-once, ack after the
  handler's outcome is recorded, retries with backoff, then a dead letter and a
  `message.dead_lettered` report (the policy: `skipper.core.bus.policy`);
- requests: `request` over a work queue; `NoConsumers` at once, `RequestTimeout` after `timeout`;
- fanout: `publish` / `subscribe`; every live subscriber gets every message, one at a time and
  in the order its transport received them.

What a work message survives, on every transport: it is acknowledged only after its handler's
outcome (done, a retry, a dead letter) is recorded, so a broker that drops the connection
mid-handler still holds a copy. A copy handed back to the same process while its handler still
runs is held, not run again and not counted as an attempt, and settled with the handler's
outcome; if the process dies first, another consumer runs it as the next attempt. A dropped
connection therefore never loses a message; a dead consumer costs one attempt. (Details per
transport in their package docstrings; `memory` has no connection to lose, and nothing of it
survives its process.)

Queue and topic names given to a transport are logical (`train`, `model.published`); the
transport prefixes them with the namespace so deployments can share one broker.
"""

from __future__ import annotations

from skipper.core.bus.fanout import Handler, Subscription
from skipper.core.bus.options import BusOptions
from skipper.core.bus.policy import ConsumerStopped, HandlerOutcome
from skipper.core.bus.transport import Transport

__all__ = ["BusOptions", "ConsumerStopped", "Handler", "HandlerOutcome", "Subscription", "Transport"]
