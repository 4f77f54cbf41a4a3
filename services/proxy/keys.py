"""Tenants' API keys in a keys file: the plaintext goes to the caller once; the file keeps only its SHA-256.

The file is what the proxy reads (``CLAAS_API_KEYS_FILE``): a JSON object ``{"sha256:<hex>": "<tenant>"}``.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path

from services.common.auth import ApiKeyAuth, hash_key
from services.common.errors import InvalidArgument, NotFound
from services.common.files import write_atomically
from services.common.naming import check_tenant

KEY_PREFIX = "claas-"
#: The shortest key-hash prefix ``revoke`` accepts: enough to never name two keys by accident.
MIN_HASH_PREFIX = 8


@dataclass(frozen=True, order=True)
class KeyEntry:
    """One key of the file, as far as it may be shown: its tenant and its hash (never the key)."""

    tenant: str
    sha256: str


def read_keys(keys_file: Path) -> list[KeyEntry]:
    """The file's keys by tenant then hash; none if it does not exist. Raises ``KeysFileError`` if broken."""
    keys_file = keys_file.expanduser()
    if not keys_file.exists():
        return []
    ApiKeyAuth.from_file(keys_file)  # the proxy's own checks: what it would refuse is refused here too
    raw: dict[str, str] = json.loads(keys_file.read_text())
    return sorted(KeyEntry(tenant, key.removeprefix("sha256:")) for key, tenant in raw.items())


def _write(keys_file: Path, entries: list[KeyEntry]) -> None:
    body = {f"sha256:{e.sha256}": e.tenant for e in entries}
    write_atomically(keys_file.expanduser(), json.dumps(body, indent=2, sort_keys=True))


def add_api_key(keys_file: Path, tenant: str) -> str:
    """Add a new key for ``tenant`` to ``keys_file`` (created if missing, mode 0600); return the key."""
    check_tenant(tenant)
    entries = read_keys(keys_file)
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    _write(keys_file, [*entries, KeyEntry(tenant, hash_key(key))])
    return key


def revoke_api_keys(keys_file: Path, *, tenant: str = "", sha256_prefix: str = "") -> list[KeyEntry]:
    """Remove every key of ``tenant``, or the one key whose hash starts with ``sha256_prefix``; the removed."""
    if bool(tenant) == bool(sha256_prefix):
        raise InvalidArgument("name a tenant or a key's hash prefix (one of them)")
    if sha256_prefix and len(sha256_prefix) < MIN_HASH_PREFIX:
        raise InvalidArgument(f"a key's hash prefix has at least {MIN_HASH_PREFIX} characters", param="sha256")
    entries = read_keys(keys_file)
    if tenant:
        gone = [e for e in entries if e.tenant == tenant]
    else:
        gone = [e for e in entries if e.sha256.startswith(sha256_prefix.lower())]
        if len(gone) > 1:
            raise InvalidArgument(f"{len(gone)} keys start with {sha256_prefix!r}: give more of the hash")
    if not gone:
        raise NotFound(f"no key of {tenant!r}" if tenant else f"no key whose hash starts with {sha256_prefix!r}")
    _write(keys_file, [e for e in entries if e not in gone])
    return gone
