"""Adapters through the proxy: scoped to the caller's tenant, rollback served at once, export without
optimizer state."""

from __future__ import annotations

import pytest

from services.common.domain import LoraSpec, Message
from services.common.errors import InvalidArgument, NotFound, PermissionDenied, ResourceExhausted
from services.proxy.core import ProxyCore
from services.proxy.domain import ChatRequest
from services.storage.client import StorageClient
from tests.unit.proxy.fakes import BASE, FakeVllm, add, commit, head, names

ASK = (Message("user", "Hi"),)


async def test_create_makes_version_one_in_the_callers_tenant(core: ProxyCore, storage: StorageClient) -> None:
    adapter = await core.adapters.create("acme", "helper", LoraSpec(rank=4))
    assert (adapter.name, adapter.head_version) == ("acme/helper", 1)
    assert (await core.adapters.create("acme", "acme/second")).name == "acme/second"
    with pytest.raises(PermissionDenied, match="your own tenant"):
        await core.adapters.create("acme", "beta/helper")
    assert "beta/helper" not in await names(storage)
    assert (await storage.get_adapter("acme/helper")).lora.rank == 4


async def test_list_and_models_show_only_the_callers_adapters(core: ProxyCore) -> None:
    assert [a.name for a in await core.adapters.list("acme")] == ["acme/bot"]
    assert [(m.id, m.version) for m in await core.models("beta")] == [(BASE, 0), ("beta/secret", 1)]


@pytest.mark.parametrize("name", ["beta/secret", "missing"])
async def test_foreign_and_missing_adapters_are_not_found_alike(
    core: ProxyCore, storage: StorageClient, name: str
) -> None:
    for call in (
        core.adapters.get("acme", name),
        core.adapters.versions("acme", name),
        core.adapters.rollback("acme", name, 1),
        core.adapters.export("acme", name),
    ):
        with pytest.raises(NotFound) as caught:
            await call
        assert caught.value.message == f"adapter '{name}' not found"
    with pytest.raises(NotFound):
        await core.adapters.delete("acme", "beta/secret")
    assert "beta/secret" in await names(storage)


async def test_rollback_moves_the_head_and_vllm_serves_it_next(
    core: ProxyCore, storage: StorageClient, vllm: FakeVllm
) -> None:
    await commit(storage, "acme/bot")
    assert (await core.inference.chat("acme", ChatRequest("bot", ASK))).version == 2

    adapter = await core.adapters.rollback("acme", "bot", 1)

    assert adapter.head_version == 1 and await head(storage, "acme/bot") == 1
    assert list(vllm.loaded) == ["acme+bot+v1"]
    assert (await core.inference.chat("acme", ChatRequest("bot", ASK))).version == 1
    with pytest.raises(InvalidArgument, match="version must be >= 1"):
        await core.adapters.rollback("acme", "bot", 0)
    with pytest.raises(NotFound, match="version 9 of adapter 'acme/bot' not found"):
        await core.adapters.rollback("acme", "bot", 9)


async def test_export_gives_the_peft_files_and_never_the_optimizer(core: ProxyCore) -> None:
    header, chunks = await core.adapters.export("acme", "bot")
    files = {chunk.path async for chunk in chunks}
    assert sorted(files) == ["adapter_config.json", "adapter_model.safetensors"]
    assert sorted(f.path for f in header.files) == sorted(files)
    assert (header.name, header.version) == ("acme/bot", 1)


async def test_delete_removes_the_adapter_and_unloads_it(
    core: ProxyCore, storage: StorageClient, vllm: FakeVllm
) -> None:
    await core.inference.chat("acme", ChatRequest("bot", ASK))
    assert await core.adapters.delete("acme", "bot") is True
    assert await core.adapters.delete("acme", "bot") is False
    assert vllm.loaded == {} and "acme/bot" not in await names(storage)
    with pytest.raises(NotFound):
        await core.inference.chat("acme", ChatRequest("bot", ASK))


async def test_a_tenant_cannot_hold_more_adapters_than_its_quota(core: ProxyCore, trainer) -> None:
    """Hole: no quotas; one tenant could make adapters without end."""
    from services.common.errors import ResourceExhausted
    from services.proxy.adapters import Adapters

    core.adapters = Adapters(
        storage=core.storage,
        trainer=trainer,
        loras=core.loras,
        serving=core.router,
        audit=core.audit,
        max_per_tenant=2,
    )
    await core.adapters.create("acme", "second")  # acme/bot exists already: two now

    with pytest.raises(ResourceExhausted) as refused:
        await core.adapters.create("acme", "third")
    assert refused.value.message == (
        "tenant 'acme' has 2 adapters, its quota (CLAAS_MAX_ADAPTERS_PER_TENANT); delete one first"
    )
    assert [a.name for a in await core.adapters.list("acme")] == ["acme/bot", "acme/second"]
    assert (await core.adapters.create("beta", "mine")).name == "beta/mine"  # another tenant's own quota


async def test_an_adapter_created_again_elsewhere_is_never_served_the_old_weights(
    core: ProxyCore, storage: StorageClient, vllm: FakeVllm
) -> None:
    """Hole: vLLM names were tenant+adapter+vN only, so a replica that missed a delete and a create (here:
    done straight on storage, as another replica would) served the deleted adapter's v1 for the new one."""
    assert (await core.inference.chat("acme", ChatRequest("bot", ASK))).version == 1
    assert list(vllm.loaded) == ["acme+bot+v1"]
    await storage.delete_adapter("acme/bot")
    recreated = await add(storage, "acme/bot")

    assert recreated.generation == 2
    assert (await core.inference.chat("acme", ChatRequest("bot", ASK))).version == 1
    assert list(vllm.loaded) == ["acme+bot+g2+v1"]  # the old v1 is gone, not reused


async def test_exports_staged_at_once_are_bounded_per_tenant_and_given_back(core: ProxyCore) -> None:
    """Each export holds a whole version on the proxy's disk until it is sent: a tenant may stage a quarter of
    CLAAS_MAX_PARALLEL_EXPORTS (8 -> 2) at once; a finished, closed or dropped export gives its slot back."""
    _, first = await core.adapters.export("acme", "bot")
    _, second = await core.adapters.export("acme", "bot")
    with pytest.raises(ResourceExhausted, match="CLAAS_MAX_PARALLEL_EXPORTS"):
        await core.adapters.export("acme", "bot")
    _, other = await core.adapters.export("beta", "secret")  # another tenant has its own share

    assert [c.path async for c in first]  # read to its end
    await second.aclose()  # closed unread
    _, third = await core.adapters.export("acme", "bot")
    _, fourth = await core.adapters.export("acme", "bot")
    del third, fourth  # dropped unread, as by a client gone before its body started
    _, fifth = await core.adapters.export("acme", "bot")
    await fifth.aclose()
    await other.aclose()
