"""Names and numbers shared between services: which version numbers exist, and how an adapter version is
called on a vLLM server and in folders.

The proxy (serving) and the teacher (``self`` mode on the vLLM backend) load versions under the same name,
so either can use a version the other loaded. The name is injective: two (adapter, generation, version)
triples never get the same name, so two tenants, or an adapter and the one created under its name after a
delete, can never share a vLLM slot or a folder.
"""

from __future__ import annotations

import re

from services.common.errors import InvalidArgument

#: One part of an adapter name ("tenant/adapter"), a tenant, a tag: what storage's keys and folders can hold.
NAME_PART = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
NAME_PART_RULE = "1-63 of a-z 0-9 . _ - starting with a letter or digit"

#: Replaces the "/" of "tenant/adapter" (which vLLM model names may not carry through every route) and comes
#: before the version. Adapter names may not contain it, which makes the name injective: "--" could not be used,
#: since "acme--prod/bot" and "acme/prod--bot" would both have become "acme--prod--bot".
LORA_NAME_SEPARATOR = "+"
#: Versions travel as int64 between the services: a larger number from HTTP is refused, not overflowed.
MAX_VERSION = 2**63 - 1


def check_tenant(tenant: str) -> str:
    """A tenant name; raises InvalidArgument otherwise."""
    if not NAME_PART.fullmatch(tenant) or ".." in tenant:
        raise InvalidArgument(f"invalid tenant name {tenant!r}: {NAME_PART_RULE}", param="tenant")
    return tenant


def owner_of(adapter: str) -> str:
    """The tenant of ``"tenant/adapter"``."""
    return adapter.partition("/")[0]


def check_version(version: int, *, field: str = "version", allow_zero: bool = True, zero: str = "") -> int:
    """A version number (0 allowed where it means "the head" or "none"); raises InvalidArgument otherwise."""
    least = 0 if allow_zero else 1
    if version < least:
        meaning = f" (0 = {zero})" if zero else ""
        raise InvalidArgument(f"{field} must be >= {least}{meaning}, got {version}", param=field)
    if version > MAX_VERSION:
        raise InvalidArgument(f"{field} must be at most {MAX_VERSION}, got {version}", param=field)
    return version


def vllm_lora_name(adapter: str, version: int, generation: int = 1) -> str:
    """``"tenant/adapter"`` at version N -> ``"tenant+adapter+vN"``; an adapter created again after a delete
    (generation G > 1) -> ``"tenant+adapter+gG+vN"``, so its v1 is never taken for the old one's."""
    tenant, slash, name = adapter.partition("/")
    if not slash or not tenant or not name or "/" in name or LORA_NAME_SEPARATOR in adapter:
        raise InvalidArgument(f"adapter name must look like 'tenant/adapter', got {adapter!r}", param="adapter")
    if version < 1:
        raise InvalidArgument(f"a served adapter version is >= 1, got {version}", param="version")
    if generation < 1:
        raise InvalidArgument(f"an adapter generation is >= 1, got {generation}", param="generation")
    parts = [tenant, name, *([f"g{generation}"] if generation > 1 else []), f"v{version}"]
    return LORA_NAME_SEPARATOR.join(parts)
