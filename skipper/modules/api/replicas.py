"""The api's view of the serving replicas: the last announcement of each, forgotten after three silent periods."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from pydantic import SecretStr

from skipper.core import signing
from skipper.core.messages import Message

log = logging.getLogger("skipper.api.replicas")

SILENT_PERIODS = 3
MAX_REPLICAS = 10_000  # a flood of made-up ids on the broker cannot grow this without bound


@dataclass(frozen=True, slots=True)
class Replica:
    """What a server last said about itself, and when it was heard."""

    id: str
    host: str
    role: str
    models: dict[str, int]
    uptime_s: float
    period_s: float
    skipper: str
    heard: float  # time.monotonic() when heard
    heard_at: float  # time.time() when heard

    def alive(self, now: float) -> bool:
        """Heard from within three of its own periods."""
        return now - self.heard <= SILENT_PERIODS * self.period_s

    def to_json(self, now: float) -> dict[str, Any]:
        return {"id": self.id, "host": self.host, "role": self.role, "models": dict(self.models),
                "uptime_s": round(self.uptime_s + (now - self.heard), 1), "skipper": self.skipper,
                "last_seen_s": round(now - self.heard, 2), "period_s": self.period_s}


class ReplicaView:
    """Fed by `server.announced`; lists the servers heard from within three of their periods."""

    def __init__(self, signing_key: SecretStr | None) -> None:
        self._key = signing_key
        self._replicas: dict[str, Replica] = {}

    async def on_announced(self, msg: Message) -> None:
        body = msg.body if isinstance(msg.body, dict) else {}
        if not signing.check(self._key, body):
            log.warning("ignoring a server announcement with a missing or wrong signature")
            return
        try:
            replica = Replica(
                id=str(body["id"])[:200], host=str(body.get("host", ""))[:200], role=str(body.get("role", ""))[:32],
                models={str(k)[:128]: int(v) for k, v in dict(body.get("models") or {}).items()},
                uptime_s=float(body.get("uptime_s", 0.0)), period_s=max(0.05, float(body.get("period_s", 5.0))),
                skipper=str(body.get("skipper", ""))[:32], heard=time.monotonic(), heard_at=time.time())
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("ignoring a malformed server announcement: %s", exc)
            return
        if body.get("leaving"):
            self._replicas.pop(replica.id, None)
            return
        self._prune(replica.heard)
        if replica.id in self._replicas or len(self._replicas) < MAX_REPLICAS:
            self._replicas[replica.id] = replica

    def replicas(self) -> list[dict[str, Any]]:
        """The live servers, by id."""
        now = time.monotonic()
        self._prune(now)
        return [r.to_json(now) for r in sorted(self._replicas.values(), key=lambda r: r.id)]

    def serving(self, model: str) -> int:
        """How many live servers serve some version of `model`."""
        now = time.monotonic()
        return sum(1 for r in self._replicas.values() if model in r.models and r.alive(now))

    def _prune(self, now: float) -> None:
        for rid in [rid for rid, r in self._replicas.items() if not r.alive(now)]:
            del self._replicas[rid]
