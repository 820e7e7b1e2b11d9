"""pika's asyncio adapter as futures on the event loop: a connection with its channels (`Link`), channels whose RPCs
and publisher confirms are futures (`Channel`, `rpc`), connecting and reconnecting with backoff (`retry`).

Not a transport: the building blocks that the RabbitMQ transport and the Dramatiq transport's
RabbitMQ side channel both drive on their event loop, with no pika thread and no thread hop.
"""

from skipper.transports.amqp_async.channel import RPC_TIMEOUT_S, Channel, ChannelGone, Connection, Unroutable, rpc
from skipper.transports.amqp_async.link import CONNECT_TIMEOUT_S, Link
from skipper.transports.amqp_async.retry import backoff_s, connect_within, reconnect

__all__ = ["CONNECT_TIMEOUT_S", "RPC_TIMEOUT_S", "Channel", "ChannelGone", "Connection", "Link", "Unroutable",
           "backoff_s", "connect_within", "reconnect", "rpc"]
