"""The AMQP wire format of a `Message` (pinned by tests/transports/test_wire_golden.py; see the package docstring).

A dict body is JSON (`application/json`), a bytes body goes as it is
(`application/octet-stream`), never base64. The envelope rides in AMQP properties (`type`,
`message_id`, `timestamp`, `content_type`, `delivery_mode`) and headers (`x-correlation-id`,
`x-attempt`, `x-created-at` as a string, then the message's own headers). Header values an AMQP
table cannot carry through pika (floats, nested maps, huge ints) are JSON-encoded and listed in
`x-skipper-json`, so they come back as they went.
"""

from __future__ import annotations

import json
from typing import Any

import pika

from skipper.core import jsonio
from skipper.core.messages import Message

JSON_TYPE = "application/json"
BYTES_TYPE = "application/octet-stream"

# Header values AMQP tables cannot carry faithfully (pika cannot encode floats at all) are
# JSON-encoded; this header lists their keys so the receiver decodes them back.
_JSON_KEYS = "x-skipper-json"
_INT64 = (-(2**63), 2**63 - 1)
_IN_PROPERTIES = ("x-type", "x-id", "x-body-kind")


def _to_table(headers: dict[str, Any]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    json_keys: list[str] = []
    for key, value in headers.items():
        native = value is None or isinstance(value, str | bool | bytes)
        if native or (isinstance(value, int) and _INT64[0] <= value <= _INT64[1]):
            table[key] = value
        else:
            table[key] = json.dumps(value, separators=(",", ":"))
            json_keys.append(key)
    if json_keys:
        table[_JSON_KEYS] = json_keys
    return table


def _from_table(table: dict[str, Any] | None) -> dict[str, Any]:
    headers = dict(table or {})
    for key in headers.pop(_JSON_KEYS, None) or ():
        if isinstance(headers.get(key), str):
            headers[key] = json.loads(headers[key])
    return headers


def encode(
    msg: Message,
    *,
    persistent: bool,
    reply_to: str | None = None,
    correlation_id: str | None = None,
    expiration_ms: int | None = None,
    extra_headers: dict[str, Any] | None = None,
) -> tuple[bytes, pika.BasicProperties]:
    """The AMQP body and properties of `msg`: dicts as JSON, bytes as they are."""
    if isinstance(msg.body, bytes):
        body, content_type = msg.body, BYTES_TYPE
    else:
        body, content_type = json.dumps(msg.body, separators=(",", ":")).encode(), JSON_TYPE
    headers = msg.to_headers()
    # Type, id and body kind ride in AMQP properties (type, message_id, content_type); fewer
    # header entries is less work for pika on every message of the request path.
    for key in _IN_PROPERTIES:
        headers.pop(key, None)
    # A string, not a float: AMQP tables through pika cannot carry floats, and
    # `Message.from_headers` parses either.
    headers["x-created-at"] = repr(msg.created_at)
    if extra_headers:
        headers.update(extra_headers)
    props = pika.BasicProperties(
        content_type=content_type,
        headers=_to_table(headers),
        message_id=msg.id,
        type=msg.type[:255],
        timestamp=int(msg.created_at),
        delivery_mode=2 if persistent else 1,
        reply_to=reply_to,
        correlation_id=correlation_id,
        expiration=str(expiration_ms) if expiration_ms is not None else None,
    )
    return body, props


def decode(props: pika.BasicProperties, body: bytes) -> Message:
    """The envelope back from AMQP properties and body (tolerates foreign publishers)."""
    headers = _from_table(props.headers)
    headers.setdefault("x-type", props.type or "")
    if props.message_id:
        headers.setdefault("x-id", props.message_id)
    if props.content_type == BYTES_TYPE:
        payload: dict[str, Any] | bytes = bytes(body)
    else:
        payload = jsonio.parse(body) if body else {}
        if not isinstance(payload, dict):
            payload = {"value": payload}
    return Message.from_headers(headers, payload, reply_to=props.reply_to)
