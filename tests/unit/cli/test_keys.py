"""`claas keys`: what an operator does with tenants' keys, checked against what the proxy then accepts."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from services.cli.main import main
from services.common.errors import Unauthenticated
from services.proxy.tenancy import KeysFileAuth


def _claas(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_add_list_revoke_as_the_proxy_sees_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys_file = tmp_path / "api-keys.json"
    _, added, _ = _claas(capsys, "keys", "add", "acme", "--file", str(keys_file), "--json")
    acme = json.loads(added)["api_key"]
    _, added, _ = _claas(capsys, "keys", "add", "beta", "--file", str(keys_file), "--json")
    beta = json.loads(added)["api_key"]
    proxy = KeysFileAuth(keys_file)
    assert (proxy.authenticate(acme).tenant, proxy.authenticate(beta).tenant) == ("acme", "beta")
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600

    code, listed, _ = _claas(capsys, "keys", "list", "--file", str(keys_file))
    assert code == 0 and [line.split()[0] for line in listed.splitlines()] == ["acme", "beta"]
    assert acme not in listed and beta not in listed  # hashes only

    code, revoked, _ = _claas(capsys, "keys", "revoke", "--tenant", "acme", "--file", str(keys_file))
    assert code == 0 and revoked.startswith("revoked acme sha256:")
    with pytest.raises(Unauthenticated):
        proxy.authenticate(acme)
    assert proxy.authenticate(beta).tenant == "beta"


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["add", "Not/A-Tenant"], "invalid tenant name 'Not/A-Tenant'"),
        (["revoke", "--tenant", "nobody"], "no key of 'nobody'"),
        (["revoke", "--sha256", "abc"], "at least 8 characters"),
    ],
)
def test_mistakes_are_told_and_change_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], error: str
) -> None:
    keys_file = tmp_path / "api-keys.json"
    _claas(capsys, "keys", "add", "acme", "--file", str(keys_file))
    before = keys_file.read_text()

    code, _, err = _claas(capsys, "keys", *argv, "--file", str(keys_file))

    assert code == 1 and error in err
    assert keys_file.read_text() == before
