"""The message kinds each transport puts on the wire, built from fixed inputs (for the golden wire test).

Each function returns the exact bytes a transport writes for one message kind today. The golden
test pins them, so a refactor that changes a byte breaks a mixed deployment and fails the test.
"""

from __future__ import annotations

from typing import Any

from skipper.core.errors import ValidationFailed
from skipper.core.messages import Message

MESSAGE_ID = "0123456789abcdef0123456789abcdef"
CREATED_AT = 1700000000.25


def message(**fields: Any) -> Message:
    base: dict[str, Any] = {
        "type": "train.requested",
        "body": {"task_id": "t1", "epochs": 3},
        "headers": {"model": "diabetes"},
        "id": MESSAGE_ID,
        "correlation_id": "corr-1",
        "created_at": CREATED_AT,
    }
    base.update(fields)
    return Message(**base)


def reply(body: dict[str, Any], *, type: str = "predict.reply") -> Message:
    return Message(type=type, body=body, id="fedcba9876543210fedcba9876543210", correlation_id="corr-1",
                   created_at=CREATED_AT + 1)


ERROR_BODY = ValidationFailed("bad", details={"field": "x"}).to_payload()

# name -> (message, kind): the kinds every broker transport carries.
MESSAGES: dict[str, Message] = {
    "work": message(),
    "work_retry": message(attempt=2),
    "work_bytes": message(type="artifact", body=b"\x00\x01\xffPK", headers={"sha256": "abc", "size": 5}),
    "work_odd_headers": message(headers={"f": 1.5, "nested": {"a": [1, 2]}, "big": 2**70, "none": None, "flag": True}),
    "event": message(type="model.published"),
    "request": message(type="predict"),
    "reply": reply({"predictions": [1.5]}),
    "error_reply": reply(ERROR_BODY, type="error"),
}


def amqp_bytes(name: str, **kwargs: Any) -> bytes:
    """Body, a `|`, then the AMQP content-header properties, as the RabbitMQ transport writes them."""
    from skipper.transports.rabbitmq import encode

    body, props = encode(MESSAGES[name], **kwargs)
    return body + b"|" + b"".join(props.encode())


def dramatiq_bytes(name: str, **options: Any) -> bytes:
    """A Dramatiq work message for logical queue `train` in namespace `ns`, as the encoder writes it."""
    from skipper.core.bus import BusOptions
    from skipper.transports.dramatiq import DramatiqTransport, SkipperEncoder

    transport = DramatiqTransport(BusOptions(namespace="ns"), url="redis://127.0.0.1:6379/15")
    fixed = transport.dramatiq_message("train", MESSAGES[name], **options).copy(
        message_id="00000000-1111-2222-3333-444444444444", message_timestamp=1700000000250
    )
    return SkipperEncoder().encode(fixed.asdict())


def frame_bytes(name: str, *, reply_for: str | None = None) -> bytes:
    """A Dramatiq side-channel frame (fanout event or request reply)."""
    from skipper.transports.dramatiq import pack_frame

    return pack_frame(MESSAGES[name], reply_for=reply_for)


def request_frame_bytes() -> bytes:
    """A request frame sent beside Dramatiq, with its reply address and deadline."""
    from dataclasses import replace

    from skipper.transports.dramatiq.wire import pack_request

    return pack_request(replace(MESSAGES["request"], reply_to="amq.gen-reply#tok-1"), deadline_ms=1700000005250)


REPLY_TO = "amq.rabbitmq.reply-to"

# golden name -> how to build it now
CASES: dict[str, Any] = {
    "amqp.work": lambda: amqp_bytes("work", persistent=True),
    "amqp.work_retry": lambda: amqp_bytes("work_retry", persistent=True),
    "amqp.work_bytes": lambda: amqp_bytes("work_bytes", persistent=True),
    "amqp.work_odd_headers": lambda: amqp_bytes("work_odd_headers", persistent=True),
    "amqp.dead_letter": lambda: amqp_bytes(
        "work_retry", persistent=True, extra_headers={"x-skipper-error": "ValueError: boom"}
    ),
    "amqp.event": lambda: amqp_bytes("event", persistent=False),
    "amqp.request": lambda: amqp_bytes(
        "request", persistent=False, reply_to=REPLY_TO, correlation_id="abc123.7", expiration_ms=5000
    ),
    "amqp.reply": lambda: amqp_bytes("reply", persistent=False, correlation_id="abc123.7"),
    "amqp.error_reply": lambda: amqp_bytes("error_reply", persistent=False, correlation_id="abc123.7"),
    "dramatiq.work": lambda: dramatiq_bytes("work"),
    "dramatiq.work_bytes": lambda: dramatiq_bytes("work_bytes"),
    "dramatiq.work_odd_headers": lambda: dramatiq_bytes("work_odd_headers"),
    "dramatiq.request": lambda: dramatiq_bytes("request", max_retries=0, skipper_deadline_ms=1700000005250),
    "frame.event": lambda: frame_bytes("event"),
    "frame.event_bytes": lambda: frame_bytes("work_bytes"),
    "frame.reply": lambda: frame_bytes("reply", reply_for="tok-1"),
    "frame.error_reply": lambda: frame_bytes("error_reply", reply_for="tok-1"),
    "frame.request": request_frame_bytes,
}
