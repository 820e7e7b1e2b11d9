"""Typed message bodies: each turns into the exact body the wire carried before (so mixed versions interoperate)
and back, and a body that is not what its type promises is refused with a clear error."""

from __future__ import annotations

import json
from typing import Any

import pytest

from skipper.core import contracts
from skipper.core.contracts import (
    ClaimReply,
    Event,
    EventKind,
    ModelAnnouncement,
    PredictReply,
    PredictRequest,
    TaskCancelAck,
    TaskCancelled,
    TaskClaim,
    TaskFailed,
    TaskProgress,
    TrainCommand,
)
from skipper.core.errors import ArtifactRejected, ValidationFailed

ERROR = {"code": "x", "message": "y", "details": {}}
WIRE_BODIES: list[tuple[Any, dict[str, Any]]] = [
    (TrainCommand("t1", "diabetes", {"epochs": 3}), {"task_id": "t1", "workflow": "diabetes", "params": {"epochs": 3}}),
    (TaskCancelled("t1"), {"task_id": "t1"}),
    (TaskCancelAck("t1"), {"task_id": "t1"}),
    (TaskClaim("t1", 2), {"task_id": "t1", "attempt": 2}),
    (TaskProgress("t1", 1, 5, 0.5, {"mae": 1.0}),
     {"task_id": "t1", "epoch": 1, "epochs": 5, "loss": 0.5, "metrics": {"mae": 1.0}}),
    (TaskFailed("t1", ERROR), {"task_id": "t1", "error": ERROR}),
    (PredictRequest("m", [[1.0, 2.0]]), {"model": "m", "instances": [[1.0, 2.0]]}),
    (PredictRequest("m", [[1.0]], version=3), {"model": "m", "instances": [[1.0]], "version": 3}),
]


@pytest.mark.parametrize(("message", "body"), WIRE_BODIES, ids=lambda v: type(v).__name__ if not isinstance(v, dict) else "")
def test_a_body_is_what_the_wire_carried_before_and_reads_back_as_the_same_message(message: Any, body: dict[str, Any]) -> None:
    assert json.dumps(message.to_body()) == json.dumps(body)  # same keys, same order
    assert type(message).from_body(body) == message
    envelope = message.message(correlation_id="c1")
    assert (envelope.type, envelope.body, envelope.correlation_id) == (message.TYPE, body, "c1")


def test_replies_and_announcements_round_trip() -> None:
    assert ClaimReply.from_body(ClaimReply(True).to_body()) == ClaimReply(True)
    assert ClaimReply.from_body({}) == ClaimReply(False)  # no answer is no permission
    reply = PredictReply([1.5, 2.5], "m", 4)
    assert PredictReply.from_body(reply.to_body()) == reply
    assert ModelAnnouncement.from_body(b"archive").artifact == b"archive"
    assert ModelAnnouncement(None).to_body() == {"ref": True}
    assert ModelAnnouncement.from_body({"ref": True}).artifact is None


def test_an_event_carries_its_kind_as_a_plain_string_and_a_sloppy_event_is_still_recorded() -> None:
    event = Event(EventKind.TASK_FAILED, "trainer", "t1", 10.0, {"error": "boom"})
    body = event.to_body()
    assert type(body["kind"]) is str and json.loads(json.dumps(body))["kind"] == "task.failed"
    assert Event.from_body(body) == event
    assert Event.from_body({"fields": "not a dict"}) == Event("unknown", "", None, 0.0, {})


@pytest.mark.parametrize(
    ("cls", "body", "message"),
    [
        (TrainCommand, {"workflow": "diabetes"}, "'task_id' as a non-empty string"),
        (TrainCommand, {"task_id": "t1", "workflow": "diabetes", "params": [1]}, "params must be an object"),
        (TrainCommand, b"bytes", "must be a JSON object"),
        (TaskProgress, {"task_id": "t1", "epoch": "one", "epochs": 5}, "integer 'epoch' and 'epochs'"),
        (PredictRequest, {"model": "m", "instances": "rows"}, "'instances' as a list"),
        (PredictRequest, {"model": "m", "instances": [], "version": "3"}, "'version' must be an integer"),
        (PredictReply, {"model": "m", "predictions": [1]}, "'model_version' (an integer)"),
    ],
)
def test_a_body_that_breaks_its_contract_is_refused_naming_the_problem(cls: Any, body: Any, message: str) -> None:
    with pytest.raises(ValidationFailed) as info:
        cls.from_body(body)
    assert message in info.value.message


def test_an_announcement_with_neither_the_artifact_nor_a_reference_is_rejected() -> None:
    with pytest.raises(ArtifactRejected):
        ModelAnnouncement.from_body({"ref": False})


def test_event_kinds_are_strings_and_the_old_names_still_import() -> None:
    assert EventKind.TASK_SUCCEEDED == "task.succeeded" and f"{EventKind.AUDIT}" == "audit"
    assert (contracts.TRAIN, contracts.predict_queue("m"), contracts.TRAIN_COMMAND) == ("train", "predict.m", "train.command")
    assert contracts.TERMINAL_KINDS["failed"] == {"task.failed"}
