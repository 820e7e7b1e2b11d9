"""What the Dramatiq transport puts in a Dramatiq message, and the frames of its side channels.

Work queues: a Dramatiq message for actor `<ns>.<queue>` on queue `<ns>.<queue>` whose one
argument is the envelope dict (`to_envelope`): type, body, headers, id, correlation_id,
reply_to, created_at. `attempt` is not in it: it is Dramatiq's `retries` option. A request
also carries the options `max_retries: 0` and `skipper_deadline_ms` (dropped once past).

Side-channel frames (fanout events and request replies, on RabbitMQ or Redis): `SKF1`, the
length of a JSON header as a big-endian uint32, the header (`Message.to_headers()`, plus
`x-reply-for: <token>` on a reply), then the raw body (JSON, or bytes when `x-body-kind` is
`bytes`). A request's `reply_to` is `<reply address>#<token>`.

Requests travel as frames too (`pack_request`: a RabbitMQ message on `<queue>.requests`, or an
entry of a Redis list that consumers BLPOP): the header also holds `x-reply-to` and
`x-deadline-ms`, the epoch milliseconds after which nobody waits for the reply. Requests that
older versions sent as Dramatiq messages carry the deadline as the `skipper_deadline_ms` option.
"""

from __future__ import annotations

import json
import struct
import time
from typing import Any

from skipper.core import jsonio
from skipper.core.messages import Message, new_id

DEADLINE = "skipper_deadline_ms"  # message option: a request nobody waits for any more is dropped
DEADLINE_HEADER = "x-deadline-ms"  # the same, in a request frame


def actor_name(namespace: str, queue: str) -> str:
    """The Dramatiq actor (and queue) name of a logical queue."""
    return f"{namespace}.{queue}"


def to_envelope(msg: Message) -> dict[str, Any]:
    """The actor's argument: the message without `attempt`, which Dramatiq's Retries counts."""
    return {
        "type": msg.type,
        "body": msg.body,
        "headers": msg.headers,
        "id": msg.id,
        "correlation_id": msg.correlation_id,
        "reply_to": msg.reply_to,
        "created_at": msg.created_at,
    }


def from_envelope(env: dict[str, Any], attempt: int) -> Message:
    body = env.get("body", {})
    return Message(
        type=str(env.get("type", "")),
        body=bytes(body) if isinstance(body, bytes) else body,
        headers=dict(env.get("headers") or {}),
        id=str(env.get("id") or new_id()),
        correlation_id=env.get("correlation_id"),
        reply_to=env.get("reply_to"),
        created_at=float(env.get("created_at") or time.time()),
        attempt=attempt,
    )


_FRAME_MAGIC = b"SKF1"


def pack_frame(msg: Message, *, reply_for: str | None = None) -> bytes:
    """One request reply or fanout message: JSON header, then the raw body."""
    return _pack(msg, {} if reply_for is None else {"x-reply-for": reply_for})


def pack_request(msg: Message, *, deadline_ms: int) -> bytes:
    """A request sent beside Dramatiq: its `reply_to` and deadline ride in the header."""
    return _pack(msg, {"x-reply-to": msg.reply_to, DEADLINE_HEADER: deadline_ms})


def _pack(msg: Message, extra: dict[str, Any]) -> bytes:
    headers = msg.to_headers()
    headers.update(extra)
    head = json.dumps(headers, separators=(",", ":")).encode()
    body = msg.body if isinstance(msg.body, bytes) else json.dumps(msg.body, separators=(",", ":")).encode()
    return b"".join((_FRAME_MAGIC, struct.pack(">I", len(head)), head, body))


def unpack_frame(data: bytes) -> tuple[Message, str | None]:
    """The message in a frame, and the request token it replies to (if any)."""
    msg, headers = _unpack(data)
    return msg, headers.get("x-reply-for")


def unpack_request(data: bytes) -> tuple[Message, int | None]:
    """The request in a frame, and the epoch milliseconds after which nobody waits for it (if known)."""
    msg, headers = _unpack(data)
    reply_to, deadline = headers.get("x-reply-to"), headers.get(DEADLINE_HEADER)
    msg.reply_to = reply_to if isinstance(reply_to, str) else None
    return msg, deadline if isinstance(deadline, int) else None


def _unpack(data: bytes) -> tuple[Message, dict[str, Any]]:
    if not data.startswith(_FRAME_MAGIC):
        raise ValueError("not a Skipper frame")
    (head_len,) = struct.unpack_from(">I", data, len(_FRAME_MAGIC))
    start = len(_FRAME_MAGIC) + 4
    headers = jsonio.parse(data[start : start + head_len])
    raw = data[start + head_len :]
    body: bytes | dict[str, Any] = raw if headers.get("x-body-kind") == "bytes" else jsonio.parse(raw)
    return Message.from_headers(headers, body), headers


def split_reply_to(reply_to: str) -> tuple[str, str] | None:
    address, sep, token = reply_to.rpartition("#")
    return (address, token) if sep and address and token else None


