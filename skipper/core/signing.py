"""Signed model announcements: HMAC-SHA256 by the registry, checked by every server.

With `bus.signing_key` set, the registry signs each announcement (`model.published` and the
catch-up list) over the model, version, artifact sha256 and deployment sequence; a server
with the key refuses an announcement whose signature is missing or wrong, so whoever can
publish on the broker cannot make servers load (or roll back to) an artifact the registry
did not announce. The sequence is signed too: an old signed announcement replayed with a
newer sequence does not verify.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from pydantic import SecretStr

from skipper.core.errors import ArtifactRejected

HEADER = "signature"


def _mac(key: SecretStr, fields: dict[str, Any]) -> str:
    message = "\n".join(str(fields.get(name)) for name in ("model", "version", "sha256", "seq"))
    return hmac.new(key.get_secret_value().encode(), message.encode(), hashlib.sha256).hexdigest()


def sign(key: SecretStr | None, fields: dict[str, Any]) -> dict[str, Any]:
    """`fields` (an announcement) with its signature added; unchanged when there is no key."""
    return fields if key is None else {**fields, HEADER: _mac(key, fields)}


def verify(key: SecretStr | None, fields: dict[str, Any]) -> None:
    """`ArtifactRejected` unless the announcement is signed with `key` (nothing to check without a key)."""
    if key is None:
        return
    given = fields.get(HEADER)
    if not isinstance(given, str) or not given:
        raise ArtifactRejected("unsigned model announcement refused (bus.signing_key is set)")
    if not hmac.compare_digest(given, _mac(key, fields)):
        raise ArtifactRejected("model announcement with a wrong signature refused")


def _body_mac(key: SecretStr, body: dict[str, Any]) -> str:
    canonical = json.dumps({k: v for k, v in body.items() if k != HEADER}, sort_keys=True, separators=(",", ":"),
                           default=str)
    return hmac.new(key.get_secret_value().encode(), canonical.encode(), hashlib.sha256).hexdigest()


def seal(key: SecretStr | None, body: dict[str, Any]) -> dict[str, Any]:
    """A whole JSON body (e.g. a server's announcement of itself) with its signature; unchanged without a key."""
    return body if key is None else {**body, HEADER: _body_mac(key, body)}


def check(key: SecretStr | None, body: dict[str, Any]) -> bool:
    """Whether `body` carries a valid `seal` (always True without a key)."""
    if key is None:
        return True
    given = body.get(HEADER)
    return isinstance(given, str) and hmac.compare_digest(given, _body_mac(key, body))
