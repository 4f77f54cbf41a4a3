"""A proxy core over the real storage service (in process, on a folder), a fake trainer and a fake vLLM;
a real local-folder object store for rollouts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import openai
import pytest

from services.common.objectstore import LocalFolderStore
from services.common.server import serving
from services.proxy.core import ProxyCore
from services.proxy.keys import add_api_key
from services.proxy.server import ProxyServer, build_server
from services.proxy.settings import ProxySettings
from services.proxy.vllm import VllmClient
from services.storage.client import StorageClient
from services.storage.server import build_server as build_storage
from services.storage.settings import StorageSettings
from tests.unit.proxy.fakes import BASE, FakeTrainer, FakeVllm, add


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    return tmp_path / "keys.json"


@pytest.fixture
def keys(keys_file: Path) -> dict[str, str]:
    """Plaintext API keys of tenants "acme" and "beta"."""
    return {tenant: add_api_key(keys_file, tenant) for tenant in ("acme", "beta")}


@pytest.fixture
def settings(tmp_path: Path, keys_file: Path) -> ProxySettings:
    return proxy_settings(tmp_path, keys_file)


def proxy_settings(folder: Path, keys_file: Path) -> ProxySettings:
    """Small limits, no heads watch, a vLLM that the tests' doubles stand in for; files under ``folder``."""
    return ProxySettings(
        host="127.0.0.1",
        port=0,
        http_port=0,
        store_url=str(folder / "store"),
        store_fsync=False,
        adapter_dir=folder / "adapters",
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
def storage_folder(tmp_path: Path) -> Path:
    """Where storage keeps its objects."""
    return tmp_path / "adapter-store"


@pytest.fixture
async def storage_addr(storage_folder: Path) -> AsyncIterator[str]:
    """The real storage service on a local folder."""
    settings = StorageSettings(port=0, store_url=str(storage_folder), store_fsync=False, grace_period_s=1)
    async with serving(build_storage(settings)) as server:
        yield f"127.0.0.1:{server.port}"


@pytest.fixture
async def storage(storage_addr: str) -> AsyncIterator[StorageClient]:
    """A client of it over loopback, holding "acme/bot" and "beta/secret" at version 1."""
    client = StorageClient.connect(storage_addr)
    await add(client, "acme/bot")
    await add(client, "beta/secret")
    yield client
    await client.close()


@pytest.fixture
def trainer(storage: StorageClient) -> FakeTrainer:
    return FakeTrainer(storage)


@pytest.fixture
def vllm() -> FakeVllm:
    return FakeVllm()


@pytest.fixture
async def core(
    settings: ProxySettings, storage: StorageClient, trainer: FakeTrainer, vllm: FakeVllm
) -> AsyncIterator[ProxyCore]:
    client = VllmClient(settings.vllm_url, **vllm.client_kwargs())
    proxy = ProxyCore(
        settings, storage=storage, trainer=trainer, vllm=client, store=LocalFolderStore(Path(settings.store_url))
    )
    yield proxy
    await proxy.stop()
    await client.close()


@dataclass
class Proxy:
    """The whole proxy on loopback sockets (gRPC and HTTP), with clients of both."""

    server: ProxyServer
    http: httpx.AsyncClient
    channel: grpc.aio.Channel
    keys: dict[str, str]
    port: int

    @property
    def target(self) -> str:
        """The gRPC address."""
        return f"127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.http_port}"

    def auth(self, tenant: str) -> dict[str, str]:
        return {"authorization": f"Bearer {self.keys[tenant]}"}

    def metadata(self, tenant: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.keys[tenant]}"),)

    def openai(self, tenant: str) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.base_url}/v1", api_key=self.keys[tenant], max_retries=0)


@pytest.fixture
async def proxy(
    settings: ProxySettings, storage: StorageClient, trainer: FakeTrainer, vllm: FakeVllm, keys: dict[str, str]
) -> AsyncIterator[Proxy]:
    async with running_proxy(settings, storage, trainer, vllm, keys) as running:
        yield running


@asynccontextmanager
async def running_proxy(
    settings: ProxySettings, storage: StorageClient, trainer: FakeTrainer, vllm: FakeVllm, keys: dict[str, str]
) -> AsyncIterator[Proxy]:
    """The whole proxy on loopback sockets over these doubles, until the block ends."""
    server, ready, stop = build_server(
        settings, storage=storage, trainer=trainer, vllm=VllmClient(settings.vllm_url, **vllm.client_kwargs())
    )
    port = await server.start()
    try:
        await ready()
        await server.set_serving(True)
        async with (
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.http_port}", timeout=10) as http,
            grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
        ):
            yield Proxy(server, http, channel, keys, port)
    finally:
        await server.stop()
        await stop()
