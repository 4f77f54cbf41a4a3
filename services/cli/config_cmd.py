"""`claas config`: every CLAAS_* variable each service reads, with its default and meaning."""

from __future__ import annotations

import argparse
import importlib
import json

from pydantic_settings import BaseSettings

#: (where it applies, settings class) — the services' own classes hold the common fields too.
SETTINGS_CLASSES = (
    ("all services", "services.common.settings:CommonSettings"),
    ("storage, proxy", "services.common.objectstore:ObjectStoreSettings"),
    ("all (model cache)", "services.common.model:ModelCacheSettings"),
    ("storage", "services.storage.settings:StorageSettings"),
    ("teacher", "services.teacher.settings:TeacherSettings"),
    ("trainer", "services.trainer.settings:TrainerSettings"),
    ("proxy", "services.proxy.settings:ProxySettings"),
)


def _load(path: str) -> type[BaseSettings]:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def settings_rows() -> list[dict[str, str]]:
    """One row per variable; a field several services share lists them all (and any differing default)."""
    rows: dict[str, dict[str, str]] = {}
    for scope, path in SETTINGS_CLASSES:
        cls = _load(path)
        prefix = cls.model_config.get("env_prefix", "")
        for field_name, info in cls.model_fields.items():
            env = f"{prefix}{field_name}".upper()
            default = _default(info)
            row = rows.get(env)
            if row is None:
                rows[env] = {
                    "variable": env,
                    "services": scope,
                    "default": default,
                    "description": info.description or "",
                }
                continue
            if row["services"] in ("all services", "storage, proxy"):
                if default != row["default"]:
                    row["default"] += f"; {scope}: {default}"
                continue
            row["services"] += f", {scope}"
    return list(rows.values())


def _default(info) -> str:
    if info.default_factory is not None:
        return "(computed)"
    return "" if info.default is None else str(info.default)


def markdown_table() -> str:
    lines = ["| variable | services | default | meaning |", "|---|---|---|---|"]
    for row in settings_rows():
        cells = [
            f"`{row['variable']}`",
            row["services"],
            f"`{row['default']}`" if row["default"] else "",
            row["description"],
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def register(sub: argparse._SubParsersAction) -> None:
    config = sub.add_parser("config", help="list every CLAAS_* variable with its default and meaning")
    config.add_argument("--json", action="store_true")
    config.add_argument("--markdown", action="store_true", help="as the README's table")
    config.set_defaults(func=_config)


def _config(args: argparse.Namespace) -> int:
    if args.json:
        print(json.dumps(settings_rows()))
    elif args.markdown:
        print(markdown_table())
    else:
        for row in settings_rows():
            print(f"{row['variable']:<34} {row['services']:<22} {row['default']!s:<24} {row['description']}")
    return 0
