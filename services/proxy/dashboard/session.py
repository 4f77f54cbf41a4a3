"""Dashboard sessions: a signed, expiring cookie naming the tenant, and the CSRF token of its forms.

The cookie holds no key: the tenant the key named at sign-in, the key's SHA-256 (what the keys file holds
too; checked again on every request, so revoking the key ends its sessions) and a random token. It is signed
(HMAC, itsdangerous) with the dashboard secret, so a client can neither forge nor extend it. Forms that
change something carry the session's token, which a page of another site cannot read (SameSite=Strict, and
no page of ours is framed).
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from services.common.auth import KeyAuthenticator, hash_key
from services.common.errors import PermissionDenied, Unauthenticated
from services.proxy.tenancy import tenant_of

COOKIE = "claas_dashboard"


@dataclass(frozen=True)
class Session:
    """A signed-in tenant, the SHA-256 of the key it signed in with, and the token its forms must carry."""

    tenant: str
    key_digest: str
    csrf: str

    def check_csrf(self, token: str | None) -> None:
        if not token or not hmac.compare_digest(token.encode(), self.csrf.encode()):
            raise PermissionDenied("this form's CSRF token is missing or wrong: reload the page and try again")


class Sessions:
    """Issues and reads session cookies signed with ``secret``, valid ``max_age_s`` seconds."""

    def __init__(self, secret: str, max_age_s: int) -> None:
        self._signer = URLSafeTimedSerializer(secret or secrets.token_urlsafe(32), salt="claas-dashboard-session")
        self.max_age_s = max_age_s

    def issue(self, tenant: str, key: str) -> str:
        """The cookie value of a new session of ``tenant``, signed in with ``key``."""
        return self._signer.dumps({"t": tenant, "k": hash_key(key), "c": secrets.token_urlsafe(24)})

    def read(self, cookie: str | None) -> Session:
        if not cookie:
            raise Unauthenticated("sign in with an API key")
        try:
            body = self._signer.loads(cookie, max_age=self.max_age_s)
        except SignatureExpired:
            raise Unauthenticated("your session expired: sign in again") from None
        except BadSignature:
            raise Unauthenticated("sign in with an API key") from None
        return Session(str(body["t"]), str(body["k"]), str(body["c"]))

    def check(self, session: Session, auth: KeyAuthenticator) -> Session:
        """The session while its key still names its tenant; a revoked key ends it."""
        try:
            still = tenant_of(auth.authenticate_digest(session.key_digest)) == session.tenant
        except Unauthenticated:
            still = False
        if not still:
            raise Unauthenticated("the key of this session is no longer valid: sign in again")
        return session
