"""`claas keys`: add, list and revoke tenants' API keys in a keys file (the local stack's, or the file an
overlay's ``secretGenerator`` turns into the ``claas-api-keys`` Secret, k8s/README.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from services.cli.output import emit, fail
from services.cli.stack import KEYS_FILE, StackConfig
from services.common.auth import KeysFileError
from services.common.errors import ClaasError
from services.proxy.keys import KeyEntry, add_api_key, read_keys, revoke_api_keys


def register(sub: argparse._SubParsersAction) -> None:
    keys = sub.add_parser("keys", help="tenants' API keys in a keys file: add, list, revoke")
    actions = keys.add_subparsers(dest="action", required=True)

    def action(name: str, help_text: str, func) -> argparse.ArgumentParser:
        parser = actions.add_parser(name, help=help_text)
        parser.add_argument(
            "--file",
            type=Path,
            default=StackConfig().data_dir / KEYS_FILE,
            help="the keys file (CLAAS_API_KEYS_FILE of the proxy; default: the local stack's)",
        )
        parser.add_argument("--json", action="store_true", help="print one JSON object")
        parser.set_defaults(func=lambda args: _run(func, args))
        return parser

    add = action("add", "make a new key for a tenant; the key is printed once, only its hash is kept", _add)
    add.add_argument("tenant")
    action("list", "the tenants and the hashes of their keys (never the keys)", _list)
    revoke = action("revoke", "remove every key of a tenant, or one key by the start of its hash", _revoke)
    target = revoke.add_mutually_exclusive_group(required=True)
    target.add_argument("--tenant", default="")
    target.add_argument("--sha256", default="", help="the start of the key's hash, as `list` shows it")


def _run(func, args: argparse.Namespace) -> int:
    try:
        return func(args)
    except ClaasError as exc:
        return fail(f"claas keys: {exc.message}")
    except KeysFileError as exc:
        return fail(f"claas keys: {exc}", hint="fix the file by hand, or move it away and add the keys again")


def _entry(entry: KeyEntry) -> dict[str, str]:
    return {"tenant": entry.tenant, "sha256": entry.sha256}


def _add(args: argparse.Namespace) -> int:
    key = add_api_key(args.file, args.tenant)
    emit({"tenant": args.tenant, "api_key": key, "file": str(args.file)}, as_json=args.json,
         human=f"{key}\n(tenant {args.tenant}; shown once: only its SHA-256 is kept in {args.file})")  # fmt: skip
    return 0


def _list(args: argparse.Namespace) -> int:
    entries = read_keys(args.file)
    human = "\n".join(f"{e.tenant:<24} sha256:{e.sha256[:16]}..." for e in entries) or f"no keys in {args.file}"
    emit({"keys": [_entry(e) for e in entries]}, as_json=args.json, human=human)
    return 0


def _revoke(args: argparse.Namespace) -> int:
    gone = revoke_api_keys(args.file, tenant=args.tenant, sha256_prefix=args.sha256)
    human = "\n".join(f"revoked {e.tenant} sha256:{e.sha256[:16]}..." for e in gone)
    emit({"revoked": [_entry(e) for e in gone]}, as_json=args.json, human=human)
    return 0
