"""The real services in this process, on loopback ports, in front of the real vLLM (fixture ``vllm_url``).

Storage on a temporary folder, the teacher (hf backend) and the trainer on the packaged model, and the proxy
with two tenants' API keys. Each fixture is started once per session, stopped at its end, and reusable by
any stack test; the end-to-end tests of ``claas up`` start processes of their own and do not use these.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from services.common.server import ServiceServer, serving
from services.proxy.keys import add_api_key
from services.proxy.server import ProxyServer
from services.proxy.server import build_server as build_proxy
from services.proxy.settings import ProxySettings
from services.storage.server import build_server as build_storage
from services.storage.settings import StorageSettings
from services.teacher.server import build_server as build_teacher
from services.teacher.settings import TeacherSettings
from services.trainer.server import build_server as build_trainer
from services.trainer.settings import TrainerSettings


def address(server: ServiceServer) -> str:
    return f"127.0.0.1:{server.port}"


@pytest.fixture(scope="session")
async def stack_storage(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """Address of the storage service on a local folder."""
    settings = StorageSettings(port=0, store_url=str(tmp_path_factory.mktemp("store")), grace_period_s=1)
    async with serving(build_storage(settings)) as server:
        yield address(server)


@pytest.fixture(scope="session")
async def stack_teacher(
    model_dir: Path, stack_storage: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[str]:
    """Address of the teacher service (hf backend, exact) on the packaged model."""
    settings = TeacherSettings(
        port=0,
        base_model=str(model_dir),
        backend="hf",
        storage_addr=stack_storage,
        adapter_dir=tmp_path_factory.mktemp("teacher-adapters"),
        grace_period_s=1,
    )
    async with serving(build_teacher(settings)) as server:
        yield address(server)


@pytest.fixture(scope="session")
async def stack_trainer(
    model_dir: Path, stack_storage: str, stack_teacher: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[str]:
    """Address of the trainer service with a warm packaged model."""
    settings = TrainerSettings(
        port=0,
        store_url=str(tmp_path_factory.mktemp("jobs")),
        base_model=str(model_dir),
        storage_addr=stack_storage,
        teacher_addr=stack_teacher,
        grace_period_s=1,
    )
    async with serving(build_trainer(settings)) as server:
        yield address(server)


@dataclass(frozen=True)
class ProxyStack:
    server: ProxyServer
    #: Plaintext API keys by tenant ("acme", "beta").
    keys: dict[str, str]
    vllm_url: str
    storage_addr: str
    #: vLLM's own API key, for the tests that ask vLLM directly.
    vllm_api_key: str

    @property
    def grpc_addr(self) -> str:
        return address(self.server)

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.server.http_port}"

    def bearer(self, tenant: str) -> dict[str, str]:
        return {"authorization": f"Bearer {self.keys[tenant]}"}

    def vllm_client(self, *, timeout: float) -> httpx.AsyncClient:
        """A client of vLLM itself, with its API key."""
        headers = {"authorization": f"Bearer {self.vllm_api_key}"}
        return httpx.AsyncClient(base_url=self.vllm_url, headers=headers, timeout=timeout)


@pytest.fixture(scope="session")
async def stack_proxy(
    vllm_url: str,
    vllm_api_key: str,
    stack_storage: str,
    stack_trainer: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[ProxyStack]:
    """The proxy (gRPC and HTTP) over the real storage, trainer and vLLM, with keys of tenants acme and beta."""
    folder = tmp_path_factory.mktemp("proxy")
    keys_file = folder / "keys.json"
    keys = {tenant: add_api_key(keys_file, tenant) for tenant in ("acme", "beta")}
    settings = ProxySettings(
        port=0,
        http_port=0,
        storage_addr=stack_storage,
        trainer_addr=stack_trainer,
        vllm_url=vllm_url,
        vllm_api_key=vllm_api_key,
        api_keys_file=keys_file,
        store_url=str(folder / "store"),
        adapter_dir=folder / "adapters",
        grace_period_s=1,
    )
    async with serving(build_proxy(settings)) as server:
        yield ProxyStack(server, keys, vllm_url, stack_storage, vllm_api_key)  # type: ignore[arg-type]
