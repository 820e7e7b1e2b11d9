"""The message envelope that every transport carries."""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass, field, replace
from typing import Any

from skipper.core.errors import SkipperError

Body = dict[str, Any] | bytes


def new_id() -> str:
    """32 random hex digits (what `uuid.uuid4().hex` gave, at a quarter of its cost): task and correlation ids."""
    return os.urandom(16).hex()


class _MessageIds:
    """32 hex digits unique to this process's messages: a random prefix per process, then a counter.

    A message id needs to be unique, not unguessable (task ids, which users see, come from
    `new_id`), and two are made per prediction: this is a few times cheaper than `new_id`.
    """

    def __init__(self) -> None:
        self.reseed()
        os.register_at_fork(after_in_child=self.reseed)  # a forked child must not repeat its parent's ids

    def reseed(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._counter = itertools.count()

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._counter):016x}"


message_id = _MessageIds()


@dataclass(slots=True)
class Message:
    """One unit on the bus.

    `body` is a JSON-able dict, or raw bytes (artifacts) whose metadata rides in `headers`.
    `correlation_id` ties every message of one request or task together in the logs.
    """

    type: str
    body: Body = field(default_factory=dict)
    headers: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=message_id)
    correlation_id: str | None = None
    reply_to: str | None = None
    created_at: float = field(default_factory=time.time)
    attempt: int = 0

    @property
    def data(self) -> dict[str, Any]:
        """The body as a dict; raises if the body is bytes."""
        if isinstance(self.body, bytes):
            raise TypeError(f"message {self.type} carries bytes, not a dict")
        return self.body

    @property
    def is_error(self) -> bool:
        return self.type == ERROR_TYPE

    def reply(self, body: Body, *, type: str | None = None, headers: dict[str, Any] | None = None) -> Message:
        """A reply to this message, keeping its correlation id."""
        return Message(
            type=type or f"{self.type}.reply",
            body=body,
            headers=headers or {},
            correlation_id=self.correlation_id or self.id,
        )

    def error_reply(self, error: SkipperError) -> Message:
        return self.reply(error.to_payload(), type=ERROR_TYPE)

    def retried(self) -> Message:
        return replace(self, attempt=self.attempt + 1)

    def to_headers(self) -> dict[str, Any]:
        """The envelope fields other than the body, for wire formats with a header map."""
        return {
            "x-type": self.type,
            "x-id": self.id,
            "x-correlation-id": self.correlation_id,
            "x-created-at": self.created_at,
            "x-attempt": self.attempt,
            "x-body-kind": "bytes" if isinstance(self.body, bytes) else "json",
            **self.headers,
        }

    @classmethod
    def from_headers(cls, headers: dict[str, Any], body: Body, reply_to: str | None = None) -> Message:
        own = {k: v for k, v in headers.items() if not k.startswith("x-")}
        return cls(
            type=str(headers.get("x-type", "")),
            body=body,
            headers=own,
            id=str(headers.get("x-id") or new_id()),
            correlation_id=headers.get("x-correlation-id"),
            reply_to=reply_to,
            created_at=float(headers.get("x-created-at") or time.time()),
            attempt=int(headers.get("x-attempt") or 0),
        )


ERROR_TYPE = "error"
