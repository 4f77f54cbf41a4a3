"""The core's background work: new heads of adapters in use are loaded before anyone asks; vLLM's health
drives the proxy's."""

from __future__ import annotations

import asyncio

from services.common.domain import Message
from services.common.errors import Unavailable
from services.common.objectstore import LocalFolderStore
from services.proxy.core import ProxyCore
from services.proxy.domain import ChatRequest
from services.proxy.vllm import VllmClient
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


class _WatchThatBreaks:
    """The real storage, whose first head watch breaks (storage restarting) once ``cut`` is set: events
    published meanwhile are lost to this watcher, as they are when storage restarts."""

    def __init__(self, client: StorageClient) -> None:
        self._client = client
        self.cut = asyncio.Event()
        self.watches = 0

    def __getattr__(self, name: str):
        return getattr(self._client, name)

    async def watch_heads(self, prefix: str = "", *, send_initial: bool = True):
        self.watches += 1
        first = self.watches == 1
        async for event in self._client.watch_heads(prefix, send_initial=send_initial):
            yield event
            if first and event.synced:
                await self.cut.wait()
                raise Unavailable("storage restarted")


async def test_a_delete_missed_while_not_watching_is_caught_on_the_next_watch(
    settings, storage: StorageClient, trainer, vllm: FakeVllm, tmp_path
) -> None:
    """Hole: after a reconnect WatchHeads replayed heads, not deletions, so a replica that missed a delete
    went on serving the deleted adapter's weights."""
    flaky = _WatchThatBreaks(storage)
    client = VllmClient(settings.vllm_url, **vllm.client_kwargs())
    core = ProxyCore(
        settings.model_copy(update={"watch_heads": True}),
        storage=flaky, trainer=trainer, vllm=client, store=LocalFolderStore(tmp_path / "rollouts"),
    )  # fmt: skip

    async def listener(up: bool) -> None:
        pass

    try:
        await core.start(listener)
        await core.inference.chat("acme", ASK)
        assert await vllm.loads.get() == "acme+bot+v1"
        assert await storage.delete_adapter("acme/bot")  # the watch is about to break: this event is lost
        flaky.cut.set()

        assert await asyncio.wait_for(vllm.unloads.get(), timeout=10) == "acme+bot+v1"  # the next watch saw it
        assert flaky.watches == 2 and core.loras.tracked() == [] and vllm.loaded == {}
    finally:
        await core.stop()
        await client.close()
