"""API keys and adapter names: a caller reaches only its own tenant."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
import structlog.testing

from services.common.auth import KeysFileError, Principal, hash_key
from services.common.errors import InvalidArgument, NotFound, Unauthenticated
from services.proxy.keys import add_api_key
from services.proxy.tenancy import KeysFileAuth, qualify, tenant_of


def test_qualify_puts_short_names_in_the_callers_tenant() -> None:
    assert qualify("acme", "bot") == "acme/bot"
    assert qualify("acme", "acme/bot") == "acme/bot"


@pytest.mark.parametrize("name", ["beta/bot", "acme/", "/bot"])
def test_qualify_answers_foreign_names_like_missing_ones(name: str) -> None:
    with pytest.raises(NotFound) as caught:
        qualify("acme", name)
    assert caught.value.message == f"adapter '{name}' not found"


def test_empty_names_are_invalid() -> None:
    with pytest.raises(InvalidArgument, match="name is required"):
        qualify("acme", "  ")


def test_added_keys_authenticate_their_tenant_and_only_hashes_are_stored(keys_file: Path) -> None:
    key = add_api_key(keys_file, "acme")
    auth = KeysFileAuth(keys_file)

    assert auth.authenticate(key) == Principal(tenant="acme")
    assert auth.authenticate_digest(hash_key(key)) == Principal(tenant="acme")  # a dashboard session's check
    stored = json.loads(keys_file.read_text())
    assert stored == {f"sha256:{hash_key(key)}": "acme"}
    assert key not in keys_file.read_text()
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600


def test_keys_added_while_running_are_accepted(keys_file: Path) -> None:
    add_api_key(keys_file, "acme")
    auth = KeysFileAuth(keys_file)
    later = add_api_key(keys_file, "beta")
    assert auth.authenticate(later).tenant == "beta"


@pytest.mark.parametrize("bearer", [None, "wrong"])
def test_missing_or_wrong_keys_are_unauthenticated(keys_file: Path, bearer: str | None) -> None:
    add_api_key(keys_file, "acme")
    with pytest.raises(Unauthenticated):
        KeysFileAuth(keys_file).authenticate(bearer)


def test_without_a_keys_file_nobody_gets_in(tmp_path: Path) -> None:
    with pytest.raises(Unauthenticated):
        KeysFileAuth(None).authenticate("anything")
    with pytest.raises(Unauthenticated):
        KeysFileAuth(tmp_path / "missing.json").authenticate("anything")


@pytest.mark.parametrize("tenant", ["", "Acme", "a/b", "-x", "x" * 64])
def test_tenant_names_must_be_valid_adapter_prefixes(keys_file: Path, tenant: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid tenant name"):
        add_api_key(keys_file, tenant)
    assert not keys_file.exists()


def test_internal_principals_have_no_tenant() -> None:
    with pytest.raises(Unauthenticated):
        tenant_of(Principal(tenant=None, internal=True))


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("{not json", "cannot read API keys file"),
        ('["a list"]', "must hold a JSON object"),
        (json.dumps({f"sha256:{'0' * 64}": "Evil/Tenant"}), "invalid tenant name 'Evil/Tenant'"),
        (json.dumps({"change-me": "demo"}), "is not a SHA-256 of a key"),
    ],
)
def test_a_broken_keys_file_is_the_operators_problem_never_the_callers(
    keys_file: Path, content: str, reason: str
) -> None:
    """Holes: a broken keys file showed its path to an unauthenticated caller; tenant names were not checked."""
    key = add_api_key(keys_file, "acme")
    auth = KeysFileAuth(keys_file)
    keys_file.write_text(content)  # a bad edit while the proxy runs

    with structlog.testing.capture_logs() as logs, pytest.raises(Unauthenticated) as refused:
        auth.authenticate("claas-someone-else")
    assert refused.value.message == "invalid API key" and str(keys_file) not in refused.value.message
    assert auth.authenticate(key).tenant == "acme"  # the keys read last stay in force
    assert [e["event"] for e in logs] == ["api_keys_file_unusable"] and reason in logs[0]["error"]  # for the operator
    with pytest.raises(KeysFileError, match=reason):  # a proxy does not start on it
        KeysFileAuth(keys_file)
