"""The proxy's vLLM client presents vLLM's API key, checked by vLLM's own authentication middleware.

The middleware is loaded from the installed vLLM's source file (not through the ``vllm`` package, whose
import takes seconds) and put in front of a few routes on a real loopback socket: what it accepts is what a
vLLM started with ``--api-key`` (or ``VLLM_API_KEY``) accepts.
"""

from __future__ import annotations

import asyncio
import importlib.util
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from services.common.errors import ClaasError, InvalidArgument
from services.proxy.vllm import VllmClient

KEY = "the-vllm-key"


def _vllm_authentication() -> ModuleType:
    package = importlib.util.find_spec("vllm")
    assert package is not None and package.origin is not None, "vLLM is not installed"
    path = Path(package.origin).parent / "entrypoints" / "serve" / "middleware" / "authenticate.py"
    assert path.is_file(), f"vLLM's authentication middleware moved: {path} (update this test)"
    spec = importlib.util.spec_from_file_location("vllm_authenticate", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Server(uvicorn.Server):
    @contextmanager
    def capture_signals(self) -> Iterator[None]:  # the test's loop keeps its signals
        yield


async def _models(request: Request) -> JSONResponse:
    return JSONResponse({"object": "list", "data": [{"id": "base", "root": "/models/base"}]})


async def _load(request: Request) -> PlainTextResponse:
    body = await request.json()
    return PlainTextResponse(f"Success: LoRA adapter '{body['lora_name']}' added successfully.")


async def _health(request: Request) -> PlainTextResponse:
    return PlainTextResponse("")


@pytest.fixture(scope="module")
async def vllm_url() -> AsyncIterator[str]:
    routes = [
        Route("/health", _health),
        Route("/v1/models", _models),
        Route("/v1/load_lora_adapter", _load, methods=["POST"]),
    ]
    app = Starlette(routes=routes)
    app.add_middleware(_vllm_authentication().AuthenticationMiddleware, tokens=[KEY])  # as vLLM adds it
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = _Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    await task
    sock.close()


async def test_the_key_opens_vllms_api(vllm_url: str) -> None:
    client = VllmClient(vllm_url, timeout_s=5.0, api_key=KEY)
    try:
        assert await client.models() == {"base": "/models/base"}
        await client.load_lora("t/a@1", "/adapters/t/a@1")
        assert await client.healthy()
    finally:
        await client.close()


@pytest.mark.parametrize("key", ["", "another-key"])
async def test_without_the_key_vllm_refuses_and_the_error_names_the_setting(vllm_url: str, key: str) -> None:
    """Hole: vLLM loaded any adapter path for anyone who reached its port."""
    client = VllmClient(vllm_url, timeout_s=5.0, api_key=key)
    try:
        with pytest.raises(ClaasError, match="CLAAS_VLLM_API_KEY") as refused:
            await client.load_lora("t/a@1", "/adapters/t/a@1")
        # Our configuration is at fault, not the caller's request.
        assert not isinstance(refused.value, InvalidArgument)
        # /health asks for no key: readiness follows vLLM's state, not the key.
        assert await client.healthy()
    finally:
        await client.close()
