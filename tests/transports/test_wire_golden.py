"""The bytes each transport writes, pinned: a mixed deployment during an upgrade keeps working.

`tests/wire_golden.json` holds the bytes (hex) of every message kind, written by the transports
as they were before they became packages. A change to the wire format must be deliberate: it
shows up here as a failing test, and then needs a compatibility plan, not a new golden file.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.transports.wire_cases import CASES, MESSAGES

GOLDEN: dict[str, str] = json.loads((Path(__file__).parent / "wire_golden.json").read_text())


def test_every_message_kind_has_a_golden_copy() -> None:
    assert sorted(GOLDEN) == sorted(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_wire_bytes_of_each_message_kind_are_unchanged(name: str) -> None:
    assert CASES[name]().hex() == GOLDEN[name]


@pytest.mark.parametrize(("golden", "name"), [("amqp.work", "work"), ("amqp.work_bytes", "work_bytes"),
                                             ("amqp.work_odd_headers", "work_odd_headers"), ("amqp.error_reply", "error_reply")])
def test_golden_amqp_bytes_decode_back_to_the_message(golden: str, name: str) -> None:
    import pika.spec

    from skipper.transports.rabbitmq import decode

    # Neither golden body contains a `|`: the first one separates body and properties.
    body, _, encoded = bytes.fromhex(GOLDEN[golden]).partition(b"|")
    props = pika.spec.BasicProperties()
    props.decode(encoded)
    assert decode(props, body) == MESSAGES[name]


@pytest.mark.parametrize(("golden", "name", "reply_for"), [("frame.event", "event", None),
                                                          ("frame.event_bytes", "work_bytes", None),
                                                          ("frame.error_reply", "error_reply", "tok-1")])
def test_golden_frames_decode_back_to_the_message(golden: str, name: str, reply_for: str | None) -> None:
    from skipper.transports.dramatiq import unpack_frame

    assert unpack_frame(bytes.fromhex(GOLDEN[golden])) == (MESSAGES[name], reply_for)


def test_the_golden_request_frame_decodes_back_to_the_request_its_reply_address_and_deadline() -> None:
    from dataclasses import replace

    from skipper.transports.dramatiq.wire import unpack_request

    expected = replace(MESSAGES["request"], reply_to="amq.gen-reply#tok-1")
    assert unpack_request(bytes.fromhex(GOLDEN["frame.request"])) == (expected, 1700000005250)


def test_a_golden_dramatiq_message_decodes_back_to_its_envelope() -> None:
    from skipper.transports.dramatiq import SkipperEncoder

    decoded = SkipperEncoder().decode(bytes.fromhex(GOLDEN["dramatiq.work_bytes"]))
    assert decoded["args"][0]["body"] == MESSAGES["work_bytes"].body
    assert decoded["queue_name"] == decoded["actor_name"] == "ns.train"
