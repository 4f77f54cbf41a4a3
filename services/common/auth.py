"""Who is calling: the internal token between services, API keys (hashed) mapped to tenants at the proxy."""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from services.common.errors import InvalidArgument, Unauthenticated
from services.common.naming import check_tenant

AUTH_METADATA_KEY = "authorization"


@dataclass(frozen=True)
class Principal:
    """The authenticated caller. ``tenant`` is None for internal services."""

    tenant: str | None
    internal: bool = False


INTERNAL = Principal(tenant=None, internal=True)
_current: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("claas_principal", default=None)


def current_principal() -> Principal:
    principal = _current.get()
    if principal is None:
        raise Unauthenticated("no authenticated caller")
    return principal


def bind_principal(principal: Principal) -> contextvars.Token:
    return _current.set(principal)


class Authenticator(Protocol):
    def authenticate(self, bearer: str | None) -> Principal:
        """The caller behind a bearer token, or raise Unauthenticated."""
        ...


class KeyAuthenticator(Authenticator, Protocol):
    """Tenants' API keys, also known by their SHA-256: what a session made from a key is checked against
    again, so that revoking the key ends the session too."""

    def authenticate_digest(self, digest: str) -> Principal:
        """The caller whose key has this SHA-256 (hex), or raise Unauthenticated."""
        ...


def bearer_from_header(value: str | None) -> str | None:
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def bearer_header(token: str) -> dict[str, str]:
    """HTTP headers that present ``token``; none for an empty one (a server that asks for no key)."""
    return {AUTH_METADATA_KEY: f"Bearer {token}"} if token else {}


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class InternalTokenAuth:
    """Accepts only the shared internal token. An empty configured token accepts everyone (local tests)."""

    def __init__(self, token: str) -> None:
        self._token = token

    def authenticate(self, bearer: str | None) -> Principal:
        if not self._token:
            return INTERNAL
        if bearer is None or not hmac.compare_digest(bearer.encode(), self._token.encode()):
            raise Unauthenticated("missing or invalid internal token")
        return INTERNAL


class KeysFileError(ValueError):
    """An API keys file that cannot be used; the message (with the file's path) is for the operator only."""


_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class ApiKeyAuth:
    """Tenants' API keys, stored as SHA-256 hex digests: ``{"<sha256 of key>": "<tenant>"}``."""

    def __init__(self, key_hashes: dict[str, str]) -> None:
        self._tenants = dict(key_hashes)

    @classmethod
    def from_file(cls, path: Path) -> ApiKeyAuth:
        """Read a keys file: a JSON object mapping ``sha256:<hex>`` (or plain hex) to a tenant name.

        Raises ``KeysFileError`` (for the operator: it names the file) if it cannot be read or holds a bad entry."""
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise KeysFileError(f"cannot read API keys file {path}: {exc}") from exc
        if not isinstance(raw, dict):
            raise KeysFileError(f"API keys file {path} must hold a JSON object of key hash -> tenant")
        hashes = {}
        for key, tenant in raw.items():
            digest = str(key).removeprefix("sha256:")
            if not _SHA256_HEX.fullmatch(digest):
                raise KeysFileError(f"API keys file {path}: {str(key)[:16]!r}... is not a SHA-256 of a key")
            try:
                hashes[digest] = check_tenant(tenant if isinstance(tenant, str) else "")
            except InvalidArgument as exc:
                raise KeysFileError(f"API keys file {path}: {exc.message}") from None
        return cls(hashes)

    def authenticate(self, bearer: str | None) -> Principal:
        if bearer is None:
            raise Unauthenticated("missing API key: send 'authorization: Bearer <key>'")
        return self.authenticate_digest(hash_key(bearer))

    def authenticate_digest(self, digest: str) -> Principal:
        tenant = self._tenants.get(digest)
        if tenant is None:
            raise Unauthenticated("invalid API key")
        return Principal(tenant=tenant)
