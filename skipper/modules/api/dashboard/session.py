"""The dashboard's login session and CSRF tokens.

Logging in with an API key sets `skipper_session`: the key's name and a fingerprint of its
hash, signed (itsdangerous) with `auth.session_secret`, `HttpOnly`, `SameSite=Strict`. The key
itself is never stored. Each request with the cookie is looked up against the keys configured
now, so removing a key ends its sessions.

Every form carries a CSRF token: an HMAC of a random nonce kept in its own `HttpOnly`,
`SameSite=Strict` cookie. A post is taken only when its token matches the nonce, so another
site cannot make a browser submit a dashboard form, with keys or without.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.responses import Response

from skipper.core.auth import BearerKeys, Principal
from skipper.core.errors import Forbidden
from skipper.core.settings import ApiKey, Settings

log = logging.getLogger("skipper.dashboard")

SESSION_COOKIE = "skipper_session"
CSRF_COOKIE = "skipper_csrf"
FINGERPRINT = 16  # hex digits of the key's SHA-256 in the cookie: enough to tell a replaced key


class Sessions:
    """Signs and reads session cookies; makes and checks CSRF tokens. Also the guard's cookie credential."""

    def __init__(self, settings: Settings, keys: list[ApiKey], *, path: str) -> None:
        secret = settings.auth.session_secret
        if secret is None:
            raw = secrets.token_urlsafe(32)  # sessions end when this process does
            if keys:
                log.info("auth.session_secret is not set: dashboard logins last until this process restarts "
                         "and work on this replica only")
        else:
            raw = secret.get_secret_value()
        self._secret = raw.encode()
        self._signer = URLSafeTimedSerializer(raw, salt="skipper.dashboard.session")
        self._max_age = settings.auth.session_max_age_s
        self._keys = {k.name: k for k in keys}
        self._bearer = BearerKeys(keys)
        self.path = path
        self.enabled = bool(keys) and settings.auth.mode != "open"

    # --- the session cookie (a CredentialSource for the guard) ------------------------------

    async def identify(self, request: Request) -> Principal | None:
        raw = request.cookies.get(SESSION_COOKIE)
        if not raw:
            return None
        try:
            data: Any = self._signer.loads(raw, max_age=self._max_age)
        except BadSignature:  # expired or forged: as if there were none, so the dashboard asks to log in
            return None
        key = self._keys.get(str(data.get("k"))) if isinstance(data, dict) else None
        if key is None or not hmac.compare_digest(key.sha256[:FINGERPRINT], str(data.get("h"))):
            return None
        return Principal(key.name, frozenset(key.scopes))

    def log_in(self, key: str) -> tuple[Principal, str]:
        """The principal of `key` and the cookie value for it; `Unauthorized` for an unknown key."""
        principal = self._bearer.lookup(key.strip())
        entry = self._keys[principal.name]
        return principal, self._signer.dumps({"k": entry.name, "h": entry.sha256[:FINGERPRINT]})

    def set_session(self, response: Response, value: str, request: Request) -> None:
        response.set_cookie(SESSION_COOKIE, value, max_age=self._max_age, path=self.path, httponly=True,
                            samesite="strict", secure=request.url.scheme == "https")

    def clear_session(self, response: Response) -> None:
        response.delete_cookie(SESSION_COOKIE, path=self.path, httponly=True, samesite="strict")

    # --- CSRF -----------------------------------------------------------------------------

    def csrf_nonce(self, request: Request) -> tuple[str, bool]:
        """This browser's nonce, and whether it is new (then the response must set its cookie)."""
        nonce = request.cookies.get(CSRF_COOKIE, "")
        if len(nonce) >= 16:
            return nonce, False
        return secrets.token_urlsafe(24), True

    def csrf_token(self, nonce: str) -> str:
        return hmac.new(self._secret, f"csrf:{nonce}".encode(), hashlib.sha256).hexdigest()

    def set_csrf(self, response: Response, nonce: str, request: Request) -> None:
        response.set_cookie(CSRF_COOKIE, nonce, path=self.path, httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")

    def check_csrf(self, request: Request, token: str) -> None:
        """`Forbidden` unless `token` belongs to this browser's nonce."""
        nonce = request.cookies.get(CSRF_COOKIE, "")
        if len(nonce) < 16 or not hmac.compare_digest(self.csrf_token(nonce), token):
            raise Forbidden("this form has expired or came from another site; reload the page and try again",
                            details={"field": "csrf"})
