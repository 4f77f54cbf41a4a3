"""Wiring of the proxy role: clients of storage, trainer and vLLM, the core, the gRPC services and the
OpenAI HTTP server — both servers in the one asyncio loop, over the one core."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import grpc
import structlog
import uvicorn
from fastapi import FastAPI

from services.common.auth import KeyAuthenticator, KeysFileError
from services.common.errors import Unauthenticated, Unavailable
from services.common.objectstore import open_object_store
from services.common.server import ServiceServer
from services.common.settings import EXAMPLE_SECRET_PREFIX, SettingsError, beyond_loopback
from services.proxy.client import PeerClient
from services.proxy.core import ProxyCore, ServingSource, TrainingBackend
from services.proxy.openai.routes import build_app
from services.proxy.servicer import SERVICE_NAMES, add_servicers
from services.proxy.settings import ProxySettings
from services.proxy.tenancy import KeysFileAuth, ReplicaOrKeyAuth
from services.proxy.vllm import VllmClient
from services.storage.client import StorageClient
from services.trainer.client import TrainerPool

log = structlog.get_logger("claas.proxy.server")

T = TypeVar("T")


class _HttpServer(uvicorn.Server):
    """uvicorn inside a loop it does not own: signals belong to the role's ``run_server``."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.listening = asyncio.Event()

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets=sockets)
        self.listening.set()


class ProxyServer(ServiceServer):
    """gRPC and HTTP together over one core. Health is SERVING only while the role is ready *and* vLLM
    answers. The core and its clients are made in ``start_core``, inside the running event loop (gRPC
    channels belong to the loop they were made in); calls before that are ``UNAVAILABLE``."""

    def __init__(self, settings: ProxySettings, auth: KeyAuthenticator, make_core: Callable[[], ProxyCore]) -> None:
        def register(server: grpc.aio.Server) -> None:
            add_servicers(server, self._current)

        self._core: ProxyCore | None = None
        self._make_core = make_core
        self._auth = auth
        # gRPC also lets the other replicas in with the internal token (ProxyPeerService); HTTP takes keys only.
        grpc_auth = ReplicaOrKeyAuth(auth, settings.internal_token)
        super().__init__(settings, service_names=SERVICE_NAMES, register=register, authenticator=grpc_auth)
        self.http_port = 0
        self._ready = False
        self._http: _HttpServer | None = None
        self._http_task: asyncio.Task | None = None

    @property
    def core(self) -> ProxyCore:
        return self._current()

    def _current(self) -> ProxyCore:
        if self._core is None:
            raise Unavailable("the proxy is starting")
        return self._core

    def serving(self) -> bool:
        return self._ready and self._core is not None and self._core.vllm_up

    async def set_serving(self, serving: bool) -> None:
        self._ready = serving
        await super().set_serving(self.serving())

    async def vllm_health_changed(self, up: bool) -> None:
        await super().set_serving(self.serving())

    async def start_core(self) -> None:
        """Make the core, open the HTTP server over it, probe vLLM and start the background work."""
        self._core = self._make_core()
        await self._start_http(build_app(self._core, self._auth, serving=self.serving))
        await self._core.start(self.vllm_health_changed)

    async def stop_core(self) -> None:
        """End the background work (after ``stop``: no request is running any more)."""
        if self._core is not None:
            await self._core.stop()

    async def _start_http(self, app: FastAPI) -> None:
        settings: ProxySettings = self.settings  # type: ignore[assignment]
        config = uvicorn.Config(
            app,
            host=settings.http_host,
            port=settings.http_port,
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=max(1, int(settings.grace_period_s)),
        )
        self._http = _HttpServer(config)
        sock = config.bind_socket()
        self.http_port = sock.getsockname()[1]
        self._http_task = asyncio.create_task(self._http.serve(sockets=[sock]))
        listening = asyncio.create_task(self._http.listening.wait())
        await asyncio.wait({listening, self._http_task}, return_when=asyncio.FIRST_COMPLETED)
        listening.cancel()
        if not self._http.listening.is_set():
            raise OSError(f"HTTP server did not start on {settings.http_host}:{settings.http_port}")
        log.info("http_listening", host=settings.http_host, port=self.http_port)

    async def stop(self) -> None:
        """Both servers stop taking requests at once; in-flight ones get the grace period."""
        if self._http is not None and self._http_task is not None:
            self._http.should_exit = True
            await asyncio.gather(super().stop(), self._http_task)
            self._http = self._http_task = None
        else:
            await super().stop()


def build_server(
    settings: ProxySettings,
    *,
    storage: ServingSource | None = None,
    trainer: TrainingBackend | None = None,
    vllm: VllmClient | None = None,
) -> tuple[ProxyServer, Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]]:
    """The server, its ready hook (clients and core made, HTTP up, vLLM probed, background work started)
    and its stop hook. ``storage``, ``trainer`` and ``vllm`` replace the clients the settings name (tests
    pass doubles)."""
    owned: list[StorageClient | TrainerPool | VllmClient | PeerClient] = []

    def own(client: T) -> T:
        owned.append(client)  # type: ignore[arg-type]
        return client

    def make_core() -> ProxyCore:
        token, vllm_key = settings.internal_token, settings.vllm_api_key.get_secret_value()
        return ProxyCore(
            settings,
            storage=storage or own(StorageClient.connect(settings.storage_addr, token=token)),
            trainer=trainer
            or own(TrainerPool.connect(settings.trainer_addr, token=token, refresh_s=settings.peers_refresh_s)),
            vllm=vllm or own(VllmClient(settings.vllm_url, timeout_s=settings.vllm_timeout_s, api_key=vllm_key)),
            store=open_object_store(settings),
            peers=own(_peer_client(settings)) if settings.proxy_peers.strip() and settings.route_by_adapter else None,
        )

    try:
        keys = KeysFileAuth(settings.api_keys_file)
    except KeysFileError as exc:
        raise SettingsError(f"CLAAS_API_KEYS_FILE: {exc}") from None
    _refuse_the_example_key(settings, keys)
    server = ProxyServer(settings, keys, make_core)

    async def stop() -> None:
        await server.stop_core()
        for client in owned:
            await client.close()

    return server, server.start_core, stop


def _peer_client(settings: ProxySettings) -> PeerClient:
    # A forwarded answer takes as long as vLLM may take, plus the way there and back.
    return PeerClient(
        token=settings.internal_token, timeout_s=settings.vllm_timeout_s + 30, max_message_mb=settings.max_message_mb
    )


def _refuse_the_example_key(settings: ProxySettings, keys: KeysFileAuth) -> None:
    """The manifests' example keys file lets the key "change-me" in: never where others can connect."""
    exposed = [host for host in settings.listening_hosts() if beyond_loopback(host)]
    if not exposed:
        return
    try:
        keys.authenticate(EXAMPLE_SECRET_PREFIX)
    except Unauthenticated:
        return
    raise SettingsError(
        f"CLAAS_API_KEYS_FILE lets the example key {EXAMPLE_SECRET_PREFIX!r} in while the proxy listens on "
        f"{exposed[0]}: make your own keys file (k8s/README.md, Secrets) or listen on 127.0.0.1 only"
    )
