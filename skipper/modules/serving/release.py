"""A model version as the registry announces it, and which of two announcements wins."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from skipper.core import signing
from skipper.core.errors import ArtifactRejected
from skipper.modules.serving import store


@dataclass(frozen=True, slots=True)
class Release:
    """One version of a model as the registry announces it (`model.published` headers)."""

    model: str
    version: int
    sha256: str
    size: int
    seq: int
    metadata: dict[str, Any]
    signature: str = ""

    @classmethod
    def parse(cls, fields: dict[str, Any]) -> Release:
        """Validate an announcement; anything malformed is an `ArtifactRejected`."""
        try:
            release = cls(
                model=store.check_model_name(fields["model"]),
                version=_int(fields["version"]),
                sha256=str(fields["sha256"]).lower(),
                size=_int(fields.get("size", 0)),
                seq=_int(fields["seq"]),
                metadata=dict(fields.get("metadata") or {}),
                signature=str(fields.get(signing.HEADER) or ""),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactRejected(f"malformed model announcement: {exc!r}") from None
        if len(release.sha256) != 64 or any(c not in "0123456789abcdef" for c in release.sha256):
            raise ArtifactRejected(f"malformed sha256 {release.sha256!r}")
        return release


def supersedes(new: Release, current: Release) -> bool:
    """Deployment order is `seq` (a rollback is an older version with a newer seq)."""
    if new.seq != current.seq:
        return new.seq > current.seq
    return new.sha256 != current.sha256


def _int(value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError("expected an integer, got a boolean")
    return int(value)
