"""The core's background work: new heads of adapters in use are loaded before anyone asks; vLLM's health
drives the proxy's."""

from __future__ import annotations

import asyncio

from services.common.domain import Message
from services.proxy.core import ProxyCore
from services.proxy.domain import ChatRequest
from services.storage.client import StorageClient
from tests.unit.proxy.fakes import FakeVllm, commit

ASK = ChatRequest("bot", (Message("user", "Hi"),))


async def test_a_new_head_of_an_adapter_in_use_is_preloaded(
    core: ProxyCore, storage: StorageClient, vllm: FakeVllm
) -> None:
    core.settings = core.settings.model_copy(update={"watch_heads": True})
    await core.inference.chat("acme", ASK)
    assert await vllm.loads.get() == "acme+bot+v1"
    health: list[bool] = []

    async def listener(up: bool) -> None:
        health.append(up)

    await core.start(listener)
    await commit(storage, "beta/secret")  # never served here: not worth a slot (events are handled in order)
    await commit(storage, "acme/bot")  # e.g. another proxy's feedback made version 2

    assert await asyncio.wait_for(vllm.loads.get(), timeout=5) == "acme+bot+v2"
    assert health == [True]
    assert list(vllm.loaded) == ["acme+bot+v2"]


async def test_vllm_coming_back_forgets_what_was_loaded_and_flips_health(core: ProxyCore, vllm: FakeVllm) -> None:
    health: list[bool] = []

    async def listener(up: bool) -> None:
        health.append(up)

    await core.start(listener)
    await core.inference.chat("acme", ASK)
    vllm.up = False
    assert await core.check_vllm() is False
    vllm.up, vllm.loaded = True, {}  # a restarted vLLM knows no adapters
    assert await core.check_vllm() is True

    assert health == [True, False, True]
    assert core.loras.loaded() == []
    assert (await core.inference.chat("acme", ASK)).version == 1
    assert list(vllm.loaded) == ["acme+bot+v1"]
