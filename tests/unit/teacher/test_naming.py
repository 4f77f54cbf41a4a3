"""The versioned adapter name the teacher and the proxy both use on a vLLM server."""

from __future__ import annotations

import pytest

from services.common.errors import InvalidArgument
from services.common.naming import vllm_lora_name


def test_versioned_name_keeps_tenant_adapter_and_version():
    assert vllm_lora_name("acme/support-bot", 12) == "acme+support-bot+v12"


@pytest.mark.parametrize(
    ("adapter", "version", "message"),
    [
        ("no-tenant", 1, "tenant/adapter"),
        ("a/b/c", 1, "tenant/adapter"),
        ("/b", 1, "tenant/adapter"),
        ("a/b", 0, ">= 1, got 0"),
        ("a+b/c", 1, "tenant/adapter"),
    ],
)
def test_bad_names_and_unresolved_versions_are_refused(adapter, version, message):
    with pytest.raises(InvalidArgument, match=message):
        vllm_lora_name(adapter, version)


def test_the_name_is_injective_so_two_tenants_never_share_a_slot():
    """Hole: "acme--prod/bot" and "acme/prod--bot" both became "acme--prod--bot--v3"."""
    parts = ["acme", "acme-", "-prod", "prod", "acme--prod", "prod--bot", "bot", "v3", "bot--v3", "a.b", "a_b"]
    triples = [(f"{t}/{n}", v, g) for t in parts for n in parts for v in (1, 3, 13) for g in (1, 2, 3)]
    names = {vllm_lora_name(adapter, version, generation) for adapter, version, generation in triples}
    assert len(names) == len(triples)


def test_an_adapter_created_again_gets_other_names():
    """Hole: after delete and create, the new adapter's v1 was named like the old one's, so a replica or the
    teacher still holding the old v1 served deleted weights for it."""
    assert vllm_lora_name("acme/bot", 1, 2) == "acme+bot+g2+v1" != vllm_lora_name("acme/bot", 1)
    with pytest.raises(InvalidArgument, match="generation is >= 1"):
        vllm_lora_name("acme/bot", 1, 0)
