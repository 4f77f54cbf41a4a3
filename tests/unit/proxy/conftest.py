"""A proxy core over test doubles; a real local-folder object store for rollouts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.common.objectstore import LocalFolderStore
from services.proxy.core import ProxyCore
from services.proxy.keys import add_api_key
from services.proxy.settings import ProxySettings
from services.proxy.vllm import VllmClient
from tests.unit.proxy.fakes import BASE, FakeStorage, FakeTrainer, FakeVllm


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    return tmp_path / "keys.json"


@pytest.fixture
def keys(keys_file: Path) -> dict[str, str]:
    """Plaintext API keys of tenants "acme" and "beta"."""
    return {tenant: add_api_key(keys_file, tenant) for tenant in ("acme", "beta")}


@pytest.fixture
def settings(tmp_path: Path, keys_file: Path) -> ProxySettings:
    return ProxySettings(
        host="127.0.0.1",
        port=0,
        http_port=0,
        store_url=str(tmp_path / "store"),
        store_fsync=False,
        adapter_dir=tmp_path / "adapters",
        api_keys_file=keys_file,
        base_model=BASE,
        vllm_url="http://vllm.test",
        max_loaded_adapters=2,
        max_tokens_cap=512,
        max_messages=8,
        max_request_bytes=4096,
        grace_period_s=1,
        watch_heads=False,
    )


@pytest.fixture
def storage() -> FakeStorage:
    fake = FakeStorage()
    fake.add("acme/bot")
    fake.add("beta/secret")
    return fake


@pytest.fixture
def trainer(storage: FakeStorage) -> FakeTrainer:
    return FakeTrainer(storage)


@pytest.fixture
def vllm() -> FakeVllm:
    return FakeVllm()


@pytest.fixture
async def core(
    settings: ProxySettings, storage: FakeStorage, trainer: FakeTrainer, vllm: FakeVllm
) -> AsyncIterator[ProxyCore]:
    client = VllmClient(settings.vllm_url, **vllm.client_kwargs())
    proxy = ProxyCore(
        settings, storage=storage, trainer=trainer, vllm=client, store=LocalFolderStore(Path(settings.store_url))
    )
    yield proxy
    await proxy.stop()
    await client.close()
