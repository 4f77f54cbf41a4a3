"""vLLM sync: versioned names, LRU, old versions unloaded only once their requests finished."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.common.errors import DataLoss
from services.proxy.loras import LoraManager
from services.proxy.vllm import VllmClient
from services.storage.client import StorageClient
from tests.unit.proxy.fakes import FakeVllm, add


@pytest.fixture
def downloads() -> list[tuple[str, int]]:
    """(adapter, version) of every download from storage, in order."""
    return []


@pytest.fixture
async def manager(
    tmp_path: Path, storage: StorageClient, vllm: FakeVllm, downloads: list[tuple[str, int]]
) -> AsyncIterator[LoraManager]:
    for name in ("acme/a", "acme/b", "acme/c"):
        await add(storage, name, versions=2)

    async def fetch(adapter: str, version: int, dest: Path) -> None:
        downloads.append((adapter, version))
        await storage.download_version(adapter, version, dest)

    client = VllmClient("http://vllm.test", **vllm.client_kwargs())
    yield LoraManager(client, fetch, tmp_path / "adapters", max_loaded=2)
    await client.close()


async def test_a_version_is_downloaded_then_loaded_under_its_own_name(
    manager: LoraManager, vllm: FakeVllm, tmp_path: Path
) -> None:
    async with manager.lease("acme/a", 2) as name:
        assert name == "acme+a+v2"
        assert vllm.loaded == {name: str(tmp_path / "adapters" / name)}
        files = sorted(p.name for p in (tmp_path / "adapters" / name).iterdir())
        assert files == ["adapter_config.json", "adapter_model.safetensors"]
    assert manager.loaded() == ["acme+a+v2"]


async def test_least_recently_used_idle_names_go_beyond_the_limit(manager: LoraManager, vllm: FakeVllm) -> None:
    await manager.preload("acme/a", 1)
    await manager.preload("acme/b", 1)
    await manager.preload("acme/a", 1)  # a is now more recent than b
    await manager.preload("acme/c", 1)

    assert manager.loaded() == ["acme+a+v1", "acme+c+v1"]
    assert sorted(vllm.loaded) == ["acme+a+v1", "acme+c+v1"]
    assert vllm.lora_calls[-1] == ("unload", "acme+b+v1")


async def test_names_in_use_are_never_evicted_even_over_the_limit(manager: LoraManager, vllm: FakeVllm) -> None:
    async with manager.lease("acme/a", 1), manager.lease("acme/b", 1), manager.lease("acme/c", 1):
        assert len(vllm.loaded) == 3
    assert len(vllm.loaded) == 2


async def test_an_old_version_is_unloaded_when_its_last_request_ends(
    manager: LoraManager, vllm: FakeVllm, tmp_path: Path
) -> None:
    async with manager.lease("acme/a", 1) as old:
        await manager.preload("acme/a", 2)  # a new head arrives while v1 still answers
        assert sorted(vllm.loaded) == ["acme+a+v1", "acme+a+v2"]
    assert sorted(vllm.loaded) == ["acme+a+v2"]
    assert [c for c in vllm.lora_calls if c[0] == "unload"] == [("unload", old)]
    assert not (tmp_path / "adapters" / old).exists()


async def test_rollback_makes_the_older_version_current(manager: LoraManager, vllm: FakeVllm) -> None:
    await manager.preload("acme/a", 2)
    await manager.preload("acme/a", 1)
    assert sorted(vllm.loaded) == ["acme+a+v1"]


async def test_concurrent_requests_load_a_version_once(
    manager: LoraManager, vllm: FakeVllm, downloads: list[tuple[str, int]]
) -> None:
    async def use() -> str:
        async with manager.lease("acme/a", 1) as name:
            return name

    names = await asyncio.gather(*(use() for _ in range(8)))
    assert set(names) == {"acme+a+v1"}
    assert vllm.lora_calls == [("load", "acme+a+v1")]
    assert downloads == [("acme/a", 1)]


async def test_forget_unloads_every_idle_version(manager: LoraManager, vllm: FakeVllm) -> None:
    await manager.preload("acme/a", 1)
    await manager.preload("acme/b", 1)
    await manager.forget("acme/a")
    assert list(vllm.loaded) == ["acme+b+v1"]
    assert not manager.tracks("acme/a") and manager.tracks("acme/b")


async def test_invalidated_names_are_loaded_again(manager: LoraManager, vllm: FakeVllm) -> None:
    await manager.preload("acme/a", 1)
    vllm.loaded.clear()
    manager.invalidate_all()
    await manager.preload("acme/a", 1)
    assert list(vllm.loaded) == ["acme+a+v1"]


async def test_a_failed_download_leaves_nothing_behind(manager: LoraManager, vllm: FakeVllm, tmp_path: Path) -> None:
    async def broken(adapter: str, version: int, dest: Path) -> None:
        (dest / "adapter_config.json").write_text("{}")
        raise DataLoss("checksum mismatch")

    manager._fetch = broken
    with pytest.raises(DataLoss):
        await manager.preload("acme/a", 1)
    assert vllm.loaded == {} and manager.loaded() == []
    assert list((tmp_path / "adapters").iterdir()) == []


async def test_a_name_vllm_already_serves_from_our_folder_is_kept(
    manager: LoraManager, vllm: FakeVllm, tmp_path: Path
) -> None:
    await manager.preload("acme/a", 1)
    manager.invalidate_all()  # e.g. this proxy restarted; vLLM kept the name
    await manager.preload("acme/a", 1)
    assert [c for c in vllm.lora_calls if c[0] == "unload"] == []
    assert manager.loaded() == ["acme+a+v1"]


async def test_a_name_vllm_serves_from_elsewhere_is_replaced_by_our_files(
    manager: LoraManager, vllm: FakeVllm, tmp_path: Path
) -> None:
    vllm.loaded["acme+a+v1"] = "/old/run/acme--a--v1"  # another store's v1: maybe other weights
    async with manager.lease("acme/a", 1) as name:
        assert vllm.loaded[name] == str(tmp_path / "adapters" / name)
    assert vllm.lora_calls == [("load", name), ("unload", name), ("load", name)]


async def test_two_tenants_never_share_a_vllm_slot(
    manager: LoraManager, storage: StorageClient, vllm: FakeVllm, downloads: list[tuple[str, int]]
) -> None:
    """Hole: "acme--prod/bot" and "acme/prod--bot" were both served as "acme--prod--bot--v1"."""
    await add(storage, "acme--prod/bot", versions=1)
    await add(storage, "acme/prod--bot", versions=1)

    async with manager.lease("acme--prod/bot", 1) as first, manager.lease("acme/prod--bot", 1) as second:
        assert first != second
        assert sorted(vllm.loaded) == sorted([first, second])
        assert vllm.loaded[first] != vllm.loaded[second]  # and two folders
    assert downloads[-2:] == [("acme--prod/bot", 1), ("acme/prod--bot", 1)]  # each tenant's own weights
