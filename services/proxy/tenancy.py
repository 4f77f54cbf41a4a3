"""Who may touch what: adapter names are ``tenant/adapter`` and a caller reaches only its own tenant.

An adapter of another tenant is reported exactly like one that does not exist, so a caller cannot learn
which names other tenants use.
"""

from __future__ import annotations

import hmac
import os
import threading
from pathlib import Path

import structlog

from services.common.auth import INTERNAL, ApiKeyAuth, KeyAuthenticator, KeysFileError, Principal
from services.common.errors import InvalidArgument, NotFound, Unauthenticated
from services.common.naming import owner_of

log = structlog.get_logger("claas.proxy.tenancy")


def tenant_of(principal: Principal) -> str:
    """The tenant a public call acts for."""
    if not principal.tenant:
        raise Unauthenticated("an API key of a tenant is required")
    return principal.tenant


def qualify(tenant: str, name: str) -> str:
    """The full ``tenant/adapter`` name of ``name`` ("adapter" or "tenant/adapter") for the caller's tenant."""
    name = name.strip()
    if not name:
        raise InvalidArgument("an adapter name is required", param="name")
    owner, sep, adapter = name.partition("/")
    if not sep:
        return f"{tenant}/{name}"
    if owner != tenant or not adapter:
        raise not_found(name)
    return name


def not_found(name: str) -> NotFound:
    """The one answer for a name the caller cannot see, whether or not it exists."""
    return NotFound(f"adapter '{name}' not found", param="model")


def owns(tenant: str, full_name: str) -> bool:
    return owner_of(full_name) == tenant


class KeysFileAuth:
    """API keys from a keys file, re-read when the file changes (keys added while the proxy runs count)."""

    def __init__(self, path: Path | None) -> None:
        """Raises ``KeysFileError`` if the file exists but cannot be used: the proxy does not start on it."""
        self._path = path
        self._stamp: tuple[int, int] | None = None
        self._auth = ApiKeyAuth({})
        self._lock = threading.Lock()
        self._refresh(starting=True)

    def _refresh(self, *, starting: bool = False) -> None:
        if self._path is None:
            return
        try:
            stat = os.stat(self._path)
        except FileNotFoundError:
            self._stamp, self._auth = None, ApiKeyAuth({})
            return
        stamp = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if stamp == self._stamp:
                return
            try:
                self._auth = ApiKeyAuth.from_file(self._path)
            except KeysFileError as exc:
                if starting:
                    raise
                # A file being edited, or a bad edit: the keys read last stay in force, the operator is told,
                # and no caller learns where the file is or what is wrong with it.
                log.error("api_keys_file_unusable", error=str(exc))
            self._stamp = stamp

    def authenticate(self, bearer: str | None) -> Principal:
        self._refresh()
        return self._auth.authenticate(bearer)

    def authenticate_digest(self, digest: str) -> Principal:
        self._refresh()
        return self._auth.authenticate_digest(digest)


class ReplicaOrKeyAuth:
    """The proxy's gRPC callers: tenants by API key, and the other proxy replicas by the internal token (which
    carries no tenant, so only ProxyPeerService serves it). An empty internal token admits no replica."""

    def __init__(self, keys: KeyAuthenticator, internal_token: str) -> None:
        self._keys = keys
        self._token = internal_token.encode()

    def authenticate(self, bearer: str | None) -> Principal:
        if self._token and bearer is not None and hmac.compare_digest(bearer.encode(), self._token):
            return INTERNAL
        return self._keys.authenticate(bearer)

    def authenticate_digest(self, digest: str) -> Principal:
        return self._keys.authenticate_digest(digest)
