"""Creating API keys: the plaintext goes to the caller once; the keys file keeps only its SHA-256."""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from pathlib import Path

from services.common.auth import hash_key
from services.common.naming import check_tenant

KEY_PREFIX = "claas-"


def add_api_key(keys_file: Path, tenant: str) -> str:
    """Add a new key for ``tenant`` to ``keys_file`` (created if missing, mode 0600); return the key."""
    check_tenant(tenant)
    keys_file = keys_file.expanduser()
    keys: dict[str, str] = json.loads(keys_file.read_text()) if keys_file.exists() else {}
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    keys[f"sha256:{hash_key(key)}"] = tenant
    keys_file.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{keys_file.name}.", dir=keys_file.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(keys, handle, indent=2, sort_keys=True)
        os.chmod(tmp, 0o600)
        os.replace(tmp, keys_file)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return key
