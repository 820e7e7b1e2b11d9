"""Who is calling and what they may do: scopes, credential sources, and the start-up policy.

A route declares the scope it needs (`skipper.core.routing.Endpoint.scope`); the `Guard`
asks its credential sources, in order, who the caller is. Today the only source is
`Authorization: Bearer <key>`; the dashboard adds a signed session cookie as a second
source (`Guard.add_source`) without touching any route.

Scopes do not imply each other; `admin` implies every scope.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from dataclasses import dataclass
from typing import Literal, Protocol

from starlette.requests import Request

from skipper.core import apikeys
from skipper.core.errors import ConfigError, Forbidden, Unauthorized
from skipper.core.settings import ApiKey, Settings

Scope = Literal["read", "predict", "train", "deploy", "admin"]
Access = Literal["open", "read", "predict", "train", "deploy", "admin"]
OPEN: Access = "open"
ADMIN: Access = "admin"

log = logging.getLogger("skipper.auth")


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller as far as authorisation goes: a key's name (never the key) and its scopes."""

    name: str
    scopes: frozenset[str]

    def allows(self, scope: Access) -> bool:
        return scope == OPEN or "admin" in self.scopes or scope in self.scopes


ANONYMOUS = Principal("anonymous", frozenset())  # who calls an open route
UNCHECKED = Principal("open-mode", frozenset({"admin"}))  # every caller when keys are not checked


class CredentialSource(Protocol):
    """One way a request proves who it is.

    Returns the principal, or None when the request carries no credential of this kind.
    Raises `Unauthorized` when it carries one that is not valid (so no other source is tried).
    """

    async def identify(self, request: Request) -> Principal | None: ...


class BearerKeys:
    """`Authorization: Bearer <key>` against the configured SHA-256 hashes, compared in constant time."""

    def __init__(self, keys: list[ApiKey]) -> None:
        self._keys = [(bytes.fromhex(k.sha256), Principal(k.name, frozenset(k.scopes))) for k in keys]

    async def identify(self, request: Request) -> Principal | None:
        header = request.headers.get("authorization")
        if header is None:
            return None
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthorized("the Authorization header must be 'Bearer <key>'")
        return self.lookup(key.strip())

    def lookup(self, key: str) -> Principal:
        digest = bytes.fromhex(apikeys.hash_key(key))
        found = None
        for expected, principal in self._keys:  # every entry, no early exit: the time says nothing
            if hmac.compare_digest(digest, expected):
                found = principal
        if found is None:
            raise Unauthorized("unknown API key")
        return found


class Guard:
    """Authenticates a request and checks the scope its route needs."""

    def __init__(self, *, enforce: bool, sources: list[CredentialSource]) -> None:
        self.enforce = enforce
        self._sources = sources

    def add_source(self, source: CredentialSource) -> None:
        """Accept another kind of credential (e.g. the dashboard's session cookie), tried after the others."""
        self._sources.append(source)

    async def check(self, request: Request, scope: Access) -> Principal:
        """The caller, if allowed on a route needing `scope`; else `Unauthorized` (401) or `Forbidden` (403)."""
        if scope == OPEN:
            return ANONYMOUS  # whatever credentials came with it
        if not self.enforce:
            return UNCHECKED
        for source in self._sources:
            principal = await source.identify(request)
            if principal is not None:
                if not principal.allows(scope):
                    raise Forbidden(f"key {principal.name!r} lacks the {scope!r} scope this route needs",
                                    details={"scope": scope, "key": principal.name})
                return principal
        raise Unauthorized("this route needs an API key: send 'Authorization: Bearer <key>'",
                           details={"scope": scope})


def configured_keys(settings: Settings) -> list[ApiKey]:
    """`auth.keys` plus the entries of `auth.keys_file`; a bad file is a `ConfigError`."""
    keys = list(settings.auth.keys)
    if settings.auth.keys_file is not None:
        for i, entry in enumerate(apikeys.read_entries(settings.auth.keys_file)):
            try:
                keys.append(ApiKey.model_validate(entry))
            except ValueError as exc:
                raise ConfigError(f"auth.keys_file {settings.auth.keys_file} entry {i}: {exc}") from None
    names = [k.name for k in keys]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"API key names must be unique; {duplicates[0]!r} appears twice")
    return keys


def is_loopback(host: str) -> bool:
    """Whether a bind address only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


HOW_TO_FIX = (
    "create a key with `python -m skipper keys new --name NAME --scopes admin --file keys.yaml` and set "
    "SKIPPER_AUTH__KEYS_FILE=keys.yaml, or opt out explicitly with SKIPPER_AUTH__MODE=open (see docs/security.md)"
)


def build_guard(settings: Settings, *, protected_routes: bool) -> Guard:
    """The guard for a process, or a `ConfigError` when it would expose protected routes without keys.

    No keys and a loopback bind: open, with one warning. No keys and any other bind: refused,
    unless `auth.mode` is `open`. A process whose routes are all open (a trainer's or a
    server's health, ready and metrics) needs no keys.
    """
    keys = configured_keys(settings)
    mode = settings.auth.mode
    if mode == "open":
        if protected_routes:
            log.warning("auth.mode is open: every route answers without a key, on %s", settings.host)
        return Guard(enforce=False, sources=[])
    if keys:
        return Guard(enforce=True, sources=[BearerKeys(keys)])
    if not protected_routes:
        return Guard(enforce=True, sources=[])
    if mode == "keys":
        raise ConfigError(f"auth.mode is keys but no API key is configured: {HOW_TO_FIX}")
    if not is_loopback(settings.host):
        raise ConfigError(f"refusing to serve the API on {settings.host} without API keys: {HOW_TO_FIX}")
    log.warning("no API keys configured: the API is open to anyone who can reach %s:%d (loopback only)",
                settings.host, settings.port)
    return Guard(enforce=False, sources=[])
